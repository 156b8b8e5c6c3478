//! `GET /admin/consumers/<id>` (the consumer, its effective plan, each quota's use and what
//! remains) and the consumer families for `/metrics`. Key hashes and key ids are never shown.

use super::Unresolved;
use crate::observe::metrics::{by_result, family, label};
use crate::snapshot::Snapshot;
use http::StatusCode;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;

fn rfc3339(s: i64) -> String {
    jiff::Timestamp::from_second(s).map_or_else(|_| s.to_string(), |t| t.to_string())
}

/// The document for consumer `id`, or the status and message to answer with.
pub async fn document(
    snapshot: &Snapshot,
    id: &str,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let consumers = &snapshot.consumers;
    // The file first; the store read directly (not the cache), so the answer is current.
    let consumer = match consumers.configured(id) {
        Some(c) => Some(std::sync::Arc::clone(c)),
        None => match &consumers.store {
            Some(s) => s.consumer_uncached(id).await.map_err(|e| match e {
                Unresolved::StoreDown(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the consumer store is unavailable".to_string(),
                ),
                Unresolved::Inactive => (StatusCode::NOT_FOUND, "no such consumer".into()),
            })?,
            None => None,
        },
    };
    let Some(c) = consumer else {
        return Err((StatusCode::NOT_FOUND, format!("no consumer `{id}`")));
    };
    let plan = snapshot.plans.as_ref().and_then(|t| {
        c.plan
            .as_deref()
            .and_then(|n| t.by_name(n))
            .or_else(|| t.default.map(|i| &t.plans[i]))
    });
    let mut limits = Vec::new();
    let mut quotas = Vec::new();
    let now_s = (crate::ratelimit::calendar::wall_us() / 1_000_000) as i64;
    for l in plan.map_or(&[][..], |p| &p.limiters[..]) {
        match l.quota_usage(&c).await {
            None => {
                let (q, w) = l.algorithm.policy();
                limits.push(json!({ "name": l.name, "quota": q, "window_s": w }));
            }
            Some(Ok(u)) => quotas.push(json!({
                "name": l.name,
                "limit": u.limit,
                // Above the limit only for a batched quota's overrun.
                "used": u.used,
                "remaining": u.limit.saturating_sub(u.used),
                "period": format!("{:?}", u.period.kind).to_lowercase(),
                "time_zone": u.period.zone_name(),
                "window_start": rfc3339(u.window.start_s),
                "window_end": rfc3339(u.window.end_s),
                "resets_in_s": (u.window.end_s - now_s).max(0),
            })),
            Some(Err(e)) => quotas.push(json!({ "name": l.name, "error": e.to_string() })),
        }
    }
    Ok(json!({
        "id": c.id,
        "source": c.source,
        "active": c.active,
        "tenant": c.tenant,
        "plan": c.plan,
        "effective_plan": plan.map(|p| &*p.name),
        "scopes": c.scopes,
        "metadata": c.metadata,
        "limits": limits,
        "quotas": quotas,
    }))
}

/// Consumer-store lookups and cache use, and requests by plan.
pub fn render_metrics(snapshot: &Snapshot, out: &mut String) {
    if let Some(s) = &snapshot.consumers.store {
        let c = s.counters();
        family(
            out,
            "portcullis_consumer_store_lookups_total",
            "counter",
            "Redis lookups of API keys and consumers by result (found, unknown, error).",
            &by_result(&[
                ("found", &c.found),
                ("unknown", &c.unknown),
                ("error", &c.failed),
            ]),
        );
        family(
            out,
            "portcullis_consumer_cache_total",
            "counter",
            "Consumer cache answers: hit, negative_hit (an unknown key remembered), stale (past its TTL while Redis is unreachable).",
            &by_result(&[
                ("hit", &c.hits),
                ("negative_hit", &c.negative_hits),
                ("stale", &c.stale),
            ]),
        );
        family(
            out,
            "portcullis_consumer_cache_entries",
            "gauge",
            "Records (found or not) in the consumer cache.",
            &[(String::new(), s.cached_entries() as f64)],
        );
    }
    if let Some(t) = &snapshot.plans {
        let rows: Vec<(String, f64)> = t
            .plans
            .iter()
            .map(|p| (label("plan", &p.name), p.requests.load(Relaxed) as f64))
            .collect();
        family(
            out,
            "portcullis_plan_requests_total",
            "counter",
            "Requests on by_plan routes by the plan whose limits applied (plans are the config's: bounded).",
            &rows,
        );
        family(
            out,
            "portcullis_plan_unknown_total",
            "counter",
            "Requests whose consumer named a plan the config does not define (the default plan applied).",
            &[(String::new(), t.unknown_plan.load(Relaxed) as f64)],
        );
    }
}
