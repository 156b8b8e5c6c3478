//! `plans[]`: per-plan limits and quotas, applied by routes whose `rate_limits` say
//! `{ by_plan: true }`. A plan's limits are ordinary limits (named `plan/limit`, so each plan's
//! counters are its own and the headers say which plan's limit answered); its quotas are
//! calendar-window limits counted per consumer.

use super::algorithm::Algorithm;
use super::calendar::{Period, PeriodKind};
use super::key::KeyPart;
use super::spec::{build_limit, LimitSpec};
use super::Limiter;
use crate::config::{Diag, Located, Plan, Quota, QuotaPeriod, RateStore, Text};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One plan, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSpec {
    pub name: String,
    /// Limits then quotas, in file order.
    pub limits: Vec<LimitSpec>,
}

/// Every plan, and the one for consumers without a (known) plan.
#[derive(Debug, Clone, Default)]
pub struct PlanSpecs {
    pub plans: Vec<PlanSpec>,
    pub default: Option<usize>,
}

impl PlanSpecs {
    pub fn build(
        plans: &[Located<Plan>],
        default: Option<&Located<Text>>,
        redis: bool,
        diag: &mut Diag,
    ) -> Option<PlanSpecs> {
        let mark = diag.mark();
        let mut out = Vec::with_capacity(plans.len());
        for (i, p) in plans.iter().enumerate() {
            let key = format!("plans[{i}]");
            diag.kebab_name(&p.name, format!("{key}.name"));
            let mut limits = Vec::new();
            for (j, l) in p.limits.iter().enumerate() {
                let mut l = l.clone();
                if l.key.is_empty() {
                    l.value.key = vec![Located::new(Text::from("consumer"), l.line)];
                }
                let built = build_limit(&l, &format!("{key}.limits[{j}]"), redis, diag);
                if let Some(spec) = built {
                    let name = format!("{}/{}", p.name.value, spec.name);
                    limits.extend(spec.renamed(name));
                }
            }
            for (j, q) in p.quotas.iter().enumerate() {
                let qkey = format!("{key}.quotas[{j}]");
                limits.extend(build_quota(q, &p.name.value, &qkey, redis, diag));
            }
            diag.duplicates(
                "limit or quota",
                p.limits
                    .iter()
                    .map(|l| &l.name)
                    .chain(p.quotas.iter().map(|q| &q.name))
                    .map(|n| (n, key.clone())),
            );
            out.push(PlanSpec {
                name: p.name.value.to_string(),
                limits,
            });
        }
        diag.duplicates(
            "plan",
            plans
                .iter()
                .enumerate()
                .map(|(i, p)| (&p.name, format!("plans[{i}].name"))),
        );
        let default = match default {
            None => None,
            Some(d) => {
                let i = out.iter().position(|p| p.name == d.value.as_str());
                if i.is_none() {
                    diag.err(
                        d.line,
                        "defaults.plan",
                        format!("unknown plan `{}`", d.value),
                    );
                }
                i
            }
        };
        diag.ok_since(
            mark,
            PlanSpecs {
                plans: out,
                default,
            },
        )
    }

    /// Every plan's limits, in order (for the limiter registry).
    pub fn all_limits(&self) -> impl Iterator<Item = &LimitSpec> {
        self.plans.iter().flat_map(|p| p.limits.iter())
    }
}

fn build_quota(
    q: &Located<Quota>,
    plan: &str,
    key: &str,
    redis: bool,
    diag: &mut Diag,
) -> Option<LimitSpec> {
    let mark = diag.mark();
    diag.kebab_name(&q.name, format!("{key}.name"));
    if !(1..=1_000_000_000).contains(&q.limit.value) {
        diag.err(
            q.limit.line,
            format!("{key}.limit"),
            "must be between 1 and 1000000000",
        );
    }
    let kind = match q.period.value {
        QuotaPeriod::Hour => PeriodKind::Hour,
        QuotaPeriod::Day => PeriodKind::Day,
        QuotaPeriod::Month => PeriodKind::Month,
    };
    let line = |l: u32| if l == 0 { q.line } else { l };
    let period = match Period::new(kind, &q.time_zone.value) {
        Ok(p) => Some(p),
        Err(e) => {
            diag.err(line(q.time_zone.line), format!("{key}.time_zone"), e);
            None
        }
    };
    if q.store == RateStore::Redis && !redis {
        diag.err(
            q.line,
            format!("{key}.store"),
            "store: redis (the default for quotas) needs a top-level `redis` section",
        );
    }
    let flush = q.flush_interval_ms.value;
    if flush > 60_000 {
        diag.err(
            line(q.flush_interval_ms.line),
            format!("{key}.flush_interval_ms"),
            "must be between 0 and 60000",
        );
    }
    if flush > 0 && q.store != RateStore::Redis {
        diag.err(
            line(q.flush_interval_ms.line),
            format!("{key}.flush_interval_ms"),
            "flush_interval_ms batches counts into Redis: it needs store: redis",
        );
    }
    let period = period?;
    if !diag.clean_since(mark) {
        return None;
    }
    let algorithm = Algorithm::quota(q.limit.value, period);
    let name = format!("{plan}/{}", q.name.value);
    let policy_value = LimitSpec::policy_item(&name, &algorithm)?;
    Some(LimitSpec {
        name,
        algorithm,
        key: vec![KeyPart::Consumer],
        mode: q.mode,
        store: q.store,
        on_store_failure: q.on_store_failure,
        max_keys: 100_000,
        policy_value,
        flush_interval_ms: flush,
    })
}

/// A plan as requests see it.
pub struct LivePlan {
    pub name: Arc<str>,
    pub limiters: Vec<Arc<Limiter>>,
    /// Requests a `by_plan` route decided under this plan.
    pub requests: AtomicU64,
}

/// Every plan, compiled, shared by the routes that apply `{ by_plan: true }`.
pub struct PlanTable {
    pub plans: Vec<LivePlan>,
    pub default: Option<usize>,
    /// A consumer named a plan the config does not define (the default plan applied).
    pub unknown_plan: AtomicU64,
}

impl PlanTable {
    /// `limiters`: the registry's limiters for `specs.all_limits()`, in that order.
    pub fn new(specs: &PlanSpecs, limiters: &[Arc<Limiter>]) -> PlanTable {
        let mut at = 0;
        let plans = specs
            .plans
            .iter()
            .map(|p| {
                let ls = limiters[at..at + p.limits.len()].to_vec();
                at += p.limits.len();
                LivePlan {
                    name: p.name.as_str().into(),
                    limiters: ls,
                    requests: AtomicU64::new(0),
                }
            })
            .collect();
        PlanTable {
            plans,
            default: specs.default,
            unknown_plan: AtomicU64::new(0),
        }
    }

    /// The plan a consumer is on: its own when defined, else `defaults.plan` (None: no plan
    /// applies).
    pub fn plan_for(&self, plan: Option<&str>) -> Option<&LivePlan> {
        let named = plan.and_then(|n| self.plans.iter().find(|p| &*p.name == n));
        if named.is_none() && plan.is_some() {
            self.unknown_plan
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        named.or_else(|| self.default.map(|i| &self.plans[i]))
    }

    pub fn by_name(&self, name: &str) -> Option<&LivePlan> {
        self.plans.iter().find(|p| &*p.name == name)
    }
}
