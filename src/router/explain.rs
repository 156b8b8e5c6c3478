//! `portcullis explain`: a dry run of the router that says which route matches a request, by
//! which rules, and why every other route lost. Meant to be pasted into a bug report.

use super::{PathRule, Rejection, RequestView, RouteMatcher, Router, Tier, Trace};
use std::fmt::Write;

#[derive(Default)]
struct Collector {
    seen: Vec<(usize, Tier, Option<Rejection>)>,
}

impl Trace for Collector {
    fn candidate(&mut self, route: usize, tier: &Tier, rejected: Option<Rejection>) {
        self.seen.push((route, tier.clone(), rejected));
    }
}

fn host_tier(r: &RouteMatcher, host: &str) -> Option<Tier> {
    if r.hosts.is_empty() {
        return Some(Tier::AnyHost);
    }
    if r.hosts.iter().any(|h| h == host) {
        return Some(Tier::ExactHost(host.to_string()));
    }
    if let Some((_, suffix)) = super::tenant_label(host) {
        if r.hosts
            .iter()
            .any(|h| h.strip_prefix(super::TENANT_LABEL) == Some(suffix))
        {
            return Some(Tier::TenantHost(suffix.to_string()));
        }
    }
    r.hosts
        .iter()
        .filter_map(|h| h.strip_prefix('*'))
        .filter(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
        .max_by_key(|s| s.len())
        .map(|s| Tier::WildcardHost(s.to_string()))
}

fn describe_match(r: &RouteMatcher) -> String {
    let hosts = if r.hosts.is_empty() {
        "any host".to_string()
    } else {
        r.hosts.join(", ")
    };
    let methods = match &r.methods {
        None => "any method".to_string(),
        Some(ms) => ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
    };
    let mut s = format!(
        "hosts [{hosts}], path {}, methods [{methods}]",
        r.path.describe()
    );
    if !r.headers.is_empty() {
        let hs: Vec<String> = r.headers.iter().map(|h| h.describe()).collect();
        let _ = write!(s, ", headers [{}]", hs.join(", "));
    }
    if !r.query.is_empty() {
        let qs: Vec<String> = r.query.iter().map(|q| q.describe()).collect();
        let _ = write!(s, ", query [{}]", qs.join(", "));
    }
    if r.priority != 0 {
        let _ = write!(s, ", priority {}", r.priority);
    }
    s
}

fn path_kind(p: &PathRule) -> &'static str {
    match p {
        PathRule::Exact(_) => "exact path",
        PathRule::Prefix(_) => "prefix",
        PathRule::Regex(_) => "regex",
    }
}

/// Why `loser` (which matched everything) lost to `winner`.
fn lost_because(
    loser: &RouteMatcher,
    winner: &RouteMatcher,
    l_tier: &Tier,
    w_tier: &Tier,
) -> String {
    if l_tier != w_tier {
        return format!(
            "`{}` matched in an earlier host tier ({w_tier} beats {l_tier})",
            winner.name
        );
    }
    let kind_rank = |p: &PathRule| match p {
        PathRule::Exact(_) => 0,
        PathRule::Prefix(_) => 1,
        PathRule::Regex(_) => 2,
    };
    if kind_rank(&loser.path) != kind_rank(&winner.path) {
        return format!(
            "`{}` has a more specific path rule ({} beats {})",
            winner.name,
            path_kind(&winner.path),
            path_kind(&loser.path)
        );
    }
    if let (PathRule::Prefix(w), PathRule::Prefix(l)) = (&winner.path, &loser.path) {
        if w.len() != l.len() {
            return format!("`{}` has a longer prefix ({w} beats {l})", winner.name);
        }
    }
    if winner.methods.is_some() && loser.methods.is_none() {
        return format!("`{}` lists the method explicitly", winner.name);
    }
    if winner.headers.len() != loser.headers.len() {
        return format!("`{}` has more header predicates", winner.name);
    }
    if winner.query.len() != loser.query.len() {
        return format!("`{}` has more query predicates", winner.name);
    }
    if winner.priority != loser.priority {
        return format!(
            "`{}` has higher priority ({} > {})",
            winner.name, winner.priority, loser.priority
        );
    }
    format!("`{}` comes earlier in the file", winner.name)
}

/// Renders the explanation for one request.
pub fn explain(router: &Router, req: &RequestView) -> (Option<usize>, String) {
    let mut trace = Collector::default();
    let chosen = router.route_traced(req, &mut trace);
    let mut out = String::new();
    let host = if req.host.is_empty() {
        "(none)"
    } else {
        req.host
    };
    let _ = writeln!(out, "request: {} host={host} path={}", req.method, req.path);
    let routes = router.routes();
    match chosen {
        Some(id) => {
            let r = &routes[id];
            let tier = host_tier(r, req.host).unwrap_or(Tier::AnyHost);
            let _ = writeln!(
                out,
                "matched: {} ({tier}; {} {}; {})",
                r.name,
                path_kind(&r.path),
                r.path.describe(),
                describe_match(r)
            );
        }
        None => {
            let _ = writeln!(out, "matched: none (404)");
        }
    }
    let _ = writeln!(out, "routes:");
    for r in routes {
        let verdict = if Some(r.index) == chosen {
            "chosen".to_string()
        } else if let Some((_, _, Some(rej))) = trace
            .seen
            .iter()
            .find(|(id, _, rej)| *id == r.index && rej.is_some())
        {
            match rej {
                Rejection::Method => format!("method {} not in its method list", req.method),
                Rejection::Header(h) => format!("header predicate failed: {h}"),
                Rejection::Query(q) => format!("query predicate failed: {q}"),
            }
        } else {
            match host_tier(r, req.host) {
                None => format!("host {host} does not match"),
                Some(tier) => {
                    if !r.path.matches(req.path) {
                        format!("path {} does not match {}", req.path, r.path.describe())
                    } else if !r.method_matches(req.method) {
                        format!("method {} not in its method list", req.method)
                    } else if let Some(h) = r.failing_header(req.headers) {
                        format!("header predicate failed: {}", h.describe())
                    } else if let Some(q) = r.failing_query(req.query) {
                        format!("query predicate failed: {}", q.describe())
                    } else if let Some(w) = chosen {
                        let winner = &routes[w];
                        let w_tier = host_tier(winner, req.host).unwrap_or(Tier::AnyHost);
                        format!("lost: {}", lost_because(r, winner, &tier, &w_tier))
                    } else {
                        "not reached".to_string()
                    }
                }
            }
        };
        let _ = writeln!(
            out,
            "  - {}: {verdict}\n      {}",
            r.name,
            describe_match(r)
        );
    }
    (chosen, out)
}
