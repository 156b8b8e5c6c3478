//! Edge protection, in front of routing and authentication: the one client address
//! (trusted proxies, PROXY protocol), named IP allow / deny rules, and request rules.

pub mod client_addr;
pub mod ip_rules;
pub mod proxy_protocol;
pub mod rules;

use crate::config::{Config, Diag};
use ip_rules::IpRules;
use rules::EdgeRules;
use sha2::Digest;
use std::path::Path;

/// The top-level `ip_rules` and `edge_rules` sections, compiled. Listeners and routes refer to
/// them by position.
pub struct EdgeSpec {
    pub ip_rules: IpRules,
    pub rules: EdgeRules,
    /// A digest of every list file read, so a reload swaps when only a list changed.
    pub files_fingerprint: String,
}

impl EdgeSpec {
    pub fn build(cfg: &Config, source: &str, diag: &mut Diag) -> EdgeSpec {
        let base = Path::new(source)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut files = Vec::new();
        let ip_rules = IpRules::build(&cfg.ip_rules, &base, &mut files, diag);
        let rules = EdgeRules::build(
            cfg.edge_rules.as_ref(),
            cfg.defaults.edge_rules.as_ref(),
            &base,
            &mut files,
            diag,
        );
        let files_fingerprint = if files.is_empty() {
            String::new()
        } else {
            hex::encode(sha2::Sha256::digest(&files))
        };
        EdgeSpec {
            ip_rules,
            rules,
            files_fingerprint,
        }
    }
}

/// `portcullis_ip_rule_refused_total{rule}` and `portcullis_edge_rule_matches_total{rule,outcome}`.
pub fn render_metrics(edge: &EdgeSpec, out: &mut String) {
    use crate::observe::metrics::{family, label};
    use std::sync::atomic::Ordering::Relaxed;
    let ip: Vec<(String, f64)> = edge
        .ip_rules
        .rules
        .iter()
        .map(|r| {
            (
                label("rule", &r.name),
                r.counters.refused.load(Relaxed) as f64,
            )
        })
        .collect();
    family(
        out,
        "portcullis_ip_rule_refused_total",
        "counter",
        "Requests an IP rule refused (403), by rule.",
        &ip,
    );
    let mut matches = Vec::new();
    for (name, c) in edge.rules.counters() {
        for (outcome, v) in [
            ("denied", &c.denied),
            ("report_only", &c.would_deny),
            ("logged", &c.logged),
        ] {
            let v = v.load(Relaxed);
            if v > 0 {
                matches.push((
                    format!("{},{}", label("rule", name), label("outcome", outcome)),
                    v as f64,
                ));
            }
        }
    }
    family(
        out,
        "portcullis_edge_rule_matches_total",
        "counter",
        "Requests an edge rule matched, by rule and outcome (denied; report_only: would have been denied; logged).",
        &matches,
    );
}

/// `portcullis explain`, before routing: the client address, the listener's IP rules and the
/// built-in rules. Returns the status of a refusal.
pub fn explain_before_routing(
    edge: &EdgeSpec,
    listener: &crate::server::listener::ListenerSpec,
    peer: std::net::IpAddr,
    method: &http::Method,
    raw_path: &str,
    headers: &http::HeaderMap,
    out: &mut String,
) -> (client_addr::ClientAddr, Option<u16>) {
    use std::fmt::Write;
    let peer = ip_rules::canonical_ip(peer);
    let peer_text: std::sync::Arc<str> = peer.to_string().into();
    let client = client_addr::resolve(
        peer,
        &peer_text,
        listener.trusted_proxies.as_deref(),
        headers,
    );
    let _ = writeln!(
        out,
        "client: {} (listener {}, peer {peer}{})",
        client.text,
        listener.name,
        if client.peer_trusted {
            ", a trusted proxy: its forwarding chain was read"
        } else {
            ", not a trusted proxy: forwarding headers ignored"
        }
    );
    if let Some(status) = explain_ip_rules(edge, &listener.ip_rules, client.ip, "listener", out) {
        return (client, Some(status));
    }
    match edge.rules.check_builtin(method, raw_path, headers) {
        Some(hit) => {
            let _ = writeln!(
                out,
                "built-in rules: {} by `{}` ({}{})",
                if hit.refused {
                    "refused"
                } else {
                    "would refuse (report_only)"
                },
                hit.rule,
                hit.status.as_u16(),
                if hit.refused { "" } else { ", not enforced" }
            );
            let status = hit.refused.then_some(hit.status.as_u16());
            (client, status)
        }
        None => {
            let _ = writeln!(out, "built-in rules: pass");
            (client, None)
        }
    }
}

/// `portcullis explain`, after routing: the route's IP rules and request rules.
pub fn explain_route(
    edge: &EdgeSpec,
    route: &crate::route::RouteRules,
    client: std::net::IpAddr,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
    out: &mut String,
) -> Option<u16> {
    use std::fmt::Write;
    if let Some(status) = explain_ip_rules(edge, &route.ip_rules, client, "route", out) {
        return Some(status);
    }
    let Some(set) = &route.edge_rules else {
        let _ = writeln!(out, "route rules: none");
        return None;
    };
    let names = set.names().join(", ");
    match set.check(&edge.rules, path, query, headers) {
        Some(hit) if hit.refused => {
            let _ = writeln!(
                out,
                "route rules [{names}]: refused by `{}` (403)",
                hit.rule
            );
            Some(403)
        }
        Some(hit) => {
            let _ = writeln!(
                out,
                "route rules [{names}]: matched `{}` ({}), request goes on",
                hit.rule,
                hit.log_value()
            );
            None
        }
        None => {
            let _ = writeln!(out, "route rules [{names}]: pass");
            None
        }
    }
}

fn explain_ip_rules(
    edge: &EdgeSpec,
    applied: &[usize],
    ip: std::net::IpAddr,
    scope: &str,
    out: &mut String,
) -> Option<u16> {
    use std::fmt::Write;
    if applied.is_empty() {
        return None;
    }
    let names: Vec<&str> = applied
        .iter()
        .map(|i| &*edge.ip_rules.rules[*i].name)
        .collect();
    match edge.ip_rules.first_denial(applied, ip) {
        Some(rule) => {
            let _ = writeln!(
                out,
                "{scope} ip_rules [{}]: {ip} denied by `{}` (403)",
                names.join(", "),
                rule.name
            );
            Some(403)
        }
        None => {
            let _ = writeln!(out, "{scope} ip_rules [{}]: {ip} allowed", names.join(", "));
            None
        }
    }
}
