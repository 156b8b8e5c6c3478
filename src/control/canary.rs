//! A canary rollout: a version goes to the instances carrying one label, their 5xx ratio and
//! p99 latency are watched (from the counters and histograms they report with each heartbeat),
//! synthetic checks are sent to them, and the version is then promoted to every instance — or,
//! when a gate is breached, a check fails or a canary cannot apply the version, the canaries go
//! back to the active version and the version is marked ROLLED_BACK with the reason.

use super::checks::Check;
use super::stats::{p99_ms, HeartbeatStats};
use super::store::{now_ms, InstanceReport, Labels, Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;

pub struct CanaryPlan {
    pub version: i64,
    pub environment: String,
    pub selector: String,
    pub watch: Duration,
    pub max_error_rate: f64,
    /// How long canaries get to apply the version before the rollout is abandoned.
    pub apply_timeout: Duration,
    /// Highest p99 latency of the canaries' requests, judged once they served
    /// [`MIN_REQUESTS_FOR_P99`] requests on the version.
    pub max_p99_ms: Option<f64>,
    /// Sent to every canary before promotion; any failure rolls back.
    pub checks: Vec<Check>,
}

/// Fewer requests than this say nothing about a p99.
pub const MIN_REQUESTS_FOR_P99: u64 = 20;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Promoted { requests: u64, errors: u64 },
    RolledBack { reason: String },
}

/// An instance is live when its last heartbeat is at most this old.
pub const LIVE_HEARTBEAT_MS: i64 = 10_000;

fn canaries(instances: &[InstanceReport], selector: &str) -> Vec<InstanceReport> {
    let now = now_ms();
    instances
        .iter()
        .filter(|i| now - i.heartbeat_ms <= LIVE_HEARTBEAT_MS)
        .filter(|i| Labels::parse(&i.labels).is_ok_and(|l| l.matches(selector)))
        .cloned()
        .collect()
}

/// Runs the rollout to its end, printing progress with `say`.
pub async fn run(
    store: &Store,
    plan: &CanaryPlan,
    actor: &str,
    say: &mut dyn FnMut(String),
) -> Result<Outcome, StoreError> {
    let selected = canaries(&store.instances(&plan.environment).await?, &plan.selector);
    if selected.is_empty() {
        return Err(StoreError::Refused(format!(
            "no live instance in environment {} has the label {}",
            plan.environment, plan.selector
        )));
    }
    let ids: Vec<String> = selected.iter().map(|i| i.instance_id.clone()).collect();
    store.start_canary(plan.version, &plan.selector).await?;
    say(format!(
        "version {} sent to {} canary instance(s): {}",
        plan.version,
        ids.len(),
        ids.join(", ")
    ));

    // Counters of each canary at the moment it first reported the new version.
    let mut baseline: HashMap<String, (i64, i64, HeartbeatStats)> = HashMap::new();
    let apply_deadline = tokio::time::Instant::now() + plan.apply_timeout;
    let mut watch_until: Option<tokio::time::Instant> = None;
    let rollback = |reason: String| async move {
        store.abort_canary(plan.version, &reason).await?;
        Ok::<_, StoreError>(Outcome::RolledBack { reason })
    };
    loop {
        let reports = store.instances(&plan.environment).await?;
        let mine: Vec<&InstanceReport> = reports
            .iter()
            .filter(|r| ids.contains(&r.instance_id))
            .collect();
        if let Some(bad) = mine.iter().find(|r| r.failed_version == Some(plan.version)) {
            let why = bad.last_error.clone().unwrap_or_default();
            return rollback(format!(
                "canary {} could not apply version {}: {why}",
                bad.instance_id, plan.version
            ))
            .await;
        }
        for r in &mine {
            if r.applied_version == Some(plan.version) {
                baseline.entry(r.instance_id.clone()).or_insert_with(|| {
                    (
                        r.requests,
                        r.errors_5xx,
                        HeartbeatStats::parse(r.stats.as_deref()),
                    )
                });
            }
        }
        let (requests, errors) = mine
            .iter()
            .filter_map(|r| {
                baseline.get(&r.instance_id).map(|(q, e, _)| {
                    (
                        (r.requests - q).max(0) as u64,
                        (r.errors_5xx - e).max(0) as u64,
                    )
                })
            })
            .fold((0, 0), |(a, b), (q, e)| (a + q, b + e));
        let ratio = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        if ratio > plan.max_error_rate {
            return rollback(format!(
                "5xx ratio {ratio:.4} ({errors} of {requests} requests) on the canaries is above {}",
                plan.max_error_rate
            ))
            .await;
        }
        // The canaries' latency since they took the version.
        let mut since = HeartbeatStats::default();
        for r in &mine {
            if let Some((_, _, base)) = baseline.get(&r.instance_id) {
                since.add(&HeartbeatStats::parse(r.stats.as_deref()).since(base));
            }
        }
        if let (Some(max), Some(p99)) = (plan.max_p99_ms, p99_ms(&since.latency)) {
            let counted: u64 = since.latency.iter().sum();
            if counted >= MIN_REQUESTS_FOR_P99 && p99 > max {
                return rollback(format!(
                    "p99 latency {p99:.0} ms ({counted} requests) on the canaries is above {max} ms"
                ))
                .await;
            }
        }
        let now = tokio::time::Instant::now();
        match watch_until {
            None if baseline.len() == ids.len() => {
                say(format!(
                    "all canaries run version {}; watching their 5xx ratio for {} s",
                    plan.version,
                    plan.watch.as_secs()
                ));
                watch_until = Some(now + plan.watch);
            }
            None if now >= apply_deadline => {
                let missing: Vec<&str> = ids
                    .iter()
                    .filter(|id| !baseline.contains_key(*id))
                    .map(String::as_str)
                    .collect();
                return rollback(format!(
                    "canaries {} did not apply version {} within {} s",
                    missing.join(", "),
                    plan.version,
                    plan.apply_timeout.as_secs()
                ))
                .await;
            }
            Some(until) if now >= until => {
                if !plan.checks.is_empty() {
                    match super::checks::run_on_instances(&plan.checks, &mine).await {
                        Ok(n) => say(format!("{n} synthetic check(s) passed on the canaries")),
                        Err(why) => return rollback(why).await,
                    }
                }
                store.activate(plan.version, actor).await?;
                return Ok(Outcome::Promoted { requests, errors });
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
