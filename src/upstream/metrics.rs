//! The upstreams' families for `/metrics`: retries, bulkheads, requests in flight, and per
//! target health, breaker state and pool connections (live state read at scrape time).

use super::breaker::BreakerState;
use super::CompiledUpstream;
use crate::observe::metrics::{family, label};
use std::sync::atomic::Ordering::Relaxed;

pub fn render(upstreams: &[CompiledUpstream], out: &mut String) {
    let now = tokio::time::Instant::now();
    let per_upstream = |f: &dyn Fn(&CompiledUpstream) -> f64| -> Vec<(String, f64)> {
        upstreams
            .iter()
            .map(|u| (label("upstream", &u.name), f(u)))
            .collect()
    };
    family(
        out,
        "portcullis_upstream_retries_total",
        "counter",
        "Retries sent, by upstream.",
        &per_upstream(&|u| u.runtime.retries.load(Relaxed) as f64),
    );
    family(
        out,
        "portcullis_upstream_retries_denied_total",
        "counter",
        "Retries refused by the retry budget, by upstream.",
        &per_upstream(&|u| u.runtime.retries_denied_by_budget.load(Relaxed) as f64),
    );
    family(
        out,
        "portcullis_upstream_bulkhead_rejections_total",
        "counter",
        "Requests refused by the upstream's max_concurrent_requests.",
        &per_upstream(&|u| u.runtime.bulkhead_rejections.load(Relaxed) as f64),
    );
    family(
        out,
        "portcullis_upstream_requests_in_flight",
        "gauge",
        "Requests in flight to the upstream.",
        &per_upstream(&|u| u.runtime.in_flight.load(Relaxed) as f64),
    );

    let mut healthy = Vec::new();
    let mut breaker = Vec::new();
    let mut transitions = Vec::new();
    let mut pool = Vec::new();
    let mut created = Vec::new();
    for u in upstreams {
        for t in &u.targets {
            let labels = format!(
                "{},{}",
                label("upstream", &u.name),
                label("target", t.pool.authority().as_str())
            );
            healthy.push((labels.clone(), if t.state.is_healthy() { 1.0 } else { 0.0 }));
            if let Some(cfg) = &u.breaker {
                let status = t.state.breaker.status(cfg, now);
                for s in [
                    BreakerState::Closed,
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                ] {
                    breaker.push((
                        format!("{labels},{}", label("state", s.as_str())),
                        if s == status.state { 1.0 } else { 0.0 },
                    ));
                }
                transitions.push((labels.clone(), status.transitions as f64));
            }
            pool.push((
                format!("{labels},state=\"idle\""),
                t.pool.idle_count() as f64,
            ));
            pool.push((
                format!("{labels},state=\"in_use\""),
                t.state.in_flight.load(Relaxed) as f64,
            ));
            created.push((labels, t.pool.created.load(Relaxed) as f64));
        }
    }
    family(
        out,
        "portcullis_target_healthy",
        "gauge",
        "1 when the target passes its health checks (or has none).",
        &healthy,
    );
    family(
        out,
        "portcullis_breaker_state",
        "gauge",
        "Circuit breaker state by target (1 for the current state).",
        &breaker,
    );
    family(
        out,
        "portcullis_breaker_transitions_total",
        "counter",
        "Circuit breaker state changes by target.",
        &transitions,
    );
    family(
        out,
        "portcullis_pool_connections",
        "gauge",
        "Upstream connections by target and state.",
        &pool,
    );
    family(
        out,
        "portcullis_pool_connections_created_total",
        "counter",
        "Upstream connections opened by target.",
        &created,
    );
}
