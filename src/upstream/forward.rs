//! Forwarding a request to an upstream: bulkhead, target choice, per-try and overall timeouts,
//! circuit breaker bookkeeping, and retries under the upstream's retry budget.

use super::balancer::PickContext;
use super::breaker::Admission;
use super::pool::{copy_head, PooledBody, UpstreamError};
use super::retry::{RetryOn, RetryPolicy};
use super::CompiledUpstream;
use crate::body::read::read_whole;
use crate::body::{RequestBodyError, UpstreamBody};
use crate::held::Held;
use crate::observe::record::{RetryEvent, Trail};
use crate::reject::Reject;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response};
use http_body::Body as _;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How one try ended.
enum Outcome {
    Response(Response<PooledBody>),
    Failed(RetryOn, Reject),
    /// Not retryable whatever the policy (the client's own body was the problem).
    Fatal(Reject),
}

/// Sends the request to `upstream`, retrying per `policy`, all within `timeout`.
pub async fn forward(
    upstream: &CompiledUpstream,
    policy: Option<&RetryPolicy>,
    timeout: Duration,
    parts: Parts,
    body: UpstreamBody,
    client_ip: &str,
    trail: &mut Trail,
) -> Result<Response<PooledBody>, Reject> {
    let mut now = Instant::now();
    let deadline = now + timeout;
    let timeout_ms = timeout.as_millis() as u64;
    let Some(_slot) = upstream.enter() else {
        return Err(Reject::UpstreamBusy(upstream.name.to_string()));
    };
    upstream.runtime.budget.deposit(&upstream.retry_budget);

    // Each try is bounded by the per-try timeout, retried or not (with `attempts: 0`, or a
    // method that is never retried, the single try still gets it).
    let per_try_timeout = policy.and_then(|p| p.per_try_timeout);
    // A request can be retried only if its body can be sent again.
    let policy = policy.filter(|p| p.may_retry(&parts.method, &parts.headers));
    let (mut first_body, replay) = match policy {
        Some(p) => replayable(body, p.max_replay_bytes, deadline).await?,
        None => (Some(body), None),
    };
    let attempts = if replay.is_some() {
        policy.map_or(0, |p| p.attempts)
    } else {
        0
    };

    let mut parts = Some(parts);
    let mut tried: Vec<usize> = Vec::new();
    let mut retries_done = 0;
    loop {
        if now >= deadline {
            return Err(Reject::UpstreamTimeout(timeout_ms));
        }
        let template = parts
            .as_ref()
            .expect("request parts kept while tries remain");
        let cx = PickContext {
            headers: &template.headers,
            client_ip,
            breaker: upstream.breaker.as_ref(),
            now,
            tried: &tried,
        };
        let Some(index) = upstream.balancer.pick(&upstream.targets, &cx) else {
            return Err(Reject::NoTargetAvailable(upstream.name.to_string()));
        };
        let target = &upstream.targets[index];
        let admission = match &upstream.breaker {
            Some(cfg) => target.state.breaker.admit(cfg, now),
            None => Admission::Allowed,
        };
        if admission == Admission::Rejected {
            // The breaker opened between the pick and now; try another target.
            now = Instant::now();
            tried.push(index);
            if tried.len() > upstream.targets.len() * 2 {
                return Err(Reject::NoTargetAvailable(upstream.name.to_string()));
            }
            continue;
        }

        // Build this try's request: the original on the last possible try, a copy otherwise.
        let last_try = retries_done >= attempts;
        let mut req_parts = if last_try {
            parts.take().expect("request parts")
        } else {
            copy_head(
                &template.method,
                &template.uri,
                template.version,
                &template.headers,
            )
        };
        if !req_parts.headers.contains_key(header::HOST) {
            // HTTP/1.0 clients may send no Host; HTTP/1.1 upstreams require one.
            if let Ok(h) = HeaderValue::from_str(target.pool.authority().as_str()) {
                req_parts.headers.insert(header::HOST, h);
            }
        }
        let req_body = match first_body.take() {
            Some(b) => b,
            None => UpstreamBody::Full(replay.clone().flatten()),
        };
        let remaining = deadline.saturating_duration_since(now);
        let try_timeout = per_try_timeout.map_or(remaining, |t| t.min(remaining));

        let in_flight = Held::take(&target.state.in_flight);
        let try_started = Instant::now();
        let result = tokio::time::timeout(
            try_timeout,
            target.pool.send(Request::from_parts(req_parts, req_body)),
        )
        .await;
        drop(in_flight);
        trail.target = Some(index);
        let upstream_latency = try_started.elapsed();
        upstream.metrics.duration.observe(upstream_latency);
        trail.upstream_latency = Some(upstream_latency);
        trail.retries = retries_done;
        let outcome = classify(result, &upstream.name, try_timeout);

        let healthy_answer = matches!(&outcome, Outcome::Response(r) if r.status().as_u16() < 500);
        if !matches!(outcome, Outcome::Fatal(_)) {
            upstream.metrics.tries.fetch_add(1, Ordering::Relaxed);
            if !healthy_answer {
                upstream
                    .metrics
                    .failed_tries
                    .fetch_add(1, Ordering::Relaxed);
            }
            target.state.record(healthy_answer);
            if let Some(cfg) = &upstream.breaker {
                target
                    .state
                    .breaker
                    .record(cfg, admission, healthy_answer, Instant::now());
            }
        }

        let condition = match &outcome {
            Outcome::Response(r) => {
                let status = RetryOn::Status(r.status().as_u16());
                if policy.is_some_and(|p| p.retries_on(status)) {
                    status
                } else {
                    return into_result(outcome);
                }
            }
            Outcome::Failed(cond, _) => *cond,
            Outcome::Fatal(_) => return into_result(outcome),
        };
        let Some(p) = policy else {
            return into_result(outcome);
        };
        if last_try || !p.retries_on(condition) || Instant::now() >= deadline {
            return into_result(outcome);
        }
        if !upstream.runtime.budget.withdraw(&upstream.retry_budget) {
            upstream
                .runtime
                .retries_denied_by_budget
                .fetch_add(1, Ordering::Relaxed);
            return into_result(outcome);
        }
        drop(outcome);
        retries_done += 1;
        upstream.runtime.retries.fetch_add(1, Ordering::Relaxed);
        trail.retry_events.push(RetryEvent {
            at: std::time::Instant::now(),
            attempt: retries_done,
            reason: condition.to_string(),
            target: target.pool.authority().to_string(),
        });
        tried.push(index);
        let pause = p
            .backoff(retries_done)
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        now = Instant::now();
    }
}

