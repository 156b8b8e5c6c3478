//! `routes[].fault`: delays and aborts injected into a share of a route's requests, to rehearse
//! a migration (origin timeouts, failing backends) before promoting it. Off unless configured;
//! each injection is counted; `only_with_header` keeps it to test traffic.

use crate::config::{Diag, FaultConfig, Located};
use crate::upstream::spec::MAX_TIMEOUT_MS;
use http::{HeaderMap, HeaderName, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Shares are parts of a million.
const PARTS: u32 = 1_000_000;

#[derive(Debug)]
pub struct FaultPolicy {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(StatusCode, u32)>,
    pub only_with_header: Option<HeaderName>,
}

/// What the fault phase decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<StatusCode>,
}

#[derive(Debug, Default)]
pub struct FaultCounters {
    pub delays: AtomicU64,
    pub aborts: AtomicU64,
}

fn share(p: &Located<f64>, key: &str, diag: &mut Diag) -> u32 {
    if !(0.0..=100.0).contains(&p.value) {
        diag.err(p.line, key, "must be a percentage from 0 to 100");
        return 0;
    }
    (p.value * f64::from(PARTS) / 100.0).round() as u32
}

impl FaultPolicy {
    pub fn build(f: &Located<FaultConfig>, key: &str, diag: &mut Diag) -> Option<FaultPolicy> {
        let key = format!("{key}.fault");
        let mark = diag.mark();
        if f.delay.is_none() && f.abort.is_none() {
            diag.err(f.line, &key, "give `delay`, `abort` or both");
        }
        let delay = f.delay.as_ref().map(|d| {
            if !(1..=MAX_TIMEOUT_MS).contains(&d.ms.value) {
                diag.err(
                    d.ms.line,
                    format!("{key}.delay.ms"),
                    format!("must be from 1 to {MAX_TIMEOUT_MS}"),
                );
            }
            (
                Duration::from_millis(d.ms.value),
                share(&d.percent, &format!("{key}.delay.percent"), diag),
            )
        });
        let abort = f.abort.as_ref().and_then(|a| {
            let s = share(&a.percent, &format!("{key}.abort.percent"), diag);
            match StatusCode::from_u16(a.status.value) {
                Ok(code) if (400..=599).contains(&a.status.value) => Some((code, s)),
                _ => {
                    diag.err(
                        a.status.line,
                        format!("{key}.abort.status"),
                        "must be a 4xx or 5xx status",
                    );
                    None
                }
            }
        });
        let only_with_header = f.only_with_header.as_ref().and_then(|h| {
            HeaderName::from_bytes(h.value.as_bytes())
                .map_err(|_| {
                    diag.err(
                        h.line,
                        format!("{key}.only_with_header"),
                        format!("`{}` is not a header name", h.value),
                    )
                })
                .ok()
        });
        diag.ok_since(
            mark,
            FaultPolicy {
                delay,
                abort,
                only_with_header,
            },
        )
    }

    /// Draws this request's faults (each independently, at its share).
    pub fn draw(&self, headers: &HeaderMap, counters: &FaultCounters) -> Injected {
        if self
            .only_with_header
            .as_ref()
            .is_some_and(|h| !headers.contains_key(h))
        {
            return Injected {
                delay: None,
                abort: None,
            };
        }
        let hit = |share: u32| fastrand::u32(0..PARTS) < share;
        let delay = self.delay.filter(|(_, s)| hit(*s)).map(|(d, _)| d);
        let abort = self.abort.filter(|(_, s)| hit(*s)).map(|(c, _)| c);
        if delay.is_some() {
            counters.delays.fetch_add(1, Relaxed);
        }
        if abort.is_some() {
            counters.aborts.fetch_add(1, Relaxed);
        }
        Injected { delay, abort }
    }

    /// For `explain`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((d, s)) = self.delay {
            parts.push(format!(
                "delay {} ms on {}%",
                d.as_millis(),
                f64::from(s) / 10_000.0
            ));
        }
        if let Some((c, s)) = self.abort {
            parts.push(format!(
                "abort {} on {}%",
                c.as_u16(),
                f64::from(s) / 10_000.0
            ));
        }
        if let Some(h) = &self.only_with_header {
            parts.push(format!("only with header {h}"));
        }
        parts.join(", ")
    }
}
