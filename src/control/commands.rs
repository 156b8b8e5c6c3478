//! `portcullis config …`: the operator's commands, talking to the store directly (the same
//! database the gateways follow), so they work while every gateway is down.

use super::canary::{self, CanaryPlan, Outcome, LIVE_HEARTBEAT_MS};
use super::store::{now_ms, Status, Store, StoreError, VersionInfo};
use std::time::Duration;

/// Exit codes: 0 done, 1 refused or failed.
pub type Exit = u8;

fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Stores FILE as a new version, validated with the same code as `portcullis validate`. An
/// invalid file is stored as REJECTED (kept for the record, never activatable) and its errors
/// are printed.
pub async fn push(
    store: &Store,
    environment: &str,
    file: &std::path::Path,
    message: &str,
    actor: &str,
) -> Result<Exit, StoreError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| StoreError::Refused(format!("cannot read {}: {e}", file.display())))?;
    match crate::compile::text(&text, &file.display().to_string()) {
        Ok(valid) => {
            let v = store
                .push(
                    environment,
                    &text,
                    &valid.checksum,
                    Status::Validated,
                    actor,
                    message,
                    None,
                )
                .await?;
            println!("version {v}: VALIDATED ({})", valid.checksum);
            Ok(0)
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            let v = store
                .push(
                    environment,
                    &text,
                    "-",
                    Status::Rejected,
                    actor,
                    message,
                    Some(&errors.to_string()),
                )
                .await?;
            eprintln!(
                "version {v}: REJECTED ({} error(s)); it can never be activated",
                errors.0.len()
            );
            Ok(1)
        }
    }
}

pub async fn list(store: &Store, environment: &str) -> Result<Exit, StoreError> {
    let rollout = store.rollout(environment).await?;
    println!(
        "{:>7}  {:<11}  {:<20}  {:<12}  message",
        "version", "status", "created", "by"
    );
    for v in store.list(environment).await? {
        let canary = if rollout.canary_version == Some(v.version) {
            format!(
                " (canary on {})",
                rollout.canary_selector.as_deref().unwrap_or("")
            )
        } else {
            String::new()
        };
        println!(
            "{:>7}  {:<11}  {:<20}  {:<12}  {}{canary}",
            v.version,
            v.status.as_str(),
            when(v.created_at_ms),
            v.created_by,
            v.message
        );
    }
    Ok(0)
}

fn describe(v: &VersionInfo) -> String {
    let mut s = format!(
        "version:     {}\nenvironment: {}\nstatus:      {}\nchecksum:    {}\ncreated:     {} by {}\n",
        v.version,
        v.environment,
        v.status.as_str(),
        v.checksum,
        when(v.created_at_ms),
        v.created_by
    );
    if let Some(at) = v.activated_at_ms {
        s.push_str(&format!("activated:   {}\n", when(at)));
    }
    s.push_str(&format!("message:     {}\n", v.message));
    if let Some(r) = &v.reason {
        s.push_str(&format!("reason:      {}\n", r.trim_end()));
    }
    s
}

pub async fn show(store: &Store, version: i64) -> Result<Exit, StoreError> {
    let Some((info, document)) = store.get(version).await? else {
        return Err(StoreError::Refused(format!("no version {version}")));
    };
    print!("{}", describe(&info));
    println!("---");
    print!("{document}");
    if !document.ends_with('\n') {
        println!();
    }
    Ok(0)
}

/// A unified diff of the two documents (exit 0 either way).
pub async fn diff(store: &Store, a: i64, b: i64) -> Result<Exit, StoreError> {
    let doc = |v| async move {
        store
            .document(v)
            .await?
            .ok_or_else(|| StoreError::Refused(format!("no version {v}")))
    };
    let (old, new) = (doc(a).await?, doc(b).await?);
    print!("{}", unified_diff(&old, &new, a, b));
    Ok(0)
}

pub fn unified_diff(old: &str, new: &str, a: i64, b: i64) -> String {
    if old == new {
        return format!("versions {a} and {b} are identical\n");
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("version {a}"), &format!("version {b}"))
        .to_string()
}

pub struct ActivateOptions {
    pub canary: Option<String>,
    pub watch_s: u64,
    pub max_error_rate: f64,
    pub apply_timeout_s: u64,
    pub max_p99_ms: Option<f64>,
    pub checks: Vec<super::checks::Check>,
}

