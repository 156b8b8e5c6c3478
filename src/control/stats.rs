//! What a gateway reports with each heartbeat beside its request counters, for the gates of
//! canaries and progressive rollouts: request latency of all routes and, per upstream, tries,
//! failed tries (5xx or no answer) and latency — bounded histograms (the metrics' buckets), never
//! per-request rows — and the plain-HTTP listeners synthetic checks are sent to.

use crate::gateway::Gateway;
use crate::observe::metrics::{quantile, BUCKETS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatStats {
    /// Requests per latency bucket (the last: above the largest bound).
    #[serde(default)]
    pub latency: Vec<u64>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamStats>,
    /// `http://host:port` of each plain-HTTP listener.
    #[serde(default)]
    pub listen: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStats {
    pub tries: u64,
    pub failed: u64,
    pub latency: Vec<u64>,
}

fn minus(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter()
        .enumerate()
        .map(|(i, x)| x.saturating_sub(b.get(i).copied().unwrap_or(0)))
        .collect()
}

fn plus(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl HeartbeatStats {
    pub fn collect(gateway: &Gateway) -> HeartbeatStats {
        let snapshot = gateway.snapshot();
        let listen = snapshot
            .listeners
            .iter()
            .filter(|l| l.tls.is_none())
            .map(|l| {
                let mut a = l.address;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{a}")
            })
            .collect();
        HeartbeatStats {
            latency: gateway.metrics.latency_counts().to_vec(),
            upstreams: gateway
                .metrics
                .upstream_totals()
                .into_iter()
                .map(|u| {
                    (
                        u.name,
                        UpstreamStats {
                            tries: u.tries,
                            failed: u.failed_tries,
                            latency: u.latency.to_vec(),
                        },
                    )
                })
                .collect(),
            listen,
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What a stored heartbeat says (nothing, for an instance older than this field).
    pub fn parse(text: Option<&str>) -> HeartbeatStats {
        text.and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }

    /// Counted since `base` (counters only grow within one process; a restart counts from 0).
    pub fn since(&self, base: &HeartbeatStats) -> HeartbeatStats {
        HeartbeatStats {
            latency: minus(&self.latency, &base.latency),
            upstreams: self
                .upstreams
                .iter()
                .map(|(name, u)| {
                    let b = base.upstreams.get(name).cloned().unwrap_or_default();
                    (
                        name.clone(),
                        UpstreamStats {
                            tries: u.tries.saturating_sub(b.tries),
                            failed: u.failed.saturating_sub(b.failed),
                            latency: minus(&u.latency, &b.latency),
                        },
                    )
                })
                .collect(),
            listen: self.listen.clone(),
        }
    }

    /// Adds another instance's figures.
    pub fn add(&mut self, other: &HeartbeatStats) {
        plus(&mut self.latency, &other.latency);
        for (name, u) in &other.upstreams {
            let mine = self.upstreams.entry(name.clone()).or_default();
            mine.tries += u.tries;
            mine.failed += u.failed;
            plus(&mut mine.latency, &u.latency);
        }
    }
}

/// The 99th percentile in milliseconds of latency counted per bucket, as Prometheus'
/// `histogram_quantile` estimates it; `None` without observations.
pub fn p99_ms(counts: &[u64]) -> Option<f64> {
    let mut fixed = [0u64; BUCKETS.len() + 1];
    for (slot, n) in fixed.iter_mut().zip(counts) {
        *slot = *n;
    }
    quantile(&fixed, 0.99).map(|s| s * 1000.0)
}

impl UpstreamStats {
    pub fn error_ratio(&self) -> f64 {
        if self.tries == 0 {
            0.0
        } else {
            self.failed as f64 / self.tries as f64
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} tries, {} failed ({:.2}%), p99 {}",
            self.tries,
            self.failed,
            100.0 * self.error_ratio(),
            p99_ms(&self.latency).map_or("-".to_string(), |p| format!("{p:.0} ms"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_sums_and_p99() {
        let mut base = HeartbeatStats::default();
        base.upstreams.insert(
            "v2".into(),
            UpstreamStats {
                tries: 10,
                failed: 1,
                latency: vec![10; 15],
            },
        );
        let mut now = base.clone();
        let v2 = now.upstreams.get_mut("v2").unwrap();
        v2.tries = 110;
        v2.failed = 11;
        // 100 more: 98 within 1 ms, 2 within 250 ms (bucket 7).
        v2.latency[0] += 98;
        v2.latency[7] += 2;
        let d = now.since(&base);
        let u = &d.upstreams["v2"];
        assert_eq!((u.tries, u.failed), (100, 10));
        assert!((u.error_ratio() - 0.1).abs() < 1e-12);
        let p99 = p99_ms(&u.latency).unwrap();
        assert!(p99 > 100.0 && p99 <= 250.0, "{p99}");
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.upstreams["v2"].tries, 200);
        assert_eq!(HeartbeatStats::parse(Some(&now.to_text())), now);
        assert_eq!(HeartbeatStats::parse(None), HeartbeatStats::default());
    }
}
