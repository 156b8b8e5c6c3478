//! `routes[].fallback`: when the primary upstream fails (after its own retries), a bodiless
//! request goes once to another upstream — inside the route's timeout, paid from the primary's
//! retry budget, so one request never makes more than three upstream attempts in all (the
//! fallback needs `retries.attempts` of at most 1).

use super::pool::PooledBody;
use crate::config::{Diag, Route};
use crate::reject::Reject;
use http::Response;
use std::collections::BTreeMap;

/// What sends a request to the fallback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackOn {
    pub server_error: bool,
    pub connect_failure: bool,
    pub timeout: bool,
    /// Every target unavailable: breakers open or health checks failing.
    pub breaker_open: bool,
    pub reset: bool,
}

#[derive(Debug)]
pub struct FallbackPolicy {
    /// Position in the snapshot's upstreams.
    pub upstream: usize,
    pub on: FallbackOn,
}

/// Most extra attempts the primary may make when a fallback is configured (1 + this + the
/// fallback's one = 3).
const MAX_PRIMARY_RETRIES: u32 = 1;

impl FallbackPolicy {
    pub fn build(
        r: &Route,
        upstreams: &BTreeMap<&str, usize>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Option<FallbackPolicy>> {
        let Some(f) = &r.fallback else {
            return Some(None);
        };
        let mark = diag.mark();
        let upstream = upstreams.get(f.upstream.value.as_str()).copied();
        if upstream.is_none() {
            diag.err(
                f.upstream.line,
                format!("{key}.fallback.upstream"),
                format!("unknown upstream `{}`", f.upstream.value),
            );
        }
        if r.upstream
            .as_ref()
            .is_some_and(|u| u.value == f.upstream.value)
        {
            diag.err(
                f.upstream.line,
                format!("{key}.fallback.upstream"),
                "the fallback must be another upstream than the route's",
            );
        }
        if r.upstream.is_none() {
            diag.err(
                f.line,
                format!("{key}.fallback"),
                "a fallback needs a route with one `upstream`",
            );
        }
        if let Some(rt) = &r.retries {
            if rt.attempts.value > MAX_PRIMARY_RETRIES {
                diag.err(
                    rt.attempts.line,
                    format!("{key}.retries.attempts"),
                    format!(
                        "with a fallback at most {MAX_PRIMARY_RETRIES} extra attempt: one request makes at most three upstream attempts in all"
                    ),
                );
            }
        }
        let mut on = FallbackOn::default();
        match &f.on {
            None => {
                on = FallbackOn {
                    server_error: true,
                    connect_failure: true,
                    timeout: true,
                    breaker_open: true,
                    reset: false,
                }
            }
            Some(list) => {
                for item in list {
                    match item.value.as_str() {
                        "5xx" => on.server_error = true,
                        "connect_failure" => on.connect_failure = true,
                        "timeout" => on.timeout = true,
                        "breaker_open" => on.breaker_open = true,
                        "reset" => on.reset = true,
                        other => diag.err(
                            item.line,
                            format!("{key}.fallback.on"),
                            format!(
                                "unknown condition `{other}` (expected 5xx, connect_failure, timeout, breaker_open, reset)"
                            ),
                        ),
                    }
                }
            }
        }
        diag.ok_since(
            mark,
            Some(FallbackPolicy {
                upstream: upstream?,
                on,
            }),
        )
    }

    /// Whether the primary's result sends the request to the fallback.
    pub fn applies(&self, result: &Result<Response<PooledBody>, Reject>) -> bool {
        match result {
            Ok(r) => self.on.server_error && r.status().is_server_error(),
            Err(Reject::UpstreamConnect(_)) => self.on.connect_failure,
            Err(Reject::UpstreamTimeout(_)) => self.on.timeout,
            Err(Reject::NoTargetAvailable(_)) => self.on.breaker_open,
            Err(Reject::UpstreamFailed(_)) => self.on.reset,
            Err(_) => false,
        }
    }
}
