//! `upstreams[]` in compiled form: everything an upstream is, decided from its section once.
//! The registry (`UpstreamRegistry`) attaches pools and target state to it.

use super::breaker::BreakerConfig;
use super::pool::PoolSettings;
use super::split::SplitKey;
use crate::config::{
    Diag, HealthCheck, LoadBalancing, Located, Protocol, RetryBudgetConfig, Upstream,
};
use http::uri::Authority;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Above this a connect or route timeout holds client connections and upstream capacity for
/// longer than a gateway should.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// How `protocol: https` connections to one target are made.
#[derive(Clone)]
pub struct TargetTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
}

#[derive(Clone)]
pub struct TargetSpec {
    /// As written: `host:port` or `IP:port`.
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
    pub tls: Option<TargetTls>,
}

#[derive(Debug, Clone)]
pub enum BalancingSpec {
    RoundRobin,
    LeastRequest,
    ConsistentHash(SplitKey),
}

pub struct UpstreamSpec {
    pub name: String,
    pub targets: Vec<TargetSpec>,
    pub settings: PoolSettings,
    pub balancing: BalancingSpec,
    pub breaker: Option<BreakerConfig>,
    pub max_concurrent_requests: Option<u64>,
    pub retry_budget: RetryBudgetConfig,
    pub health_check: Option<HealthCheck>,
}

/// Builds every upstream (and reports duplicate names).
pub fn build_all(upstreams: &[Located<Upstream>], diag: &mut Diag) -> Option<Vec<UpstreamSpec>> {
    let built: Vec<Option<UpstreamSpec>> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| build(u, &format!("upstreams[{i}]"), diag))
        .collect();
    diag.duplicates(
        "upstream",
        upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (&u.name, format!("upstreams[{i}].name"))),
    );
    built.into_iter().collect()
}

