//! `portcullis rollout ROUTE --to UPSTREAM --steps 5,25,50,75,100`: moves a route's traffic to a
//! new upstream in steps. Each step is a new config version in the store — pushed, validated and
//! activated, so every step is audited and can be rolled back by hand — that sets the route's
//! `split` weights. Between steps the new upstream's failed-try ratio (5xx or no answer) and p99
//! are watched from the fleet's heartbeats, beside the stable upstream's; a breach (or a failed
//! synthetic check) sets the weight back to 0 in a new version and the rollout ends with the
//! reason. The state is kept in the store (`rollout status`, `config status`): a rollout whose
//! process stopped shows as interrupted, `--pause` stops one at its next check, `--resume`
//! continues it from its last step.

use super::canary::LIVE_HEARTBEAT_MS;
use super::checks::Check;
use super::stats::{p99_ms, HeartbeatStats, UpstreamStats};
use super::store::{now_ms, RouteRollout, Status, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// A RUNNING rollout not touched for this long was interrupted (its process is gone).
pub const INTERRUPTED_AFTER_MS: i64 = 10_000;
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub route: String,
    pub to: String,
    pub steps: Vec<u32>,
    pub interval_s: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    /// A step is judged once the new upstream had this many tries on it.
    pub min_requests: u64,
    pub apply_timeout_s: u64,
    #[serde(skip)]
    pub checks: Vec<Check>,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Done,
    RolledBack(String),
    /// Stopped where it was (paused, too little traffic): the weight stays.
    Stopped(String),
}

