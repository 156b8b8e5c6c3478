//! Checks that span sections: what one section may refer to in another (upstreams, the shared
//! Redis server, mTLS listeners), and route shadowing.

use super::model::Config;
use super::Diag;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What one section refers to in others. Positions are file order; auth providers and rate
/// limits are looked up by their own modules in the model, by position.
#[derive(Debug, Default)]
pub struct Names<'c> {
    pub upstreams: BTreeMap<&'c str, usize>,
    /// A top-level `redis` section exists.
    pub redis: bool,
    /// Some listener verifies client certificates (`tls.client_auth`).
    pub mtls_listener: bool,
    /// A `plans` section exists.
    pub plans: bool,
    /// `consumers[].id`.
    pub consumers: BTreeSet<&'c str>,
    /// A `consumer_store` section exists.
    pub consumer_store: bool,
}

impl<'c> Names<'c> {
    pub fn of(config: &'c Config) -> Names<'c> {
        let mut upstreams = BTreeMap::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            // The first definition wins; a duplicate is reported by the upstreams' builder.
            upstreams.entry(u.name.value.0.as_str()).or_insert(i);
        }
        Names {
            upstreams,
            redis: config.redis.is_some(),
            mtls_listener: config
                .listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some())),
            plans: !config.plans.is_empty(),
            consumers: config
                .consumers
                .iter()
                .map(|c| c.id.value.0.as_str())
                .collect(),
            consumer_store: config.consumer_store.is_some(),
        }
    }
}

/// Reports pairs of routes that no request can tell apart: on the hosts they share, with the
/// same path match, header and query predicates and priority and overlapping methods, the one later in
/// the file can never be chosen for those methods.
pub fn check_shadowing(config: &Config, diag: &mut Diag) {
    struct Key {
        hosts: BTreeSet<String>,
        path: String,
        headers: BTreeSet<String>,
        query: BTreeSet<String>,
        priority: i32,
        methods: Option<BTreeSet<String>>,
    }
    let keys: Vec<Key> = config
        .routes
        .iter()
        .map(|r| {
            let m = &r.matcher;
            let path = match (&m.path.exact, &m.path.prefix, &m.path.regex) {
                (Some(e), _, _) => format!("exact:{e}"),
                (_, Some(p), _) => format!("prefix:{}", p.trim_end_matches('/')),
                (_, _, Some(re)) => format!("regex:{re}"),
                _ => String::new(),
            };
            Key {
                hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                path,
                headers: m
                    .headers
                    .iter()
                    .map(|h| {
                        format!(
                            "{}={:?}/{:?}",
                            h.name.to_ascii_lowercase(),
                            h.value.value.as_ref().map(|v| &v.0),
                            h.regex.as_ref().map(|v| &v.0)
                        )
                    })
                    .collect(),
                query: m
                    .query
                    .iter()
                    .map(|q| {
                        format!(
                            "{}={:?}/{:?}",
                            q.value.name.0,
                            q.value.value.as_ref().map(|v| &v.0),
                            q.value.regex.as_ref().map(|v| &v.0)
                        )
                    })
                    .collect(),
                priority: r.priority,
                methods: m
                    .methods
                    .as_ref()
                    .map(|ms| ms.iter().map(|s| s.0.clone()).collect()),
            }
        })
        .collect();
    // Only routes with the same path match, predicates and priority can shadow each other:
    // grouped by those, each route is compared with the earlier ones of its group (a large
    // table is not compared pair by pair).
    type Group<'k> = (&'k str, &'k BTreeSet<String>, &'k BTreeSet<String>, i32);
    let mut groups: HashMap<Group<'_>, Vec<usize>> = HashMap::new();
    for (j, b) in keys.iter().enumerate() {
        let group = groups
            .entry((b.path.as_str(), &b.headers, &b.query, b.priority))
            .or_default();
        for &i in group.iter() {
            let a = &keys[i];
            let hosts_overlap = (a.hosts.is_empty() && b.hosts.is_empty())
                || a.hosts.intersection(&b.hosts).next().is_some();
            let methods_overlap = match (&a.methods, &b.methods) {
                (None, None) => true,
                (Some(x), Some(y)) => x.intersection(y).next().is_some(),
                // A route that lists methods is more specific than one that does not: it wins
                // for its methods, and the other still gets the rest.
                _ => false,
            };
            if hosts_overlap
                && methods_overlap
                && a.path == b.path
                && a.headers == b.headers
                && a.query == b.query
                && a.priority == b.priority
            {
                let first = &config.routes[i];
                let second = &config.routes[j];
                diag.err(
                    second.line,
                    format!("routes[{j}]"),
                    format!(
                        "route `{}` is shadowed by route `{}` (line {}): same hosts, path match, \
                         header and query predicates and priority with overlapping methods, so \
                         file order alone would decide; give one a different priority, methods, \
                         headers or query predicates",
                        second.name.value, first.name.value, first.line
                    ),
                );
            }
        }
        group.push(j);
    }
}

