//! `rate_limits[]`, `defaults.rate_limits` and each route's `rate_limits` in compiled form:
//! limits with their algorithm and key decided, and references resolved to positions.

use super::algorithm::Algorithm;
use super::key::KeyPart;
use crate::config::{
    Diag, Located, RateAlgorithm, RateLimit, RateMode, RateStore, StoreFailure, Text,
};
use http::HeaderValue;
use std::collections::BTreeSet;

/// One named limit, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSpec {
    pub name: String,
    pub algorithm: Algorithm,
    pub key: Vec<KeyPart>,
    pub mode: RateMode,
    pub store: RateStore,
    pub on_store_failure: StoreFailure,
    pub max_keys: usize,
    /// This limit's `RateLimit-Policy` item, e.g. `"per-tenant";q=100;w=60`.
    pub policy_value: HeaderValue,
    /// Quotas only: 0 decides every request in Redis; above 0 requests are counted locally
    /// and added to Redis this often.
    pub flush_interval_ms: u64,
}

impl LimitSpec {
    /// The `RateLimit-Policy` item of a limit named `name` (None: the name is not usable in a
    /// header).
    pub fn policy_item(name: &str, algorithm: &Algorithm) -> Option<HeaderValue> {
        let (q, w) = algorithm.policy();
        HeaderValue::from_str(&format!("\"{name}\";q={q};w={w}")).ok()
    }

    /// The same limit under another name (a plan's limits are named `plan/limit`).
    pub fn renamed(mut self, name: String) -> Option<LimitSpec> {
        self.policy_value = Self::policy_item(&name, &self.algorithm)?;
        self.name = name;
        Some(self)
    }
}

/// Every limit, and the ones `defaults.rate_limits` applies to every route (positions in
/// `limits`).
#[derive(Debug, Clone, Default)]
pub struct RateLimitSpecs {
    pub limits: Vec<LimitSpec>,
    pub defaults: Vec<usize>,
}

impl RateLimitSpecs {
    /// Builds `rate_limits[]`, then resolves `defaults.rate_limits`. `redis` says whether the
    /// top-level `redis` section exists (a `store: redis` limit needs it).
    pub fn build(
        limits: &[Located<RateLimit>],
        defaults: &[Located<Text>],
        redis: bool,
        diag: &mut Diag,
    ) -> Option<RateLimitSpecs> {
        let built: Vec<Option<LimitSpec>> = limits
            .iter()
            .enumerate()
            .map(|(i, l)| build_limit(l, &format!("rate_limits[{i}]"), redis, diag))
            .collect();
        diag.duplicates(
            "rate limit",
            limits
                .iter()
                .enumerate()
                .map(|(i, l)| (&l.name, format!("rate_limits[{i}].name"))),
        );
        let defaults = resolve(limits, defaults, "defaults.rate_limits", &[], diag);
        Some(RateLimitSpecs {
            limits: built.into_iter().collect::<Option<_>>()?,
            defaults: defaults?,
        })
    }
}

/// A list of limit names (a route's, or the defaults') as positions in `limits`: each defined,
/// none twice, none already applied by `defaults`.
pub fn resolve(
    limits: &[Located<RateLimit>],
    names: &[Located<Text>],
    key: &str,
    defaults: &[Located<Text>],
    diag: &mut Diag,
) -> Option<Vec<usize>> {
    let mark = diag.mark();
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        match limits.iter().position(|l| l.name.value == n.value) {
            None => diag.err(n.line, key, format!("unknown rate limit `{}`", n.value)),
            Some(_) if defaults.iter().any(|d| d.value == n.value) => diag.err(
                n.line,
                key,
                format!(
                    "`{}` is already applied to every route by defaults.rate_limits",
                    n.value
                ),
            ),
            Some(_) if !seen.insert(&*n.value.0) => {
                diag.err(n.line, key, format!("`{}` is listed twice", n.value))
            }
            Some(i) => out.push(i),
        }
    }
    diag.ok_since(mark, out)
}

