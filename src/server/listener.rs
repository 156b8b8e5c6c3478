//! `listeners[]` in compiled form: each listener's address, limits and TLS section.

use crate::config::{Diag, ListenerLimits, ListenerTls, Located};
use crate::edge::client_addr::TrustedProxies;
use crate::edge::ip_rules::IpRules;
use crate::edge::proxy_protocol;
use std::net::SocketAddr;
use std::sync::Arc;

/// One listener, checked. Its TLS files are read when a snapshot is prepared (`crate::tls`),
/// on every start and reload.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Line of `address`, for errors that refer to it.
    pub address_line: u32,
    pub limits: ListenerLimits,
    pub tls: Option<Located<ListenerTls>>,
    pub trusted_proxies: Option<Arc<TrustedProxies>>,
    /// Every connection starts with a PROXY protocol header of these versions.
    pub proxy_protocol: Option<proxy_protocol::Accept>,
    /// Positions in the snapshot's `ip_rules`, checked before routing.
    pub ip_rules: Vec<usize>,
}

/// Two socket addresses collide when they have the same port and the same IP, or one of them is
/// the unspecified address (0.0.0.0 / ::) that binds every IP. Port 0 means "any free port".
pub fn same_socket(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Builds every listener. Returns those whose address parsed even when another of their keys
/// was wrong, so the admin address can still be checked against them; the document as a whole
/// is refused whenever `diag` holds an error.
pub fn build_all(
    listeners: &[Located<crate::config::Listener>],
    ip_rules: &IpRules,
    diag: &mut Diag,
) -> Vec<ListenerSpec> {
    if listeners.is_empty() {
        diag.err(0, "listeners", "at least one listener is required");
    }
    let mut specs: Vec<ListenerSpec> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        diag.kebab_name(&l.name, format!("{key}.name"));
        if let Some(t) = &l.tls {
            if t.certificates.is_empty() {
                diag.err(
                    t.line,
                    format!("{key}.tls.certificates"),
                    "at least one certificate",
                );
            }
            if !["1.2", "1.3"].contains(&&*t.min_version.value.0) {
                diag.err(
                    t.min_version.line,
                    format!("{key}.tls.min_version"),
                    "must be \"1.2\" or \"1.3\" (older versions are never offered)",
                );
            }
        }
        let address = match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if let Some(other) = specs.iter().find(|s| same_socket(&a, &s.address)) {
                    diag.err(
                        l.address.line,
                        format!("{key}.address"),
                        format!(
                            "address {a} is already used by the listener on line {}",
                            other.address_line
                        ),
                    );
                }
                Some(a)
            }
            Err(_) => {
                diag.err(
                    l.address.line,
                    format!("{key}.address"),
                    format!("`{}` is not an IP:port address", l.address.value),
                );
                None
            }
        };
        check_limits(&l.limits, l.line, &format!("{key}.limits"), diag);
        let trusted_proxies =
            TrustedProxies::build(&l.trusted_proxies, l.forwarded_header.as_ref(), &key, diag)
                .map(Arc::new);
        let proxy_protocol = l.proxy_protocol.as_ref().and_then(|p| {
            let accept = proxy_protocol::Accept::parse(p);
            if accept.is_none() {
                diag.err(
                    p.line,
                    format!("{key}.proxy_protocol"),
                    format!("`{}` is not one of v1, v2, any", p.value),
                );
            }
            accept
        });
        let ip_rules = ip_rules.resolve(&l.ip_rules, &format!("{key}.ip_rules"), diag);
        if let Some(address) = address {
            specs.push(ListenerSpec {
                name: l.name.value.to_string(),
                address,
                address_line: l.address.line,
                limits: l.limits.clone(),
                tls: l.tls.clone(),
                trusted_proxies,
                proxy_protocol,
                ip_rules,
            });
        }
    }
    diag.duplicates(
        "listener",
        listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (&l.name, format!("listeners[{i}].name"))),
    );
    specs
}

fn check_limits(lim: &ListenerLimits, line: u32, key: &str, diag: &mut Diag) {
    if !(1024..=1024 * 1024).contains(&lim.max_header_bytes) {
        diag.err(
            line,
            format!("{key}.max_header_bytes"),
            "must be between 1024 and 1048576",
        );
    }
    for (v, k) in [
        (lim.header_read_timeout_ms, "header_read_timeout_ms"),
        (lim.idle_timeout_ms, "idle_timeout_ms"),
        (lim.max_connections, "max_connections"),
        (lim.max_concurrent_requests, "max_concurrent_requests"),
    ] {
        if v == 0 {
            diag.err(line, format!("{key}.{k}"), "must be greater than 0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<Vec<ListenerSpec>, Vec<(u32, String, String)>> {
        #[derive(serde::Deserialize)]
        struct Doc {
            listeners: Vec<Located<crate::config::Listener>>,
        }
        crate::config::diag::build_yaml(yaml, |d: &Doc, diag| {
            Some(build_all(&d.listeners, &IpRules::default(), diag))
        })
    }

    #[test]
    fn valid_listeners_keep_their_settings() {
        let l = build("listeners:\n  - name: a\n    address: 127.0.0.1:0\n    limits: { idle_timeout_ms: 5 }\n").unwrap();
        assert_eq!(l[0].name, "a");
        assert_eq!(l[0].limits.idle_timeout_ms, 5);
        assert_eq!(l[0].limits.max_header_bytes, 65_536);
    }

    #[test]
    fn errors_name_their_line_and_key() {
        let e = build(
            "listeners:\n  - name: a\n    address: 0.0.0.0:8080\n  - name: a\n    address: 127.0.0.1:8080\n  - name: b\n    address: nowhere\n    tls: { certificates: [], min_version: \"1.0\" }\n",
        )
        .unwrap_err();
        let want = [
            (
                4,
                "listeners[1].name",
                "duplicate listener name `a` (first defined on line 2)",
            ),
            (
                5,
                "listeners[1].address",
                "address 127.0.0.1:8080 is already used by the listener on line 3",
            ),
            (
                7,
                "listeners[2].address",
                "`nowhere` is not an IP:port address",
            ),
            (
                8,
                "listeners[2].tls.certificates",
                "at least one certificate",
            ),
            (
                8,
                "listeners[2].tls.min_version",
                "must be \"1.2\" or \"1.3\" (older versions are never offered)",
            ),
        ];
        let got: Vec<(u32, &str, &str)> = e
            .iter()
            .map(|(l, k, m)| (*l, k.as_str(), m.as_str()))
            .collect();
        // Sorted by line; same-line errors in report order (duplicates are reported last).
        assert_eq!(got.len(), want.len(), "{got:?}");
        for w in want {
            assert!(got.contains(&w), "missing {w:?} in {got:?}");
        }
    }

    #[test]
    fn limits_have_bounds() {
        let e = build("listeners:\n  - name: a\n    address: 127.0.0.1:1\n    limits: { max_header_bytes: 10, max_connections: 0 }\n").unwrap_err();
        assert_eq!(e[0].1, "listeners[0].limits.max_header_bytes");
        assert_eq!(e[0].2, "must be between 1024 and 1048576");
        assert_eq!(e[1].1, "listeners[0].limits.max_connections");
        assert!(e.iter().all(|e| e.0 == 2), "{e:?}");
        assert!(build("listeners: []\n").unwrap_err()[0]
            .2
            .contains("at least one listener"));
    }

    #[test]
    fn a_wildcard_ip_collides_with_every_ip_on_its_port() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(same_socket(&a, &b));
        assert!(!same_socket(&c, &c), "port 0 never collides");
    }
}