/// The literal start of an anchored regex (`^/v1/items/[0-9]+` → `/v1/items/`): every path it
/// matches begins with it. None when the regex is not anchored.
fn anchored_literal(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                // An escaped punctuation character is itself.
                Some(&n) if n.is_ascii_punctuation() => {
                    out.push(n);
                    chars.next();
                }
                _ => break,
            },
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => {
                // A quantifier applies to the last literal character: it is not certain.
                if matches!(c, '*' | '?' | '{') {
                    out.pop();
                }
                break;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// Reports regex routes that can never be chosen: prefix routes are tried before regex routes
/// in a host tier, so a prefix route without methods or header and query predicates, on the
/// same hosts, that covers every path the regex can match always wins first.
pub fn check_unreachable_regex(config: &Config, diag: &mut Diag) {
    let hosts = |r: &super::model::Route| -> BTreeSet<String> {
        r.matcher
            .hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect()
    };
    for (j, r) in config.routes.iter().enumerate() {
        let Some(re) = &r.matcher.path.regex else {
            continue;
        };
        let Some(literal) = anchored_literal(re) else {
            continue;
        };
        let r_hosts = hosts(r);
        let winner = config.routes.iter().find(|p| {
            let m = &p.matcher;
            let Some(prefix) = &m.path.prefix else {
                return false;
            };
            let prefix = prefix.trim_end_matches('/');
            let covers = prefix.is_empty() || literal.starts_with(&format!("{prefix}/"));
            let p_hosts = hosts(p);
            let same_tier = (p_hosts.is_empty() && r_hosts.is_empty())
                || (!r_hosts.is_empty() && r_hosts.is_subset(&p_hosts));
            covers && same_tier && m.methods.is_none() && m.headers.is_empty() && m.query.is_empty()
        });
        if let Some(p) = winner {
            diag.err(
                r.line,
                format!("routes[{j}]"),
                format!(
                    "route `{}` can never match: every path its regex matches starts with `{literal}`, \
                     and route `{}` (line {}) takes all of those first (prefix routes are tried \
                     before regex routes, and it has no methods or header or query predicates)",
                    r.name.value, p.name.value, p.line
                ),
            );
        }
    }
}

#[cfg(test)]
mod unreachable_tests {
    use super::anchored_literal;

    #[test]
    fn the_literal_start_of_an_anchored_regex() {
        assert_eq!(
            anchored_literal("^/v1/items/[0-9]+$").as_deref(),
            Some("/v1/items/")
        );
        assert_eq!(anchored_literal("^/a\\.b/c").as_deref(), Some("/a.b/c"));
        assert_eq!(anchored_literal("^/v1/x?").as_deref(), Some("/v1/"));
        assert_eq!(anchored_literal("^/(a|b)").as_deref(), Some("/"));
        assert_eq!(anchored_literal("^/a\\d").as_deref(), Some("/a"));
        assert_eq!(anchored_literal("/v1/.*"), None);
    }
}