pub fn build_limit(
    l: &Located<RateLimit>,
    key: &str,
    redis: bool,
    diag: &mut Diag,
) -> Option<LimitSpec> {
    let mark = diag.mark();
    diag.kebab_name(&l.name, format!("{key}.name"));
    let bucket = l.algorithm.value == RateAlgorithm::TokenBucket;
    let token_bucket_fields = [
        ("capacity", l.capacity.as_ref().map(|v| v.line)),
        (
            "refill_per_second",
            l.refill_per_second.as_ref().map(|v| v.line),
        ),
    ];
    let window_fields = [
        ("limit", l.limit.as_ref().map(|v| v.line)),
        ("window_s", l.window_s.as_ref().map(|v| v.line)),
    ];
    let (want, other, algo) = if bucket {
        (token_bucket_fields, window_fields, "token_bucket")
    } else {
        (window_fields, token_bucket_fields, "sliding_window")
    };
    for (field, line) in want {
        if line.is_none() {
            diag.err(
                l.algorithm.line,
                format!("{key}.{field}"),
                format!("{algo} needs `{field}`"),
            );
        }
    }
    for (field, line) in other {
        if let Some(line) = line {
            diag.err(
                line,
                format!("{key}.{field}"),
                format!("`{field}` does not apply to {algo}"),
            );
        }
    }
    for v in [&l.capacity, &l.limit].into_iter().flatten() {
        if !(1..=1_000_000_000).contains(&v.value) {
            diag.err(v.line, key, "must be between 1 and 1000000000");
        }
    }
    if let Some(r) = &l.refill_per_second {
        if !(r.value > 0.0 && r.value <= 1_000_000.0) {
            diag.err(
                r.line,
                format!("{key}.refill_per_second"),
                "must be above 0 and at most 1000000",
            );
        }
    }
    if let Some(w) = &l.window_s {
        if !(1..=86_400).contains(&w.value) {
            diag.err(
                w.line,
                format!("{key}.window_s"),
                "must be between 1 and 86400",
            );
        }
    }
    let mut parts = Vec::new();
    let mut seen = BTreeSet::new();
    for k in &l.key {
        match KeyPart::parse(k) {
            Err(e) => diag.err(k.line, format!("{key}.key"), e),
            Ok(_) if !seen.insert(&*k.value.0) => diag.err(
                k.line,
                format!("{key}.key"),
                format!("`{}` is listed twice", k.value),
            ),
            Ok(part) => parts.push(part),
        }
    }
    if !(1..=10_000_000).contains(&l.max_keys) {
        diag.err(
            l.name.line,
            format!("{key}.max_keys"),
            "must be between 1 and 10000000",
        );
    }
    if l.store == RateStore::Redis && !redis {
        diag.err(
            l.name.line,
            format!("{key}.store"),
            "store: redis needs a top-level `redis` section",
        );
    }
    if !diag.clean_since(mark) {
        return None;
    }
    let algorithm = match (&l.capacity, &l.refill_per_second, &l.limit, &l.window_s) {
        (Some(c), Some(r), None, None) => Algorithm::token_bucket(c.value, r.value),
        (None, None, Some(n), Some(w)) => Algorithm::sliding_window(n.value, w.value),
        // The checks above allow exactly one of the two shapes.
        _ => return None,
    };
    let Some(policy_value) = LimitSpec::policy_item(&l.name.value, &algorithm) else {
        diag.err(l.name.line, format!("{key}.name"), "not usable in a header");
        return None;
    };
    Some(LimitSpec {
        name: l.name.value.to_string(),
        algorithm,
        key: parts,
        mode: l.mode,
        store: l.store,
        on_store_failure: l.on_store_failure,
        max_keys: l.max_keys,
        policy_value,
        flush_interval_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        rate_limits: Vec<Located<RateLimit>>,
        #[serde(default)]
        defaults: Vec<Located<Text>>,
    }

    fn build(yaml: &str) -> Result<RateLimitSpecs, Vec<(u32, String, String)>> {
        crate::config::diag::build_yaml(yaml, |d: &Doc, diag| {
            RateLimitSpecs::build(&d.rate_limits, &d.defaults, false, diag)
        })
    }

    #[test]
    fn limits_compile_to_their_algorithm_and_policy() {
        let s = build("rate_limits:\n  - { name: a, algorithm: token_bucket, capacity: 10, refill_per_second: 5 }\n  - { name: b, algorithm: sliding_window, limit: 100, window_s: 60, key: [tenant, \"header:x-k\"] }\ndefaults: [b]\n").unwrap();
        assert_eq!(
            s.limits[0].algorithm,
            Algorithm::TokenBucket {
                capacity: 10,
                interval_us: 200_000
            }
        );
        assert_eq!(s.limits[1].policy_value, "\"b\";q=100;w=60");
        assert_eq!(s.limits[1].key.len(), 2);
        assert_eq!(s.defaults, vec![1]);
    }

    #[test]
    fn wrong_fields_for_the_algorithm_are_named() {
        let e = build("rate_limits:\n  - name: a\n    algorithm: token_bucket\n    limit: 5\n")
            .unwrap_err();
        assert_eq!(
            e,
            vec![
                (
                    3,
                    "rate_limits[0].capacity".into(),
                    "token_bucket needs `capacity`".into()
                ),
                (
                    3,
                    "rate_limits[0].refill_per_second".into(),
                    "token_bucket needs `refill_per_second`".into()
                ),
                (
                    4,
                    "rate_limits[0].limit".into(),
                    "`limit` does not apply to token_bucket".into()
                ),
            ]
        );
    }

    #[test]
    fn keys_stores_and_references() {
        let e = build("rate_limits:\n  - name: a\n    algorithm: sliding_window\n    limit: 1\n    window_s: 1\n    key: [route, route, sub]\n    store: redis\ndefaults: [a, a, zz]\n").unwrap_err();
        let got: Vec<(u32, &str)> = e.iter().map(|e| (e.0, e.2.as_str())).collect();
        assert_eq!(
            got,
            [
                (2, "store: redis needs a top-level `redis` section"),
                (6, "`route` is listed twice"),
                (6, "unknown key part `sub` (tenant, subject, api_key, consumer, client_ip, route, header:NAME)"),
                (8, "`a` is listed twice"),
                (8, "unknown rate limit `zz`"),
            ]
        );
    }
}
