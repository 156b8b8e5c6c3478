//! This instance's recent history for the dashboard: once a second the sampler reads every
//! route's counters (relaxed atomic loads, the request path is not touched) and keeps the
//! per-second rates and latency quantiles of the last 15 minutes in a bounded ring.

use crate::gateway::Gateway;
use crate::observe::metrics::{quantile, RouteMetrics, HISTOGRAM_SLOTS};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Samples kept: 15 minutes at one per second.
pub const CAPACITY: usize = 900;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The counters of one route read at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    by_class: [u64; 5],
    rate_limited: u64,
    auth_failures: u64,
    latency: [u64; HISTOGRAM_SLOTS],
}

impl Reading {
    fn of(m: &RouteMetrics) -> Reading {
        Reading {
            by_class: m.by_class(),
            rate_limited: m.rate_limited.load(Relaxed),
            auth_failures: m.auth_failures.load(Relaxed),
            latency: m.duration.counts().0,
        }
    }
}

/// What one route did during one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    requests: f64,
    errors_4xx: f64,
    errors_5xx: f64,
    rate_limited: f64,
    auth_failures: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Point {
    fn between(before: &Reading, after: &Reading, secs: f64) -> Point {
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        let mut latency = [0; HISTOGRAM_SLOTS];
        for (i, slot) in latency.iter_mut().enumerate() {
            *slot = after.latency[i].saturating_sub(before.latency[i]);
        }
        let ms = |q| quantile(&latency, q).map(|s| (s * 1e6).round() / 1e3);
        let all_before: u64 = before.by_class.iter().sum();
        let all_after: u64 = after.by_class.iter().sum();
        Point {
            requests: per_s(all_before, all_after),
            errors_4xx: per_s(before.by_class[3], after.by_class[3]),
            errors_5xx: per_s(before.by_class[4], after.by_class[4]),
            rate_limited: per_s(before.rate_limited, after.rate_limited),
            auth_failures: per_s(before.auth_failures, after.auth_failures),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

#[derive(Debug, Default)]
struct RouteSeries {
    last: Reading,
    /// Aligned with `Ring::times`; `None` where the route did not exist yet.
    points: VecDeque<Option<Point>>,
}

#[derive(Debug, Default)]
struct Ring {
    /// Unix milliseconds of each sample's end.
    times: VecDeque<u64>,
    last_at: Option<tokio::time::Instant>,
    routes: HashMap<String, RouteSeries>,
}

/// The ring buffer; written by the sampler once a second, read by `GET /admin/series`.
#[derive(Debug, Default)]
pub struct Series {
    ring: Mutex<Ring>,
}

impl Series {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one sample of `routes` at `now` (`unix_ms` its wall-clock time).
    fn sample(
        &self,
        routes: &[(String, Arc<RouteMetrics>)],
        now: tokio::time::Instant,
        unix_ms: u64,
    ) {
        let readings: Vec<(&str, Reading)> = routes
            .iter()
            .map(|(name, m)| (name.as_str(), Reading::of(m)))
            .collect();
        let mut ring = self.lock();
        let ring = &mut *ring;
        let Some(last_at) = ring.last_at.replace(now) else {
            // The first reading is the baseline; rates start with the next one.
            for (name, r) in readings {
                ring.routes.entry(name.to_string()).or_default().last = r;
            }
            return;
        };
        let secs = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        if ring.times.len() == CAPACITY {
            ring.times.pop_front();
            for s in ring.routes.values_mut() {
                s.points.pop_front();
            }
        }
        ring.times.push_back(unix_ms);
        let len = ring.times.len();
        ring.routes
            .retain(|name, _| readings.iter().any(|(n, _)| *n == name.as_str()));
        for (name, r) in readings {
            let s = ring
                .routes
                .entry(name.to_string())
                .or_insert_with(|| RouteSeries {
                    // A route that appeared since the last sample starts from zero.
                    last: Reading::default(),
                    points: VecDeque::new(),
                });
            while s.points.len() + 1 < len {
                s.points.push_back(None);
            }
            s.points.push_back(Some(Point::between(&s.last, &r, secs)));
            s.last = r;
        }
    }

    /// The JSON document of `GET /admin/series[?since=UNIX_MS]`: one array per measure and
    /// route, aligned with `times`; with `since`, only the samples taken after it (the page
    /// polls for what is new).
    pub fn document(&self, since: Option<u64>) -> serde_json::Value {
        let ring = self.lock();
        let skip = since.map_or(0, |t| ring.times.iter().take_while(|at| **at <= t).count());
        let mut names: Vec<&String> = ring.routes.keys().collect();
        names.sort();
        let routes: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .map(|name| {
                let points = &ring.routes[name].points;
                let column = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<Option<f64>> {
                    points
                        .iter()
                        .skip(skip)
                        .map(|p| p.as_ref().and_then(f))
                        .collect()
                };
                (
                    name.clone(),
                    json!({
                        "requests_per_s": column(&|p| Some(p.requests)),
                        "errors_4xx_per_s": column(&|p| Some(p.errors_4xx)),
                        "errors_5xx_per_s": column(&|p| Some(p.errors_5xx)),
                        "rate_limited_per_s": column(&|p| Some(p.rate_limited)),
                        "auth_failures_per_s": column(&|p| Some(p.auth_failures)),
                        "p50_ms": column(&|p| p.p50_ms),
                        "p99_ms": column(&|p| p.p99_ms),
                    }),
                )
            })
            .collect();
        json!({
            "instance": instance(),
            "interval_s": INTERVAL.as_secs(),
            "capacity": CAPACITY,
            "times": ring.times.iter().skip(skip).collect::<Vec<_>>(),
            "routes": routes,
        })
    }
}

/// Which gateway these numbers are from: they are this process's, never the fleet's.
fn instance() -> serde_json::Value {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    json!({ "hostname": host, "pid": std::process::id() })
}

/// Samples the gateway's route counters every second until shutdown.
pub async fn run(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let routes = gateway.metrics.routes();
        gateway
            .series
            .sample(&routes, tokio::time::Instant::now(), unix_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn route(name: &str) -> (String, Arc<RouteMetrics>) {
        (name.to_string(), Arc::new(RouteMetrics::default()))
    }

    #[test]
    fn rates_and_quantiles_are_per_interval_and_the_ring_is_bounded() {
        let series = Series::default();
        let a = route("a");
        let t0 = tokio::time::Instant::now();
        series.sample(std::slice::from_ref(&a), t0, 0);
        // 10 requests in 2 s: 8 fast 200s, one slow 503, one 429 counted by the limiter.
        for _ in 0..8 {
            a.1.record(&Method::GET, 200, Duration::from_micros(800), 0, 0);
        }
        a.1.record(&Method::GET, 503, Duration::from_millis(400), 0, 0);
        a.1.record(&Method::GET, 429, Duration::from_micros(100), 0, 0);
        a.1.rate_limited.fetch_add(1, Relaxed);
        series.sample(std::slice::from_ref(&a), t0 + Duration::from_secs(2), 2000);
        let doc = series.document(None);
        let r = &doc["routes"]["a"];
        assert_eq!(doc["times"], json!([2000]));
        assert_eq!(r["requests_per_s"], json!([5.0]));
        assert_eq!(r["errors_5xx_per_s"], json!([0.5]));
        assert_eq!(r["errors_4xx_per_s"], json!([0.5]));
        assert_eq!(r["rate_limited_per_s"], json!([0.5]));
        // p50 falls in the first bucket (≤ 1 ms), p99 in the 250–500 ms one.
        let p50 = r["p50_ms"][0].as_f64().unwrap();
        let p99 = r["p99_ms"][0].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= 1.0, "{p50}");
        assert!(p99 > 250.0 && p99 <= 500.0, "{p99}");

        // A quiet interval: zero rates, no quantiles.
        series.sample(std::slice::from_ref(&a), t0 + Duration::from_secs(3), 3000);
        let doc = series.document(None);
        assert_eq!(doc["routes"]["a"]["requests_per_s"][1], json!(0.0));
        assert_eq!(doc["routes"]["a"]["p99_ms"][1], json!(null));

        // A route added later is aligned with nulls; a removed one disappears.
        let b = route("b");
        series.sample(std::slice::from_ref(&b), t0 + Duration::from_secs(4), 4000);
        let doc = series.document(None);
        assert!(doc["routes"].get("a").is_none());
        assert_eq!(
            doc["routes"]["b"]["requests_per_s"],
            json!([null, null, 0.0])
        );

        // Only what is newer than `since`.
        let doc = series.document(Some(3000));
        assert_eq!(doc["times"], json!([4000]));
        assert_eq!(doc["routes"]["b"]["requests_per_s"], json!([0.0]));

        for i in 0..(CAPACITY as u64 + 50) {
            series.sample(
                std::slice::from_ref(&b),
                t0 + Duration::from_secs(5 + i),
                5000 + i,
            );
        }
        let doc = series.document(None);
        assert_eq!(doc["times"].as_array().unwrap().len(), CAPACITY);
        assert_eq!(
            doc["routes"]["b"]["requests_per_s"]
                .as_array()
                .unwrap()
                .len(),
            CAPACITY
        );
    }
}
