//! Shadow traffic's admin surface: `GET /admin/shadow` (per route: copies, skips by reason,
//! the comparison's totals, the reported fields with their candidate and noise rates, the last
//! differing samples) and its `/metrics` families. `portcullis shadow report` prints the same
//! document.

use super::report::MAX_FIELDS;
use super::Skip;
use crate::observe::metrics::{family, label};
use crate::snapshot::Snapshot;
use std::sync::atomic::Ordering::Relaxed;

/// Reported fields exported as metric series per route (the admin document has them all).
pub const MAX_FIELD_SERIES: usize = 20;

/// `GET /admin/shadow`; `route` keeps one route.
pub fn document(snapshot: &Snapshot, route: Option<&str>) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = snapshot
        .routes
        .iter()
        .filter(|r| route.is_none_or(|name| *r.rules.name == *name))
        .filter_map(|r| {
            let m = r.rules.mirror.as_ref()?;
            let c = &r.metrics.shadow;
            let skipped: serde_json::Map<String, serde_json::Value> = Skip::ALL
                .iter()
                .map(|s| (s.as_str().to_string(), c.skipped(*s).into()))
                .collect();
            let compare = m.compare.as_ref().map(|policy| {
                let report = c.report.lock().unwrap_or_else(|p| p.into_inner());
                let summary = report.summary(policy.thresholds);
                serde_json::json!({
                    "compared": summary.compared,
                    "equal": summary.equal,
                    "differing": summary.differing,
                    "noise_compared": summary.noise_compared,
                    "noise_differing": summary.noise_differing,
                    "noise_cancelling": summary.noise_cancelling,
                    "note": if summary.noise_cancelling {
                        "fields are reported when their candidate rate exceeds their noise rate by the thresholds"
                    } else {
                        "no second primary target answered yet: the reported fields are raw differences, not noise-cancelled"
                    },
                    "thresholds": {
                        "absolute_percent": policy.thresholds.absolute,
                        "relative_percent": policy.thresholds.relative,
                    },
                    "reported": summary.reported,
                    "fields": summary.fields,
                    "untracked_differences": summary.untracked_differences,
                    "max_fields": MAX_FIELDS,
                    "skipped": c.compare_skipped.load(Relaxed),
                    "samples": summary.samples,
                })
            });
            Some(serde_json::json!({
                "route": &*r.rules.name,
                "upstream": &*m.upstream_name,
                "percent": m.percent,
                "mirrored": c.mirrored.load(Relaxed),
                "in_flight": c.in_flight.load(Relaxed),
                "noise_sent": c.noise_sent.load(Relaxed),
                "not_mirrored": skipped,
                "compare": compare,
            }))
        })
        .collect();
    serde_json::json!({ "routes": routes })
}

/// The `/metrics` families of shadow traffic and fault injection.
pub fn render_metrics(snapshot: &Snapshot, out: &mut String) {
    let mut mirrored = Vec::new();
    let mut skipped = Vec::new();
    let mut compared = Vec::new();
    let mut fields = Vec::new();
    let mut faults = Vec::new();
    for r in &snapshot.routes {
        let route = label("route", &r.rules.name);
        if r.rules.fault.is_some() {
            let f = &r.metrics.faults;
            faults.push((
                format!("{route},kind=\"delay\""),
                f.delays.load(Relaxed) as f64,
            ));
            faults.push((
                format!("{route},kind=\"abort\""),
                f.aborts.load(Relaxed) as f64,
            ));
        }
        let Some(m) = &r.rules.mirror else {
            continue;
        };
        let c = &r.metrics.shadow;
        mirrored.push((route.clone(), c.mirrored.load(Relaxed) as f64));
        for s in Skip::ALL {
            skipped.push((
                format!("{route},{}", label("reason", s.as_str())),
                c.skipped(s) as f64,
            ));
        }
        if let Some(policy) = &m.compare {
            let report = c.report.lock().unwrap_or_else(|p| p.into_inner());
            let (_, equal, differing) = report.compared();
            compared.push((format!("{route},result=\"equal\""), equal as f64));
            compared.push((format!("{route},result=\"differing\""), differing as f64));
            for f in report
                .reported(policy.thresholds)
                .iter()
                .take(MAX_FIELD_SERIES)
            {
                fields.push((
                    format!("{route},{}", label("field", &f.field)),
                    f.candidate as f64,
                ));
            }
        }
    }
    family(
        out,
        "portcullis_mirror_requests_total",
        "counter",
        "Shadow copies the mirror upstream answered, by route.",
        &mirrored,
    );
    family(
        out,
        "portcullis_mirror_skipped_total",
        "counter",
        "Requests not mirrored (or whose copy got no answer), by route and reason.",
        &skipped,
    );
    family(
        out,
        "portcullis_shadow_compared_total",
        "counter",
        "Shadow copies compared with the primary's answer, by route and result.",
        &compared,
    );
    family(
        out,
        "portcullis_shadow_field_differences_total",
        "counter",
        "Differences of the reported (noise-cancelled) fields, by route and field path (at most 20 per route).",
        &fields,
    );
    family(
        out,
        "portcullis_fault_injected_total",
        "counter",
        "Faults injected by the route's `fault` policy, by route and kind.",
        &faults,
    );
}

/// `portcullis shadow report`: the admin document as text.
pub fn text_report(doc: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let empty = Vec::new();
    let routes = doc["routes"].as_array().unwrap_or(&empty);
    if routes.is_empty() {
        out.push_str("no route with a mirror matches\n");
    }
    for r in routes {
        let _ = writeln!(
            out,
            "route {}: {}% mirrored to {}; {} copies answered, {} in flight",
            r["route"].as_str().unwrap_or(""),
            r["percent"],
            r["upstream"].as_str().unwrap_or(""),
            r["mirrored"],
            r["in_flight"]
        );
        if let Some(skips) = r["not_mirrored"].as_object() {
            let listed: Vec<String> = skips
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "  not mirrored: {}",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            );
        }
        let c = &r["compare"];
        if c.is_null() {
            out.push_str("  not compared (compare: false)\n");
            continue;
        }
        let _ = writeln!(
            out,
            "  compared {}: {} equal, {} differing; noise: {} pairs of primaries, {} differing",
            c["compared"], c["equal"], c["differing"], c["noise_compared"], c["noise_differing"]
        );
        if c["noise_cancelling"] != serde_json::Value::Bool(true) {
            out.push_str("  (no second primary target answered: differences below are raw, not noise-cancelled)\n");
        }
        let reported = c["reported"].as_array().unwrap_or(&empty);
        if reported.is_empty() {
            out.push_str("  no field stands out of the noise\n");
        } else {
            let _ = writeln!(out, "  {:<40} {:>10} {:>10}", "field", "candidate", "noise");
            for f in reported {
                let _ = writeln!(
                    out,
                    "  {:<40} {:>9.2}% {:>9.2}%",
                    f["field"].as_str().unwrap_or(""),
                    f["candidate_percent"].as_f64().unwrap_or(0.0),
                    f["noise_percent"].as_f64().unwrap_or(0.0)
                );
            }
        }
        for s in c["samples"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .rev()
            .take(5)
        {
            let _ = writeln!(
                out,
                "  sample {} {} {}: {} (primary {}, candidate {})",
                s["request_id"].as_str().unwrap_or(""),
                s["method"].as_str().unwrap_or(""),
                s["path"].as_str().unwrap_or(""),
                s["fields"]
                    .as_array()
                    .map(|f| f
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                s["primary_status"],
                s["candidate_status"]
            );
        }
    }
    out
}