fn into_result(outcome: Outcome) -> Result<Response<PooledBody>, Reject> {
    match outcome {
        Outcome::Response(r) => Ok(r),
        Outcome::Failed(_, reject) | Outcome::Fatal(reject) => Err(reject),
    }
}

/// Makes the body replayable when it fits in `max_replay` bytes: returns the body for the first
/// try and, if it can be sent again, its bytes.
async fn replayable(
    body: UpstreamBody,
    max_replay: u64,
    deadline: Instant,
) -> Result<(Option<UpstreamBody>, Option<Option<Bytes>>), Reject> {
    if let UpstreamBody::Full(data) = body {
        return if data.as_ref().is_none_or(|d| d.len() as u64 <= max_replay) {
            Ok((Some(UpstreamBody::Full(data.clone())), Some(data)))
        } else {
            Ok((Some(UpstreamBody::Full(data)), None))
        };
    }
    match body.size_hint().exact() {
        // Declared and small enough: read it now so it can be sent more than once.
        Some(len) if len <= max_replay => {
            let data = read_whole(body, max_replay, deadline).await?;
            Ok((Some(UpstreamBody::Full(data.clone())), Some(data)))
        }
        _ => Ok((Some(body), None)),
    }
}

fn classify(
    result: Result<Result<Response<PooledBody>, UpstreamError>, tokio::time::error::Elapsed>,
    upstream: &str,
    try_timeout: Duration,
) -> Outcome {
    let e = match result {
        Err(_) => {
            return Outcome::Failed(
                RetryOn::Timeout,
                Reject::UpstreamTimeout(try_timeout.as_millis() as u64),
            )
        }
        Ok(Ok(resp)) => return Outcome::Response(resp),
        Ok(Err(e)) => e,
    };
    // A body error of the client's own request is not the upstream's failure.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(body_err) = err.downcast_ref::<RequestBodyError>() {
            return Outcome::Fatal(body_err.to_reject());
        }
        source = err.source();
    }
    if let UpstreamError::UpgradeOverH2 { .. } = e {
        return Outcome::Fatal(Reject::Status(http::StatusCode::BAD_GATEWAY, e.to_string()));
    }
    if e.is_connect() {
        Outcome::Failed(
            RetryOn::ConnectFailure,
            Reject::UpstreamConnect(upstream.to_string()),
        )
    } else {
        Outcome::Failed(RetryOn::Reset, Reject::UpstreamFailed(upstream.to_string()))
    }
}