/// Parses `5,25,50,75,100`: rising percentages from 1 to 100.
pub fn parse_steps(s: &str) -> Result<Vec<u32>, String> {
    let steps: Vec<u32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{p}` is not a percentage"))
        })
        .collect::<Result<_, _>>()?;
    if steps.is_empty() || steps.iter().any(|p| *p == 0 || *p > 100) {
        return Err("steps are percentages from 1 to 100".into());
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err("steps must rise".into());
    }
    Ok(steps)
}

/// The route's action in `text` replaced so that `to` gets `percent` of its traffic and `from`
/// the rest: `upstream: X` at 0 and 100, a flow-style `split` between. Only the lines of the
/// action (and a `split_key`, which a single upstream cannot have) change; comments and the
/// rest of the document stay as written.
pub fn set_weights(
    text: &str,
    route: &str,
    from: &str,
    to: &str,
    percent: u32,
) -> Result<String, String> {
    let doc = crate::config::parse_str(text, "active version").map_err(|e| e.to_string())?;
    let r = doc
        .config
        .routes
        .iter()
        .find(|r| r.name.value.as_str() == route)
        .ok_or_else(|| format!("the active version has no route `{route}`"))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // 1-based line of the action's key and the last line of its value.
    let (first, last) = if let Some(u) = &r.upstream {
        (u.line as usize, u.line as usize)
    } else if let Some(split) = &r.split {
        let key_line = (1..=split.line as usize)
            .rev()
            .find(|&l| {
                lines[l - 1]
                    .trim_start()
                    .trim_start_matches("- ")
                    .starts_with("split:")
            })
            .ok_or("cannot find the route's `split:` line")?;
        (key_line, block_end(&lines, key_line))
    } else {
        return Err(format!("route `{route}` has no upstream or split to move"));
    };
    let key_text = &lines[first - 1];
    let indent = key_text.len() - key_text.trim_start().len();
    let dash = if key_text.trim_start().starts_with("- ") {
        "- "
    } else {
        ""
    };
    if !key_text
        .trim_start()
        .trim_start_matches("- ")
        .starts_with("upstream:")
        && !key_text
            .trim_start()
            .trim_start_matches("- ")
            .starts_with("split:")
    {
        return Err(format!(
            "route `{route}`: its action is not on its own line (write `upstream:` or `split:` as a block key)"
        ));
    }
    let action = match percent {
        0 => format!("upstream: {from}"),
        100 => format!("upstream: {to}"),
        p => format!(
            "split: [{{ upstream: {from}, weight: {} }}, {{ upstream: {to}, weight: {} }}]",
            10_000 - p * 100,
            p * 100
        ),
    };
    let replacement = format!("{}{dash}{action}", " ".repeat(indent));
    lines.splice(first - 1..last, std::iter::once(replacement));
    if percent == 0 || percent == 100 {
        if let Some(k) = &r.split_key {
            // Lines after the action moved up by the lines it lost.
            let removed = last - first;
            let line = if (k.line as usize) > last {
                k.line as usize - removed
            } else {
                k.line as usize
            };
            if lines[line - 1].trim_start().starts_with("split_key:") {
                lines.remove(line - 1);
            }
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// The last line of a block value whose key is on `key_line` (1-based): the lines after it that
/// are blank, comments, more indented, or sequence items at the key's own indentation.
fn block_end(lines: &[String], key_line: usize) -> usize {
    let key = &lines[key_line - 1];
    let key_indent = key.len() - key.trim_start().len();
    let mut last = key_line;
    for (i, l) in lines.iter().enumerate().skip(key_line) {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if indent > key_indent || (indent == key_indent && t.starts_with("- ")) {
            last = i + 1;
        } else {
            break;
        }
    }
    last
}

/// The route's current upstreams: (stable, share of `to` in percent).
fn current_share(text: &str, route: &str, to: &str) -> Result<(String, u32), String> {
    let doc = crate::config::parse_str(text, "active version").map_err(|e| e.to_string())?;
    let r = doc
        .config
        .routes
        .iter()
        .find(|r| r.name.value.as_str() == route)
        .ok_or_else(|| format!("the active version has no route `{route}`"))?;
    if let Some(u) = &r.upstream {
        return Ok(if u.value.as_str() == to {
            (to.to_string(), 100)
        } else {
            (u.value.as_str().to_string(), 0)
        });
    }
    let split = r
        .split
        .as_ref()
        .ok_or_else(|| format!("route `{route}` has no upstream or split to move"))?;
    let others: Vec<&str> = split
        .iter()
        .map(|e| e.upstream.value.as_str())
        .filter(|u| *u != to)
        .collect();
    if others.len() != 1 {
        return Err(format!(
            "route `{route}` splits between {} other upstreams; a rollout moves traffic between two",
            others.len()
        ));
    }
    let share = split
        .iter()
        .filter(|e| e.upstream.value.as_str() == to)
        .map(|e| e.weight / 100)
        .sum();
    Ok((others[0].to_string(), share))
}

struct Run<'a> {
    store: &'a Store,
    environment: &'a str,
    plan: &'a Plan,
    from: String,
    actor: &'a str,
}

impl Run<'_> {
    /// Pushes and activates the active document with `percent` to the new upstream.
    async fn set(&self, percent: u32, why: &str) -> Result<i64, StoreError> {
        let rollout = self.store.rollout(self.environment).await?;
        let active = rollout
            .active_version
            .ok_or_else(|| StoreError::Refused("the environment has no active version".into()))?;
        let text = self
            .store
            .document(active)
            .await?
            .ok_or_else(|| StoreError::Refused(format!("version {active} is missing")))?;
        let edited = set_weights(&text, &self.plan.route, &self.from, &self.plan.to, percent)
            .map_err(StoreError::Refused)?;
        let valid = crate::compile::text(&edited, "rollout step").map_err(|e| {
            StoreError::Refused(format!(
                "the step's version does not validate (nothing was changed):\n{e}"
            ))
        })?;
        let version = self
            .store
            .push(
                self.environment,
                &edited,
                &valid.checksum,
                Status::Validated,
                self.actor,
                &format!(
                    "rollout {}: {percent}% to {} ({why})",
                    self.plan.route, self.plan.to
                ),
                None,
            )
            .await?;
        self.store.activate(version, self.actor).await?;
        Ok(version)
    }

    async fn record(
        &self,
        percent: u32,
        version: Option<i64>,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        self.store
            .update_route_rollout(
                self.environment,
                &self.plan.route,
                i64::from(percent),
                version,
                state,
                reason,
            )
            .await
    }

    async fn rollback(
        &self,
        reason: String,
        say: &mut dyn FnMut(String),
    ) -> Result<Outcome, StoreError> {
        let v = self.set(0, "rolled back").await?;
        say(format!(
            "rolled back: version {v} sends 0% to {}",
            self.plan.to
        ));
        self.record(0, Some(v), "ROLLED_BACK", Some(&reason))
            .await?;
        Ok(Outcome::RolledBack(reason))
    }

    /// Watches one step: `Ok(None)` passed, `Ok(Some(outcome))` ended the rollout.
    async fn watch(
        &self,
        percent: u32,
        version: i64,
        say: &mut dyn FnMut(String),
    ) -> Result<Option<Outcome>, StoreError> {
        let plan = self.plan;
        // Every live instance applies the version first; its counters then are the baseline.
        let apply_deadline =
            tokio::time::Instant::now() + Duration::from_secs(plan.apply_timeout_s);
        let mut baseline: HashMap<String, HeartbeatStats> = HashMap::new();
        let mut watch_until = None;
        let mut extended = 0;
        loop {
            let running = self
                .store
                .touch_route_rollout(
                    self.environment,
                    &plan.route,
                    i64::from(percent),
                    Some(version),
                )
                .await?;
            if !running {
                return Ok(Some(Outcome::Stopped(format!(
                    "paused by the operator at {percent}%"
                ))));
            }
            let now_wall = now_ms();
            let live: Vec<_> = self
                .store
                .instances(self.environment)
                .await?
                .into_iter()
                .filter(|i| now_wall - i.heartbeat_ms <= LIVE_HEARTBEAT_MS)
                .collect();
            if let Some(bad) = live.iter().find(|i| i.failed_version == Some(version)) {
                let why = bad.last_error.clone().unwrap_or_default();
                return self
                    .rollback(
                        format!(
                            "instance {} could not apply version {version}: {why}",
                            bad.instance_id
                        ),
                        say,
                    )
                    .await
                    .map(Some);
            }
            for i in &live {
                if i.applied_version == Some(version) {
                    baseline
                        .entry(i.instance_id.clone())
                        .or_insert_with(|| HeartbeatStats::parse(i.stats.as_deref()));
                }
            }
            let mut since = HeartbeatStats::default();
            for i in &live {
                if let Some(base) = baseline.get(&i.instance_id) {
                    since.add(&HeartbeatStats::parse(i.stats.as_deref()).since(base));
                }
            }
            let new = since.upstreams.get(&plan.to).cloned().unwrap_or_default();
            let stable = since.upstreams.get(&self.from).cloned().unwrap_or_default();
            if let Some(reason) = breach(plan, &self.from, &new, &stable) {
                say(format!("{percent}%: {reason}"));
                return self.rollback(reason, say).await.map(Some);
            }
            let now = tokio::time::Instant::now();
            match watch_until {
                None if !live.is_empty() && baseline.len() == live.len() => {
                    say(format!(
                        "{percent}%: version {version} applied on {} instance(s); watching for {} s",
                        live.len(),
                        plan.interval_s
                    ));
                    if !plan.checks.is_empty() {
                        let instances: Vec<_> = live.iter().collect();
                        if let Err(why) =
                            super::checks::run_on_instances(&plan.checks, &instances).await
                        {
                            return self.rollback(why, say).await.map(Some);
                        }
                    }
                    watch_until = Some(now + Duration::from_secs(plan.interval_s));
                }
                None if now >= apply_deadline => {
                    return self
                        .rollback(
                            format!(
                                "not every live instance applied version {version} within {} s",
                                plan.apply_timeout_s
                            ),
                            say,
                        )
                        .await
                        .map(Some);
                }
                Some(until) if now >= until => {
                    if new.tries >= plan.min_requests {
                        say(format!(
                            "{percent}%: {} {}; {} {}",
                            plan.to,
                            new.describe(),
                            self.from,
                            stable.describe()
                        ));
                        return Ok(None);
                    }
                    // Too little traffic to judge: wait up to two more intervals, then stop
                    // where it is (the weight stays; `--resume` continues).
                    extended += 1;
                    if extended > 2 {
                        return Ok(Some(Outcome::Stopped(format!(
                            "too little traffic to judge {percent}%: {} tries on {} (need {})",
                            new.tries, plan.to, plan.min_requests
                        ))));
                    }
                    watch_until = Some(now + Duration::from_secs(plan.interval_s));
                }
                _ => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The gate: the new upstream's failed-try ratio and p99 (judged once it had `min_requests`).
fn breach(plan: &Plan, from: &str, new: &UpstreamStats, stable: &UpstreamStats) -> Option<String> {
    if new.tries < plan.min_requests {
        return None;
    }
    let ratio = new.error_ratio();
    if ratio > plan.max_error_rate {
        return Some(format!(
            "{} failed-try ratio {ratio:.4} ({} of {} tries) is above {} (stable {}: {:.4})",
            plan.to,
            new.failed,
            new.tries,
            plan.max_error_rate,
            from,
            stable.error_ratio()
        ));
    }
    if let (Some(max), Some(p99)) = (plan.max_p99_ms, p99_ms(&new.latency)) {
        if p99 > max {
            return Some(format!(
                "{} p99 {p99:.0} ms is above {max} ms (stable {from}: {})",
                plan.to,
                p99_ms(&stable.latency).map_or("-".into(), |p| format!("{p:.0} ms"))
            ));
        }
    }
    None
}

/// Runs (or resumes) a rollout to its end, printing progress with `say`.
pub async fn run(
    store: &Store,
    environment: &str,
    plan: &Plan,
    actor: &str,
    say: &mut dyn FnMut(String),
) -> Result<Outcome, StoreError> {
    let rollout = store.rollout(environment).await?;
    if rollout.canary_version.is_some() {
        return Err(StoreError::Refused(
            "a config canary is in progress; finish it first".into(),
        ));
    }
    let active = rollout.active_version.ok_or_else(|| {
        StoreError::Refused(format!("environment {environment} has no active version"))
    })?;
    let text = store
        .document(active)
        .await?
        .ok_or_else(|| StoreError::Refused(format!("version {active} is missing")))?;
    let (from, current) =
        current_share(&text, &plan.route, &plan.to).map_err(StoreError::Refused)?;
    if from == plan.to {
        return Err(StoreError::Refused(format!(
            "route {} already sends everything to {}",
            plan.route, plan.to
        )));
    }
    store
        .begin_route_rollout(
            &RouteRollout {
                environment: environment.to_string(),
                route: plan.route.clone(),
                from_upstream: from.clone(),
                to_upstream: plan.to.clone(),
                plan: serde_json::to_string(plan).unwrap_or_default(),
                percent: i64::from(current),
                state: "RUNNING".into(),
                reason: None,
                version: Some(active),
                started_at_ms: now_ms(),
                updated_at_ms: now_ms(),
            },
            INTERRUPTED_AFTER_MS,
        )
        .await?;
    let run = Run {
        store,
        environment,
        plan,
        from,
        actor,
    };
    let result = async {
        for (i, &step) in plan.steps.iter().enumerate() {
            if step <= current {
                continue;
            }
            let v = run
                .set(step, &format!("step {} of {}", i + 1, plan.steps.len()))
                .await?;
            say(format!(
                "step {} of {}: version {v} sends {step}% to {}",
                i + 1,
                plan.steps.len(),
                plan.to
            ));
            if let Some(end) = run.watch(step, v, say).await? {
                return Ok(end);
            }
        }
        Ok::<_, StoreError>(Outcome::Done)
    }
    .await;
    let last = store
        .route_rollouts(environment)
        .await?
        .into_iter()
        .find(|r| r.route == plan.route);
    let (percent, version) = last.map_or((0, None), |r| (r.percent as u32, r.version));
    match &result {
        Ok(Outcome::Done) => run.record(percent, version, "DONE", None).await?,
        Ok(Outcome::Stopped(why)) => run.record(percent, version, "PAUSED", Some(why)).await?,
        Ok(Outcome::RolledBack(_)) => {}
        Err(e) => {
            run.record(percent, version, "FAILED", Some(&e.to_string()))
                .await?
        }
    }
    result
}

/// `rollout status` / `config status`: one line per route rollout.
pub fn describe(r: &RouteRollout) -> String {
    let state = if r.state == "RUNNING" && now_ms() - r.updated_at_ms > INTERRUPTED_AFTER_MS {
        format!(
            "INTERRUPTED (RUNNING, but no progress for {} s: its process stopped; run it again or --resume)",
            (now_ms() - r.updated_at_ms) / 1000
        )
    } else {
        r.state.clone()
    };
    let mut s = format!(
        "rollout {}: {} → {} at {}% ({state}), version {}",
        r.route,
        r.from_upstream,
        r.to_upstream,
        r.percent,
        r.version.map_or("-".into(), |v| v.to_string())
    );
    if let Some(why) = &r.reason {
        s.push_str(&format!("; {why}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "listeners: [{ name: public, address: \"127.0.0.1:8080\" }]
admin: { address: \"127.0.0.1:9901\" }
defaults: { auth: none }
upstreams:
  - { name: v1, targets: [{ address: \"127.0.0.1:9001\" }] }
  - { name: v2, targets: [{ address: \"127.0.0.1:9002\" }] }
routes:
  - name: other
    match: { path: { prefix: /o } }
    upstream: v1
  - name: orders
    match: { path: { prefix: / } }
    # the current upstream
    upstream: v1
    timeout_ms: 1000
";

    #[test]
    fn weights_move_on_the_route_only_and_stay_valid() {
        let five = set_weights(DOC, "orders", "v1", "v2", 5).unwrap();
        assert!(five.contains(
            "    split: [{ upstream: v1, weight: 9500 }, { upstream: v2, weight: 500 }]\n    timeout_ms: 1000"
        ), "{five}");
        assert!(five.contains("    # the current upstream\n"));
        assert!(five
            .contains("  - name: other\n    match: { path: { prefix: /o } }\n    upstream: v1\n"));
        crate::compile::text(&five, "t").unwrap();
        assert_eq!(
            current_share(&five, "orders", "v2").unwrap(),
            ("v1".into(), 5)
        );
        let fifty = set_weights(&five, "orders", "v1", "v2", 50).unwrap();
        assert_eq!(
            current_share(&fifty, "orders", "v2").unwrap(),
            ("v1".into(), 50)
        );
        let all = set_weights(&fifty, "orders", "v1", "v2", 100).unwrap();
        assert!(
            all.contains("    upstream: v2\n    timeout_ms: 1000"),
            "{all}"
        );
        let back = set_weights(&all, "orders", "v1", "v2", 0).unwrap();
        assert_eq!(back, DOC);
    }

    #[test]
    fn a_block_split_with_a_key_is_replaced_whole() {
        let doc = DOC.replace(
            "    upstream: v1\n    timeout_ms",
            "    split:\n      - upstream: v1\n        weight: 9000\n      # canary\n      - { upstream: v2, weight: 1000 }\n    split_key: header:x-user\n    timeout_ms",
        );
        crate::compile::text(&doc, "t").unwrap();
        assert_eq!(
            current_share(&doc, "orders", "v2").unwrap(),
            ("v1".into(), 10)
        );
        let t = set_weights(&doc, "orders", "v1", "v2", 25).unwrap();
        assert!(t.contains("weight: 7500 }, { upstream: v2, weight: 2500 }]\n    split_key: header:x-user\n    timeout_ms"), "{t}");
        let all = set_weights(&doc, "orders", "v1", "v2", 100).unwrap();
        assert!(
            all.contains("    upstream: v2\n    timeout_ms: 1000"),
            "{all}"
        );
        crate::compile::text(&all, "t").unwrap();
    }

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_steps("5,25,50,75,100").unwrap(),
            vec![5, 25, 50, 75, 100]
        );
        assert!(parse_steps("5,5").is_err());
        assert!(parse_steps("0,10").is_err());
        assert!(parse_steps("50,101").is_err());
        assert!(parse_steps("a").is_err());
    }
}