fn build(u: &Located<Upstream>, key: &str, diag: &mut Diag) -> Option<UpstreamSpec> {
    let mark = diag.mark();
    diag.kebab_name(&u.name, format!("{key}.name"));
    if u.targets.is_empty() {
        diag.err(
            u.targets.line,
            format!("{key}.targets"),
            "at least one target is required",
        );
    }
    let mut addresses = Vec::new();
    for (j, t) in u.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{j}]");
        match parse_host_port(&t.address) {
            Ok(a) => addresses.push((t, a)),
            Err(msg) => diag.err(t.address.line, format!("{tkey}.address"), msg),
        }
        if !(1..=10_000).contains(&t.weight.value) {
            diag.err(
                t.weight.line,
                format!("{tkey}.weight"),
                "must be between 1 and 10000",
            );
        }
    }
    if u.targets.len() > 1024 {
        diag.err(
            u.targets.line,
            format!("{key}.targets"),
            "at most 1024 targets",
        );
    }
    let tls = tls_client(u, key, diag);
    let balancing = balancing(u, key, diag);
    if let Some(m) = &u.max_concurrent_requests {
        if m.value == 0 {
            diag.err(
                m.line,
                format!("{key}.max_concurrent_requests"),
                "must be greater than 0",
            );
        }
    }
    if let Some(hc) = &u.health_check {
        check_health_check(hc, key, diag);
    }
    let breaker = u.circuit_breaker.as_ref().and_then(|cb| {
        if cb.consecutive_failures == 0 || cb.half_open_requests == 0 || cb.open_ms == 0 {
            diag.err(
                cb.line,
                format!("{key}.circuit_breaker"),
                "consecutive_failures, open_ms and half_open_requests must be greater than 0",
            );
            return None;
        }
        let failure_rate = match &cb.failure_rate {
            Some(fr) => {
                if !(1..=100).contains(&fr.percent)
                    || fr.min_requests == 0
                    || !(1..=3600).contains(&fr.window_s)
                {
                    diag.err(
                        fr.line,
                        format!("{key}.circuit_breaker.failure_rate"),
                        "percent must be 1–100, min_requests at least 1, window_s 1–3600",
                    );
                    return None;
                }
                Some(super::breaker::FailureRate {
                    percent: fr.percent,
                    min_requests: fr.min_requests,
                    window: Duration::from_secs(fr.window_s),
                })
            }
            None => None,
        };
        Some(BreakerConfig {
            consecutive_failures: cb.consecutive_failures,
            open: Duration::from_millis(cb.open_ms),
            half_open_requests: cb.half_open_requests,
            failure_rate,
        })
    });
    if u.retry_budget.percent > 100 {
        diag.err(
            u.line,
            format!("{key}.retry_budget.percent"),
            "must be between 0 and 100",
        );
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&u.connect_timeout_ms) {
        diag.err(
            u.line,
            format!("{key}.connect_timeout_ms"),
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        );
    }
    if u.pool.max_idle_per_target > 100_000 {
        diag.err(
            u.line,
            format!("{key}.pool.max_idle_per_target"),
            "must be at most 100000",
        );
    }
    // Each https target's verified name: the configured one, or the target's host.
    let mut targets = Vec::with_capacity(addresses.len());
    for (j, (t, authority)) in addresses.into_iter().enumerate() {
        let target_tls = match &tls {
            Some((config, name, _)) => {
                let name = name
                    .clone()
                    .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_string());
                match ServerName::try_from(name.clone()) {
                    Ok(server_name) => Some(TargetTls {
                        config: Arc::clone(config),
                        server_name,
                    }),
                    Err(_) => {
                        diag.err(
                            t.address.line,
                            format!("{key}.targets[{j}].address"),
                            format!("`{name}` is not a valid TLS server name"),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        targets.push(TargetSpec {
            address: t.address.value.to_string(),
            authority,
            weight: t.weight.value,
            tls: target_tls,
        });
    }
    let spec = UpstreamSpec {
        name: u.name.value.to_string(),
        targets,
        settings: PoolSettings {
            connect_timeout_ms: u.connect_timeout_ms,
            pool: u.pool.clone(),
            protocol: u.protocol.value,
            tls: u.tls.as_ref().map(|t| t.value.clone()),
            client_auth_digest: tls.as_ref().and_then(|t| t.2.clone()),
        },
        balancing: balancing?,
        breaker,
        max_concurrent_requests: u.max_concurrent_requests.as_ref().map(|m| m.value),
        retry_budget: u.retry_budget.clone(),
        health_check: u.health_check.as_ref().map(|h| h.value.clone()),
    };
    diag.ok_since(mark, spec)
}

/// `protocol: https` / `h2`: the client config (CA and client certificate read now), the
/// configured server name, and the digest of the client certificate and key.
#[allow(clippy::type_complexity)]
fn tls_client(
    u: &Located<Upstream>,
    key: &str,
    diag: &mut Diag,
) -> Option<(Arc<rustls::ClientConfig>, Option<String>, Option<String>)> {
    let mut server_name = None;
    let mut ca_file = None;
    let mut client_auth = None;
    let mut digest = None;
    if let Some(t) = &u.tls {
        if !u.protocol.value.tls() {
            diag.err(
                t.line,
                format!("{key}.tls"),
                "tls applies to `protocol: https` or `h2` only",
            );
        }
        match (&t.client_cert_file, &t.client_key_file) {
            (Some(cert), Some(key_file)) => match crate::tls::load_cert_and_key(cert, key_file) {
                Ok(pair) => {
                    use sha2::Digest;
                    let mut h = sha2::Sha256::new();
                    for c in &pair.0 {
                        h.update(c.as_ref());
                    }
                    h.update(pair.1.secret_der());
                    digest = Some(hex::encode(h.finalize()));
                    client_auth = Some(pair);
                }
                Err(e) => {
                    diag.err(t.line, format!("{key}.tls.client_cert_file"), e);
                    return None;
                }
            },
            (None, None) => {}
            _ => diag.err(
                t.line,
                format!("{key}.tls"),
                "give both client_cert_file and client_key_file (mTLS), or neither",
            ),
        }
        if let Some(n) = &t.server_name {
            if ServerName::try_from(n.to_string()).is_err() {
                diag.err(
                    t.line,
                    format!("{key}.tls.server_name"),
                    format!("`{n}` is not a valid server name"),
                );
            }
            server_name = Some(n.to_string());
        }
        if let Some(ca) = &t.ca_file {
            if let Err(e) = crate::tls::load_roots(ca) {
                diag.err(t.line, format!("{key}.tls.ca_file"), e);
                return None;
            }
            ca_file = Some(ca.to_string());
        }
    }
    if !u.protocol.value.tls() {
        return None;
    }
    let alpn: &[u8] = if u.protocol.value == Protocol::H2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    match crate::tls::upstream_client(ca_file.as_deref(), client_auth, alpn) {
        Ok(config) => Some((config, server_name, digest)),
        Err(e) => {
            diag.err(u.protocol.line, format!("{key}.tls"), e);
            None
        }
    }
}

fn balancing(u: &Located<Upstream>, key: &str, diag: &mut Diag) -> Option<BalancingSpec> {
    match (&u.load_balancing.value, &u.hash_key) {
        (LoadBalancing::ConsistentHash, None) => {
            diag.err(
                u.load_balancing.line,
                format!("{key}.hash_key"),
                "consistent_hash needs a hash_key (header:NAME, cookie:NAME or client_ip)",
            );
            None
        }
        (LoadBalancing::ConsistentHash, Some(k)) => {
            if k.starts_with("claim:") {
                diag.err(
                    k.line,
                    format!("{key}.hash_key"),
                    "claim: keys are not supported yet (authentication issue)",
                );
                return None;
            }
            match SplitKey::parse(k) {
                Ok(key) => Some(BalancingSpec::ConsistentHash(key)),
                Err(msg) => {
                    diag.err(
                        k.line,
                        format!("{key}.hash_key"),
                        msg.replace("split key", "hash key"),
                    );
                    None
                }
            }
        }
        (_, Some(k)) => {
            diag.err(
                k.line,
                format!("{key}.hash_key"),
                "hash_key is only used with load_balancing: consistent_hash",
            );
            None
        }
        (LoadBalancing::RoundRobin, None) => Some(BalancingSpec::RoundRobin),
        (LoadBalancing::LeastRequest, None) => Some(BalancingSpec::LeastRequest),
    }
}

fn check_health_check(hc: &Located<HealthCheck>, key: &str, diag: &mut Diag) {
    let hkey = format!("{key}.health_check");
    if !hc.path.starts_with('/') {
        diag.err(hc.line, format!("{hkey}.path"), "must start with `/`");
    }
    if !(100..=300_000).contains(&hc.interval_ms) {
        diag.err(
            hc.line,
            format!("{hkey}.interval_ms"),
            "must be between 100 and 300000",
        );
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
        diag.err(
            hc.line,
            format!("{hkey}.timeout_ms"),
            "must be greater than 0 and at most interval_ms",
        );
    }
    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
        diag.err(
            hc.line,
            hkey,
            "healthy_threshold and unhealthy_threshold must be at least 1",
        );
    }
}

/// `host:port` where host is an IP or a DNS name (resolved when connecting).
pub fn parse_host_port(s: &str) -> Result<Authority, String> {
    let bad = || format!("`{s}` is not a host:port address");
    if s.parse::<SocketAddr>().is_err() {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(bad());
        }
    }
    s.parse::<Authority>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<(u32, String, String)> {
        #[derive(serde::Deserialize)]
        struct Doc {
            upstreams: Vec<Located<Upstream>>,
        }
        crate::config::diag::build_yaml(yaml, |d: &Doc, diag| build_all(&d.upstreams, diag))
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn host_port_addresses() {
        assert!(parse_host_port("127.0.0.1:80").is_ok());
        assert!(parse_host_port("[::1]:80").is_ok());
        assert!(parse_host_port("api.internal:8443").is_ok());
        for bad in ["no-port", "bad host:80", ":80", "h:99999", "h:x"] {
            assert_eq!(
                parse_host_port(bad).unwrap_err(),
                format!("`{bad}` is not a host:port address")
            );
        }
    }

    #[test]
    fn balancing_and_breaker_errors() {
        let e = errors("upstreams:\n  - name: u\n    targets: [{ address: \"127.0.0.1:1\" }]\n    load_balancing: consistent_hash\n    circuit_breaker: { open_ms: 0 }\n");
        assert_eq!(
            e,
            vec![
                (
                    4,
                    "upstreams[0].hash_key".into(),
                    "consistent_hash needs a hash_key (header:NAME, cookie:NAME or client_ip)"
                        .into()
                ),
                (
                    5,
                    "upstreams[0].circuit_breaker".into(),
                    "consecutive_failures, open_ms and half_open_requests must be greater than 0"
                        .into()
                ),
            ]
        );
        let e = errors("upstreams:\n  - name: u\n    targets: [{ address: \"127.0.0.1:1\" }]\n    hash_key: \"header:bad name\"\n");
        assert_eq!(
            e[0].2,
            "hash_key is only used with load_balancing: consistent_hash"
        );
        let e = errors("upstreams:\n  - name: u\n    targets: [{ address: \"127.0.0.1:1\" }]\n    load_balancing: consistent_hash\n    hash_key: \"header:bad name\"\n");
        assert_eq!(
            (e[0].0, e[0].2.as_str()),
            (5, "`bad name` is not a valid header name")
        );
    }

    #[test]
    fn targets_weights_and_tls() {
        let e = errors("upstreams:\n  - name: u\n    targets:\n      - { address: \"x\", weight: 0 }\n    tls: { server_name: \"a b\" }\n");
        let keys: Vec<&str> = e.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstreams[0].targets[0].address",
                "upstreams[0].targets[0].weight",
                "upstreams[0].tls",
                "upstreams[0].tls.server_name"
            ]
        );
        assert!(e.iter().all(|e| e.0 == 4 || e.0 == 5), "{e:?}");
        let e = errors("upstreams:\n  - name: u\n    protocol: https\n    targets: [{ address: \"bad..name:443\" }]\n");
        assert_eq!(e[0].1, "upstreams[0].targets[0].address");
        assert_eq!(e[0].2, "`bad..name` is not a valid TLS server name");
        assert_eq!(errors("upstreams:\n  - name: u\n    protocol: https\n    targets: [{ address: \"api.example.com:443\" }]\n"), vec![]);
    }

    #[test]
    fn health_checks_have_bounds() {
        let e = errors("upstreams:\n  - name: u\n    targets: [{ address: \"127.0.0.1:1\" }]\n    health_check: { path: x, interval_ms: 10, timeout_ms: 50, unhealthy_threshold: 0 }\n");
        let msgs: Vec<&str> = e.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "must start with `/`",
                "must be between 100 and 300000",
                "must be greater than 0 and at most interval_ms",
                "healthy_threshold and unhealthy_threshold must be at least 1"
            ]
        );
    }
}