pub async fn activate(
    store: &Store,
    version: i64,
    options: &ActivateOptions,
    actor: &str,
) -> Result<Exit, StoreError> {
    // The document is checked again: a version stored by other means must still be valid.
    let Some((info, document)) = store.get(version).await? else {
        return Err(StoreError::Refused(format!("no version {version}")));
    };
    if let Err(errors) = crate::compile::text(&document, &format!("version {version}")) {
        return Err(StoreError::Refused(format!(
            "version {version} does not validate and cannot be activated:\n{errors}"
        )));
    }
    let Some(selector) = &options.canary else {
        let previous = store.activate(version, actor).await?;
        match previous {
            Some(p) if p != version => println!("version {version} is ACTIVE (was {p})"),
            _ => println!("version {version} is ACTIVE"),
        }
        return Ok(0);
    };
    if !selector.contains('=') {
        return Err(StoreError::Refused(format!(
            "--canary takes LABEL=VALUE, not `{selector}`"
        )));
    }
    let plan = CanaryPlan {
        version,
        environment: info.environment.clone(),
        selector: selector.clone(),
        watch: Duration::from_secs(options.watch_s),
        max_error_rate: options.max_error_rate,
        apply_timeout: Duration::from_secs(options.apply_timeout_s),
        max_p99_ms: options.max_p99_ms,
        checks: options.checks.clone(),
    };
    let outcome = canary::run(store, &plan, actor, &mut |line| println!("{line}")).await?;
    match outcome {
        Outcome::Promoted { requests, errors } => {
            println!(
                "canary healthy ({errors} 5xx of {requests} requests): version {version} promoted to every instance"
            );
            Ok(0)
        }
        Outcome::RolledBack { reason } => {
            println!("canary rolled back: {reason}");
            println!(
                "version {version} is ROLLED_BACK; every instance stays on the active version"
            );
            Ok(1)
        }
    }
}

pub async fn rollback(store: &Store, environment: &str, actor: &str) -> Result<Exit, StoreError> {
    let (from, to) = store.rollback(environment, actor).await?;
    println!("rolled back: version {to} is ACTIVE, version {from} is ROLLED_BACK");
    Ok(0)
}

/// Which instance runs which version; who is behind, failing or silent.
pub async fn status(store: &Store, environment: &str) -> Result<Exit, StoreError> {
    let rollout = store.rollout(environment).await?;
    let active = rollout
        .active_version
        .map_or("none".to_string(), |v| v.to_string());
    print!("environment {environment}: active version {active}");
    if let (Some(v), Some(sel)) = (rollout.canary_version, &rollout.canary_selector) {
        print!(", canary version {v} on {sel}");
    }
    println!();
    for r in store.route_rollouts(environment).await? {
        println!("{}", super::rollout::describe(&r));
    }
    println!(
        "{:<24}  {:<24}  {:>7}  {:>7}  state",
        "instance", "labels", "applied", "wanted"
    );
    let now = now_ms();
    let mut healthy = true;
    for i in store.instances(environment).await? {
        let labels = super::store::Labels::parse(&i.labels).unwrap_or_default();
        let wanted = rollout.version_for(&labels);
        let age_s = (now - i.heartbeat_ms).max(0) / 1000;
        let state = if now - i.heartbeat_ms > LIVE_HEARTBEAT_MS {
            format!("SILENT (no heartbeat for {age_s} s)")
        } else if let (Some(f), Some(e)) = (i.failed_version, &i.last_error) {
            format!(
                "FAILED to apply version {f}: {}",
                e.lines().next().unwrap_or("")
            )
        } else if i.applied_version != wanted {
            "BEHIND".to_string()
        } else if i.last_known_good {
            "ok (from last-known-good)".to_string()
        } else {
            "ok".to_string()
        };
        if !state.starts_with("ok") {
            healthy = false;
        }
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<24}  {:<24}  {:>7}  {:>7}  {state}",
            i.instance_id,
            i.labels,
            show(i.applied_version),
            show(wanted)
        );
    }
    Ok(if healthy { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines() {
        let d = unified_diff("a: 1\nb: 2\n", "a: 1\nb: 3\n", 1, 2);
        assert!(d.contains("--- version 1"));
        assert!(d.contains("+++ version 2"));
        assert!(d.contains("-b: 2"));
        assert!(d.contains("+b: 3"));
        assert!(unified_diff("x\n", "x\n", 1, 2).contains("identical"));
    }
}
