//! Active health checks: an HTTP GET to each target on an interval; `healthy_threshold`
//! successes in a row mark a target up, `unhealthy_threshold` failures mark it down. Each check
//! uses its own connection, so a check never waits behind (or disturbs) proxied traffic.

use super::target::TargetState;
use crate::config::HealthCheck;
use bytes::Bytes;
use http::uri::Authority;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One GET; true for a 2xx or 3xx answer within `timeout`.
pub async fn check_once(target: &Authority, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(target.as_str()).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        let driver = tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, target.as_str())
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(Empty::new())
            .ok()?;
        let status = sender.send_request(req).await.ok()?.status();
        driver.abort();
        Some(status.is_success() || status.is_redirection())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

async fn run(upstream: String, target: Authority, state: Arc<TargetState>, cfg: HealthCheck) {
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if check_once(&target, &cfg.path, timeout).await {
            successes += 1;
            failures = 0;
            if successes >= cfg.healthy_threshold
                && (!state.is_healthy()
                    || !state.checked.load(std::sync::atomic::Ordering::Relaxed))
            {
                if !state.is_healthy() {
                    tracing::info!(upstream = %upstream, target = %target, "target is healthy again");
                }
                state.set_healthy(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= cfg.unhealthy_threshold && state.is_healthy() {
                tracing::warn!(upstream = %upstream, target = %target, failures, "target failed its health checks; taking it out of rotation");
                state.set_healthy(false);
            }
        }
    }
}

/// The running checkers, one per (upstream, target) that has a `health_check`.
#[derive(Default)]
pub struct HealthCheckers {
    running: HashMap<(String, String), (HealthCheck, JoinHandle<()>)>,
}

impl HealthCheckers {
    /// Starts, restarts or stops checkers to match `upstreams`. Must run inside the runtime.
    pub fn sync(&mut self, upstreams: &[super::CompiledUpstream]) {
        let mut wanted: HashMap<(String, String), (HealthCheck, Authority, Arc<TargetState>)> =
            HashMap::new();
        for u in upstreams {
            let Some(hc) = &u.health_check else { continue };
            for t in &u.targets {
                let authority = t.pool.authority().clone();
                wanted.insert(
                    (u.name.to_string(), authority.to_string()),
                    (hc.clone(), authority, Arc::clone(&t.state)),
                );
            }
        }
        self.running.retain(|key, (cfg, handle)| {
            let keep = wanted.get(key).is_some_and(|(w, _, _)| w == cfg);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, (cfg, authority, state)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let handle = tokio::spawn(run(key.0.clone(), authority, state, cfg.clone()));
            self.running.insert(key, (cfg, handle));
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (_, h)) in self.running.drain() {
            h.abort();
        }
    }
}
