//! Semantic validation. Collects every problem in one pass, each with its line and key, so a
//! user fixes a file in one round trip instead of one error per run.

use super::model::*;
use super::{ConfigError, Located};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

/// Above this a route timeout holds client connections and upstream capacity for longer than a
/// gateway should: a slow dependency then ties up the whole gateway.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// More extra attempts than this multiply load on an already failing upstream (retry storms).
pub const MAX_RETRY_ATTEMPTS: u32 = 2;
/// Split weights are parts of this many buckets.
pub const SPLIT_BUCKETS: u32 = 10_000;

struct Checker<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn err(&mut self, line: u32, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn unsupported(&mut self, section: &Unsupported, key: String, issue: &str) {
        if let Some(s) = section {
            self.err(
                s.line,
                key,
                format!("not supported yet ({issue}); remove this section for now"),
            );
        }
    }

    fn name(&mut self, name: &Located<super::Text>, key: String) {
        if !is_kebab_case(name) {
            self.err(
                name.line,
                key,
                format!(
                    "name `{}` must be kebab-case (^[a-z0-9][a-z0-9-]*$)",
                    name.value
                ),
            );
        }
    }

    fn duplicates<'n>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = (&'n Located<super::Text>, String)>,
    ) {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (name, key) in names {
            if let Some(first) = seen.get(name.as_ref() as &str) {
                self.err(
                    name.line,
                    key,
                    format!(
                        "duplicate {what} name `{}` (first defined on line {first})",
                        name.value
                    ),
                );
            } else {
                seen.insert(name, name.line);
            }
        }
    }
}

pub fn is_kebab_case(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub fn validate(config: &Config, file: &str) -> Vec<ConfigError> {
    let mut c = Checker {
        file,
        errors: Vec::new(),
    };
    check_auth_providers(&mut c, &config.auth, config.redis.is_some());
    check_rate_limits(&mut c, config);
    check_observability(&mut c, &config.observability);

    check_dns(&mut c, &config.dns);
    let listener_addrs = check_listeners(&mut c, config);
    check_admin(&mut c, config, &listener_addrs);
    check_defaults(&mut c, config, &config.defaults);
    check_upstreams(&mut c, config);
    check_routes(&mut c, config);
    c.errors
}

fn check_listeners(c: &mut Checker, config: &Config) -> Vec<(SocketAddr, u32)> {
    if config.listeners.is_empty() {
        c.err(0, "listeners", "at least one listener is required");
    }
    let mut addrs = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        c.name(&l.name, format!("{key}.name"));
        if let Some(t) = &l.tls {
            if t.certificates.is_empty() {
                c.err(
                    t.line,
                    format!("{key}.tls.certificates"),
                    "at least one certificate",
                );
            }
            if !["1.2", "1.3"].contains(&&*t.min_version.value.0) {
                c.err(
                    t.min_version.line,
                    format!("{key}.tls.min_version"),
                    "must be \"1.2\" or \"1.3\" (older versions are never offered)",
                );
            }
        }
        match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if let Some((_, line)) = addrs.iter().find(|(b, _)| same_socket(&a, b)) {
                    c.err(
                        l.address.line,
                        format!("{key}.address"),
                        format!("address {a} is already used by the listener on line {line}"),
                    );
                }
                addrs.push((a, l.address.line));
            }
            Err(_) => c.err(
                l.address.line,
                format!("{key}.address"),
                format!("`{}` is not an IP:port address", l.address.value),
            ),
        }
        let lim = &l.limits;
        let lkey = format!("{key}.limits");
        if !(1024..=1024 * 1024).contains(&lim.max_header_bytes) {
            c.err(
                l.line,
                format!("{lkey}.max_header_bytes"),
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
                c.err(l.line, format!("{lkey}.{k}"), "must be greater than 0");
            }
        }
    }
    c.duplicates(
        "listener",
        config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (&l.name, format!("listeners[{i}].name"))),
    );
    addrs
}

/// Two socket addresses collide when they have the same port and the same IP, or one of them is
/// the unspecified address (0.0.0.0 / ::) that binds every IP. Port 0 means "any free port".
fn same_socket(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_admin(c: &mut Checker, config: &Config, listeners: &[(SocketAddr, u32)]) {
    let admin = &config.admin;
    match admin.address.parse::<SocketAddr>() {
        Ok(a) => {
            if let Some((_, line)) = listeners.iter().find(|(l, _)| same_socket(&a, l)) {
                c.err(
                    admin.address.line,
                    "admin.address",
                    format!(
                        "the admin API must not share an address with a listener (line {line}): \
                         it would expose reload and config to public traffic"
                    ),
                );
            }
        }
        Err(_) => c.err(
            admin.address.line,
            "admin.address",
            format!("`{}` is not an IP:port address", admin.address.value),
        ),
    }
    if let Some(t) = &admin.token {
        if t.len() < 16 {
            c.err(admin.line, "admin.token", "must be at least 16 characters");
        }
    }
}

fn check_defaults(c: &mut Checker, config: &Config, d: &Defaults) {
    check_timeout(c, &d.timeout_ms, "defaults.timeout_ms".into());
    if let Some(a) = &d.auth {
        check_auth(c, config, a, "defaults.auth".into());
    }
    if d.max_body_bytes == 0 {
        c.err(0, "defaults.max_body_bytes", "must be greater than 0");
    }
}

fn check_timeout(c: &mut Checker, t: &Located<u64>, key: String) {
    if t.value == 0 {
        c.err(t.line, key, "must be greater than 0");
    } else if t.value > MAX_TIMEOUT_MS {
        c.err(
            t.line,
            key,
            format!(
                "{} ms is above the {MAX_TIMEOUT_MS} ms maximum: a gateway that waits this long \
                 lets one slow upstream hold connections and memory until the gateway itself \
                 stops serving; use an asynchronous API for long work",
                t.value
            ),
        );
    }
}

fn check_auth(c: &mut Checker, config: &Config, auth: &Located<AuthSpec>, key: String) {
    check_auth_spec(c, config, &auth.value, auth.line, &key);
}

fn check_auth_spec(c: &mut Checker, config: &Config, spec: &AuthSpec, line: u32, key: &str) {
    let p = match spec {
        AuthSpec::Keyword(k) if k == "none" => return,
        AuthSpec::Keyword(k) => {
            return c.err(
                line,
                key,
                format!("unknown auth `{k}`: use `none` or a policy such as `{{ jwt: NAME }}`"),
            )
        }
        AuthSpec::Policy(p) => p,
    };
    let set = [
        p.jwt.is_some(),
        p.api_key.is_some(),
        p.introspection.is_some(),
        p.any.is_some(),
        p.mtls.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return c.err(
            line,
            key,
            "an auth policy is exactly one of jwt, api_key, introspection, any, mtls",
        );
    }
    if let Some(n) = &p.jwt {
        if !config.auth.jwt.iter().any(|j| *j.name.value.0 == **n) {
            c.err(line, key, format!("unknown jwt provider `{n}`"));
        }
    }
    if let Some(n) = &p.api_key {
        if !config.auth.api_keys.iter().any(|j| *j.name.value.0 == **n) {
            c.err(line, key, format!("unknown api_keys provider `{n}`"));
        }
    }
    if let Some(n) = &p.introspection {
        if !config
            .auth
            .introspection
            .iter()
            .any(|j| *j.name.value.0 == **n)
        {
            c.err(line, key, format!("unknown introspection provider `{n}`"));
        }
    }
    if p.mtls.is_some()
        && !config
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()))
    {
        c.err(line, key, "mtls auth needs a listener with tls.client_auth");
    }
    if let Some(any) = &p.any {
        if any.is_empty() {
            c.err(line, key, "`any` needs at least one policy");
        }
        for a in any {
            if matches!(a, AuthSpec::Keyword(k) if k == "none") {
                c.err(line, key, "`none` inside `any` would make the route public");
            } else {
                check_auth_spec(c, config, a, line, key);
            }
        }
    }
}

fn check_auth_providers(c: &mut Checker, auth: &AuthProviders, has_redis: bool) {
    for (i, p) in auth.introspection.iter().enumerate() {
        let key = format!("auth.introspection[{i}]");
        c.name(&p.name, format!("{key}.name"));
        if let Err(e) = crate::outbound::Endpoint::parse(&p.endpoint, None) {
            c.err(p.endpoint.line, format!("{key}.endpoint"), e);
        }
        if !(1..=86_400).contains(&p.cache_s) || p.inactive_cache_s > 3600 {
            c.err(
                p.name.line,
                key.clone(),
                "cache_s must be 1–86400 and inactive_cache_s at most 3600",
            );
        }
        if !(10..=30_000).contains(&p.timeout_ms) {
            c.err(
                p.name.line,
                format!("{key}.timeout_ms"),
                "must be between 10 and 30000",
            );
        }
    }
    for (i, j) in auth.jwt.iter().enumerate() {
        let key = format!("auth.jwt[{i}]");
        c.name(&j.name, format!("{key}.name"));
        let sources = [
            j.jwks_url.is_some(),
            j.jwks_file.is_some(),
            j.secret.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            c.err(
                j.name.line,
                key.clone(),
                "exactly one of jwks_url, jwks_file, secret is required",
            );
        }
        if j.algorithms.is_empty() {
            c.err(
                j.algorithms.line,
                format!("{key}.algorithms"),
                "at least one algorithm",
            );
        }
        for a in j.algorithms.iter() {
            match crate::auth::jwt::parse_algorithm(&a.value) {
                Err(e) => c.err(a.line, format!("{key}.algorithms"), e),
                Ok(alg) => {
                    let hmac = crate::auth::jwt::is_hmac(alg);
                    if j.secret.is_some() && !hmac {
                        c.err(
                            a.line,
                            format!("{key}.algorithms"),
                            format!(
                                "`{}` needs a public key (jwks_url or jwks_file), not a secret",
                                a.value
                            ),
                        );
                    }
                    if j.secret.is_none() && hmac {
                        c.err(
                            a.line,
                            format!("{key}.algorithms"),
                            format!("`{}` needs `secret` (keys from a JWKS are never used as HMAC secrets)", a.value),
                        );
                    }
                }
            }
        }
        if let Some(u) = &j.jwks_url {
            if let Err(e) = crate::outbound::Endpoint::parse(u, None) {
                c.err(u.line, format!("{key}.jwks_url"), e);
            }
        }
        if let Some(s) = &j.secret {
            if s.len() < 32 {
                c.err(
                    s.line,
                    format!("{key}.secret"),
                    "an HMAC secret must be at least 32 bytes",
                );
            }
        }
        if j.jwks_min_refetch_s == 0 || j.jwks_cache_s == 0 {
            c.err(
                j.name.line,
                key.clone(),
                "jwks_cache_s and jwks_min_refetch_s must be at least 1",
            );
        }
        for (claim, h) in &j.forward_claims {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                c.err(
                    j.name.line,
                    format!("{key}.forward_claims"),
                    format!("`{h}` (for claim `{claim}`) is not a valid header name"),
                );
            }
        }
        if let Some(r) = &j.revocation {
            if &*r.store != "redis" {
                c.err(
                    r.line,
                    format!("{key}.revocation.store"),
                    "the only store is `redis`",
                );
            }
            if !has_redis {
                c.err(
                    r.line,
                    format!("{key}.revocation"),
                    "revocation needs a top-level `redis` section",
                );
            }
            if r.cache_s > 300 {
                c.err(r.line, format!("{key}.revocation.cache_s"), "at most 300");
            }
        }
        if j.verified_cache_s > 3600 {
            c.err(
                j.name.line,
                format!("{key}.verified_cache_s"),
                "at most 3600",
            );
        }
    }
    for (i, a) in auth.api_keys.iter().enumerate() {
        let key = format!("auth.api_keys[{i}]");
        c.name(&a.name, format!("{key}.name"));
        if a.header.is_some() && a.query.is_some() {
            c.err(
                a.name.line,
                key.clone(),
                "use either `header` or `query`, not both",
            );
        }
        if let Some(h) = &a.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                c.err(
                    a.name.line,
                    format!("{key}.header"),
                    format!("`{h}` is not a valid header name"),
                );
            }
        }
        if a.keys.is_empty() {
            c.err(a.name.line, format!("{key}.keys"), "at least one key");
        }
        let mut ids = BTreeSet::new();
        for k in &a.keys {
            if !ids.insert(&*k.id.value.0) {
                c.err(
                    k.id.line,
                    format!("{key}.keys"),
                    format!("duplicate key id `{}`", k.id.value),
                );
            }
            let h = &k.sha256.value;
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                c.err(
                    k.sha256.line,
                    format!("{key}.keys"),
                    "sha256 must be 64 hex digits (the SHA-256 of the key, never the key itself)",
                );
            }
        }
    }
    let names = auth
        .jwt
        .iter()
        .map(|j| &j.name)
        .chain(auth.api_keys.iter().map(|a| &a.name))
        .chain(auth.introspection.iter().map(|a| &a.name))
        .enumerate()
        .map(|(i, n)| (n, format!("auth provider {i}")));
    c.duplicates("auth provider", names);
}

fn check_upstreams(c: &mut Checker, config: &Config) {
    for (i, u) in config.upstreams.iter().enumerate() {
        let key = format!("upstreams[{i}]");
        c.name(&u.name, format!("{key}.name"));
        if u.targets.is_empty() {
            c.err(
                u.targets.line,
                format!("{key}.targets"),
                "at least one target is required",
            );
        }
        let mut total_weight = 0u64;
        for (j, t) in u.targets.iter().enumerate() {
            let tkey = format!("{key}.targets[{j}]");
            if let Err(msg) = check_host_port(&t.address) {
                c.err(t.address.line, format!("{tkey}.address"), msg);
            }
            if !(1..=10_000).contains(&t.weight.value) {
                c.err(
                    t.weight.line,
                    format!("{tkey}.weight"),
                    "must be between 1 and 10000",
                );
            }
            total_weight += u64::from(t.weight.value);
        }
        if u.targets.len() > 1024 {
            c.err(
                u.targets.line,
                format!("{key}.targets"),
                "at most 1024 targets",
            );
        }
        let _ = total_weight;
        if let Some(t) = &u.tls {
            if u.protocol.value != Protocol::Https {
                c.err(
                    t.line,
                    format!("{key}.tls"),
                    "tls applies to `protocol: https` only",
                );
            }
            if let Some(n) = &t.server_name {
                if rustls_pki_types::ServerName::try_from(n.to_string()).is_err() {
                    c.err(
                        t.line,
                        format!("{key}.tls.server_name"),
                        format!("`{n}` is not a valid server name"),
                    );
                }
            }
            if let Some(ca) = &t.ca_file {
                if let Err(e) = crate::tls::load_roots(ca) {
                    c.err(t.line, format!("{key}.tls.ca_file"), e);
                }
            }
        }
        check_balancing(c, u, &key);
        if let Some(m) = &u.max_concurrent_requests {
            if m.value == 0 {
                c.err(
                    m.line,
                    format!("{key}.max_concurrent_requests"),
                    "must be greater than 0",
                );
            }
        }
        if let Some(hc) = &u.health_check {
            check_health_check(c, hc, &key);
        }
        if let Some(cb) = &u.circuit_breaker {
            if cb.consecutive_failures == 0 || cb.half_open_requests == 0 || cb.open_ms == 0 {
                c.err(
                    cb.line,
                    format!("{key}.circuit_breaker"),
                    "consecutive_failures, open_ms and half_open_requests must be greater than 0",
                );
            }
        }
        if u.retry_budget.percent > 100 {
            c.err(
                u.line,
                format!("{key}.retry_budget.percent"),
                "must be between 0 and 100",
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&u.connect_timeout_ms) {
            c.err(
                u.line,
                format!("{key}.connect_timeout_ms"),
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            );
        }
        if u.pool.max_idle_per_target > 100_000 {
            c.err(
                u.line,
                format!("{key}.pool.max_idle_per_target"),
                "must be at most 100000",
            );
        }
    }
    c.duplicates(
        "upstream",
        config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (&u.name, format!("upstreams[{i}].name"))),
    );
}

/// `host:port` where host is an IP or a DNS name (resolved when connecting).
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("`{s}` is not a host:port address");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(bad());
    }
    Ok(())
}

fn check_routes(c: &mut Checker, config: &Config) {
    let upstreams: BTreeSet<&str> = config.upstreams.iter().map(|u| &*u.name.value.0).collect();
    for (i, r) in config.routes.iter().enumerate() {
        check_route(c, config, &upstreams, i, r);
    }
    c.duplicates(
        "route",
        config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.name, format!("routes[{i}].name"))),
    );
    check_shadowing(c, config);
}

fn check_route(
    c: &mut Checker,
    config: &Config,
    upstreams: &BTreeSet<&str>,
    i: usize,
    r: &Located<Route>,
) {
    let key = format!("routes[{i}]");
    c.name(&r.name, format!("{key}.name"));
    let m = &r.matcher;

    for (j, h) in m.hosts.iter().enumerate() {
        if let Err(msg) = check_host_pattern(h) {
            c.err(h.line, format!("{key}.match.hosts[{j}]"), msg);
        }
    }
    check_path_match(c, &m.path, format!("{key}.match.path"));
    if let Some(methods) = &m.methods {
        if methods.is_empty() {
            c.err(
                methods.line,
                format!("{key}.match.methods"),
                "must not be empty (omit it to match every method)",
            );
        }
        for meth in methods.iter() {
            if http::Method::from_bytes(meth.as_bytes()).is_err()
                || meth.bytes().any(|b| b.is_ascii_lowercase())
            {
                c.err(
                    methods.line,
                    format!("{key}.match.methods"),
                    format!("`{meth}` is not an upper-case HTTP method"),
                );
            }
        }
    }
    for (j, h) in m.headers.iter().enumerate() {
        let hkey = format!("{key}.match.headers[{j}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            c.err(
                h.line,
                format!("{hkey}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        if h.value.value.is_some() && h.regex.is_some() {
            c.err(h.line, hkey.clone(), "give `value` or `regex`, not both");
        }
        if let Some(re) = &h.regex {
            if let Err(e) = regex::Regex::new(re) {
                c.err(
                    h.line,
                    format!("{hkey}.regex"),
                    format!("invalid regex: {}", regex_error(&e)),
                );
            }
        }
    }

    // Exactly one action.
    let actions = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions != 1 {
        c.err(
            r.line,
            key.clone(),
            "a route needs exactly one of `upstream`, `split` or `direct_response`",
        );
    }
    if let Some(u) = &r.upstream {
        if !upstreams.contains(&*u.value.0) {
            c.err(
                u.line,
                format!("{key}.upstream"),
                format!("unknown upstream `{}`", u.value),
            );
        }
    }
    if let Some(split) = &r.split {
        let mut sum = 0u64;
        for (j, s) in split.iter().enumerate() {
            if !upstreams.contains(&*s.upstream.value.0) {
                c.err(
                    s.upstream.line,
                    format!("{key}.split[{j}].upstream"),
                    format!("unknown upstream `{}`", s.upstream.value),
                );
            }
            if s.weight == 0 {
                c.err(
                    s.line,
                    format!("{key}.split[{j}].weight"),
                    "must be greater than 0 (remove the entry instead)",
                );
            }
            sum += u64::from(s.weight);
        }
        if sum != u64::from(SPLIT_BUCKETS) {
            c.err(
                split.line,
                format!("{key}.split"),
                format!(
                    "weights add up to {sum}; they must add up to {SPLIT_BUCKETS} (parts of 10000)"
                ),
            );
        }
    }
    if let Some(k) = &r.split_key {
        if r.split.is_none() {
            c.err(
                k.line,
                format!("{key}.split_key"),
                "split_key needs a `split`",
            );
        }
        if let Err(msg) = crate::upstream::split::SplitKey::parse(k) {
            c.err(k.line, format!("{key}.split_key"), msg);
        }
    }
    if let Some(d) = &r.direct_response {
        if !(200..=599).contains(&d.status) {
            c.err(
                d.line,
                format!("{key}.direct_response.status"),
                "must be between 200 and 599",
            );
        }
        for (name, value) in &d.headers {
            check_header_pair(
                c,
                d.line,
                format!("{key}.direct_response.headers"),
                name,
                value,
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        match (&rw.strip_prefix, &rw.replace_prefix) {
            (Some(p), None) => {
                check_path_literal(c, rw.line, format!("{key}.rewrite.strip_prefix"), p)
            }
            (None, Some(rp)) => {
                check_path_literal(
                    c,
                    rw.line,
                    format!("{key}.rewrite.replace_prefix.from"),
                    &rp.from,
                );
                check_path_literal(
                    c,
                    rw.line,
                    format!("{key}.rewrite.replace_prefix.to"),
                    &rp.to,
                );
            }
            _ => c.err(
                rw.line,
                format!("{key}.rewrite"),
                "give exactly one of `strip_prefix` or `replace_prefix`",
            ),
        }
        if r.direct_response.is_some() {
            c.err(
                rw.line,
                format!("{key}.rewrite"),
                "a direct_response route has nothing to rewrite",
            );
        }
    }
    if let Some(t) = &r.timeout_ms {
        check_timeout(c, t, format!("{key}.timeout_ms"));
    }
    if let Some(retries) = &r.retries {
        check_retries(c, r, retries, &key);
    }
    match (&r.auth, &config.defaults.auth) {
        (Some(a), _) => check_auth(c, config, a, format!("{key}.auth")),
        (None, Some(_)) => {}
        (None, None) => c.err(
            r.line,
            format!("{key}.auth"),
            "route has no `auth` and `defaults` sets none: state `auth: none` explicitly for a public route",
        ),
    }
    if r.request.max_body_bytes == Some(0) {
        c.err(
            r.line,
            format!("{key}.request.max_body_bytes"),
            "must be greater than 0",
        );
    }
    if let Some(ct) = &r.request.content_types {
        for t in ct.iter() {
            let ok = t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && a != "*" && !t.contains(';') && !t.contains(' ')
            });
            if !ok {
                c.err(
                    ct.line,
                    format!("{key}.request.content_types"),
                    format!("`{t}` is not a media type such as application/json or text/*"),
                );
            }
        }
    }
    for (j, h) in r.request.required_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            c.err(
                h.line,
                format!("{key}.request.required_headers[{j}]"),
                format!("`{}` is not a valid header name", h.value),
            );
        }
    }
    for (dir, ops) in [
        ("request", &r.headers.request),
        ("response", &r.headers.response),
    ] {
        for (name, value) in &ops.set {
            check_header_pair(c, r.line, format!("{key}.headers.{dir}.set"), name, value);
        }
        for name in &ops.remove {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.err(
                    r.line,
                    format!("{key}.headers.{dir}.remove"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
    if let Some(az) = &r.authorization {
        let public = match (&r.auth, &config.defaults.auth) {
            (Some(a), _) | (None, Some(a)) => {
                matches!(&a.value, AuthSpec::Keyword(k) if k == "none")
            }
            _ => true,
        };
        if public {
            c.err(
                az.line,
                format!("{key}.authorization"),
                "authorization needs an authenticated route (auth is none)",
            );
        }
    }
    check_limit_refs(
        c,
        config,
        &r.rate_limits,
        &format!("{key}.rate_limits"),
        &config.defaults.rate_limits,
    );
    c.unsupported(&r.cache, format!("{key}.cache"), "cache issue");
    c.unsupported(&r.cors, format!("{key}.cors"), "transform issue");
    c.unsupported(&r.mirror, format!("{key}.mirror"), "shadow traffic issue");
}

fn check_header_pair(c: &mut Checker, line: u32, key: String, name: &str, value: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.err(
            line,
            key.clone(),
            format!("`{name}` is not a valid header name"),
        );
    }
    if http::HeaderValue::from_str(value).is_err() {
        c.err(
            line,
            key,
            format!("the value of `{name}` is not a valid header value"),
        );
    }
}

fn check_path_literal(c: &mut Checker, line: u32, key: String, p: &str) {
    if !p.starts_with('/') {
        c.err(line, key, format!("`{p}` must start with `/`"));
    } else if crate::router::normalize::normalize_path(p, false).as_deref() != Ok(p) {
        c.err(
            line,
            key,
            format!("`{p}` is not in normalized form (no `//`, `.` or `..` segments, no encoded unreserved characters)"),
        );
    }
}

fn check_path_match(c: &mut Checker, p: &Located<PathMatch>, key: String) {
    let set = [p.exact.is_some(), p.prefix.is_some(), p.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set != 1 {
        c.err(
            p.line,
            key,
            "give exactly one of `exact`, `prefix` or `regex`",
        );
        return;
    }
    if let Some(e) = &p.exact {
        check_path_literal(c, p.line, format!("{key}.exact"), e);
    }
    if let Some(pre) = &p.prefix {
        check_path_literal(c, p.line, format!("{key}.prefix"), pre);
    }
    if let Some(re) = &p.regex {
        if let Err(e) = regex::Regex::new(re) {
            c.err(
                p.line,
                format!("{key}.regex"),
                format!("invalid regex: {}", regex_error(&e)),
            );
        }
    }
}

/// `api.example.com` or `*.example.com`; compared case-insensitively.
pub fn check_host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if h == "*" {
        return Err("`*` alone is not a host pattern: omit `hosts` to match every host".into());
    }
    let ok = !name.is_empty()
        && !name.contains('*')
        && !name.contains(':')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a host name or a `*.suffix` wildcard (no port)"
        ))
    }
}

/// Reports pairs of routes that no request can tell apart: on the hosts they share, with the
/// same path match, header predicates and priority and overlapping methods, the one later in
/// the file can never be chosen for those methods.
fn check_shadowing(c: &mut Checker, config: &Config) {
    struct Key {
        hosts: BTreeSet<String>,
        path: String,
        headers: BTreeSet<String>,
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
                priority: r.priority,
                methods: m
                    .methods
                    .as_ref()
                    .map(|ms| ms.iter().map(|s| s.0.clone()).collect()),
            }
        })
        .collect();
    for (j, b) in keys.iter().enumerate() {
        for (i, a) in keys[..j].iter().enumerate() {
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
                && a.priority == b.priority
            {
                let first = &config.routes[i];
                let second = &config.routes[j];
                c.err(
                    second.line,
                    format!("routes[{j}]"),
                    format!(
                        "route `{}` is shadowed by route `{}` (line {}): same hosts, path match, \
                         header predicates and priority with overlapping methods, so file order \
                         alone would decide; give one a different priority, methods or headers",
                        second.name.value, first.name.value, first.line
                    ),
                );
            }
        }
    }
}

/// regex's error text spans several lines (pattern, caret, message); keep it on one.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let message = text
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ");
    match text.lines().nth(1) {
        Some(pattern) => format!("{message} in `{}`", pattern.trim()),
        None => message.to_string(),
    }
}

fn check_balancing(c: &mut Checker, u: &Located<Upstream>, key: &str) {
    match (&u.load_balancing.value, &u.hash_key) {
        (LoadBalancing::ConsistentHash, None) => c.err(
            u.load_balancing.line,
            format!("{key}.hash_key"),
            "consistent_hash needs a hash_key (header:NAME, cookie:NAME or client_ip)",
        ),
        (LoadBalancing::ConsistentHash, Some(k)) => {
            if k.starts_with("claim:") {
                c.err(
                    k.line,
                    format!("{key}.hash_key"),
                    "claim: keys are not supported yet (authentication issue)",
                );
            } else if let Err(msg) = crate::upstream::split::SplitKey::parse(k) {
                c.err(
                    k.line,
                    format!("{key}.hash_key"),
                    msg.replace("split key", "hash key"),
                );
            }
        }
        (_, Some(k)) => c.err(
            k.line,
            format!("{key}.hash_key"),
            "hash_key is only used with load_balancing: consistent_hash",
        ),
        (_, None) => {}
    }
}

fn check_health_check(c: &mut Checker, hc: &Located<HealthCheck>, key: &str) {
    let hkey = format!("{key}.health_check");
    if !hc.path.starts_with('/') {
        c.err(hc.line, format!("{hkey}.path"), "must start with `/`");
    }
    if !(100..=300_000).contains(&hc.interval_ms) {
        c.err(
            hc.line,
            format!("{hkey}.interval_ms"),
            "must be between 100 and 300000",
        );
    }
    if hc.timeout_ms == 0 || hc.timeout_ms > hc.interval_ms {
        c.err(
            hc.line,
            format!("{hkey}.timeout_ms"),
            "must be greater than 0 and at most interval_ms",
        );
    }
    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
        c.err(
            hc.line,
            hkey,
            "healthy_threshold and unhealthy_threshold must be at least 1",
        );
    }
}

fn check_retries(c: &mut Checker, r: &Located<Route>, retries: &Located<Retries>, key: &str) {
    if retries.attempts.value > MAX_RETRY_ATTEMPTS {
        c.err(
            retries.attempts.line,
            format!("{key}.retries.attempts"),
            format!(
                "{} extra attempts is above the maximum of {MAX_RETRY_ATTEMPTS}: each layer that \
                 retries multiplies the load on an upstream that is already failing (a retry storm)",
                retries.attempts.value
            ),
        );
    }
    for cond in &retries.on {
        if crate::upstream::retry::RetryOn::parse(cond).is_none() {
            c.err(
                cond.line,
                format!("{key}.retries.on"),
                format!("`{}` is not a retry condition: use connect_failure, reset, timeout or a status code such as \"503\"", cond.value),
            );
        }
    }
    if let Some(t) = &retries.per_try_timeout_ms {
        if t.value == 0 || t.value > MAX_TIMEOUT_MS {
            c.err(
                t.line,
                format!("{key}.retries.per_try_timeout_ms"),
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            );
        }
    }
    if retries.backoff_ms > 10_000 {
        c.err(
            retries.line,
            format!("{key}.retries.backoff_ms"),
            "must be at most 10000",
        );
    }
    if retries.max_replay_bytes > 16 * 1024 * 1024 {
        c.err(
            retries.line,
            format!("{key}.retries.max_replay_bytes"),
            "must be at most 16777216",
        );
    }
    if r.direct_response.is_some() {
        c.err(
            retries.line,
            format!("{key}.retries"),
            "a direct_response route has nothing to retry",
        );
    }
}

fn check_dns(c: &mut Checker, dns: &DnsConfig) {
    for n in &dns.nameservers {
        if n.parse::<SocketAddr>().is_err() {
            c.err(
                0,
                "dns.nameservers",
                format!("`{n}` is not an IP:port address"),
            );
        }
    }
    if dns.min_ttl_s == 0 || dns.min_ttl_s > dns.max_ttl_s {
        c.err(
            0,
            "dns.min_ttl_s",
            "must be at least 1 and at most max_ttl_s",
        );
    }
    if !(100..=30_000).contains(&dns.timeout_ms) {
        c.err(0, "dns.timeout_ms", "must be between 100 and 30000");
    }
}

fn check_observability(c: &mut Checker, o: &Observability) {
    if let Some(a) = &o.access_log {
        if !(1..=1_000_000).contains(&a.queue_size) {
            c.err(
                0,
                "observability.access_log.queue_size",
                "must be between 1 and 1000000",
            );
        }
        if !(0.0..=1.0).contains(&a.sample_2xx) {
            c.err(
                0,
                "observability.access_log.sample_2xx",
                "must be between 0.0 and 1.0",
            );
        }
        if a.destination.is_empty() {
            c.err(
                0,
                "observability.access_log.destination",
                "must be stdout, stderr or a file path",
            );
        }
    }
    if let Some(otlp) = &o.otlp {
        check_otlp(c, otlp, o.trace_context.enabled);
    }
    if let Some(h) = &o.trace_context.response_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            c.err(
                0,
                "observability.trace_context.response_header",
                format!("`{h}` is not a valid header name"),
            );
        }
    }
}

fn check_otlp(c: &mut Checker, o: &OtlpConfig, trace_context: bool) {
    if let Err(e) = crate::observe::otlp::endpoint(&o.endpoint) {
        c.err(0, "observability.otlp.endpoint", e);
    }
    if !trace_context {
        c.err(
            0,
            "observability.otlp",
            "span export needs observability.trace_context.enabled: true",
        );
    }
    if !(0.0..=1.0).contains(&o.sample_ratio) {
        c.err(
            0,
            "observability.otlp.sample_ratio",
            "must be between 0.0 and 1.0",
        );
    }
    if !(1..=10_000).contains(&o.batch_size) {
        c.err(
            0,
            "observability.otlp.batch_size",
            "must be between 1 and 10000",
        );
    }
    if !(1..=1_000_000).contains(&o.queue_size) {
        c.err(
            0,
            "observability.otlp.queue_size",
            "must be between 1 and 1000000",
        );
    }
    if !(10..=60_000).contains(&o.export_interval_ms) {
        c.err(
            0,
            "observability.otlp.export_interval_ms",
            "must be between 10 and 60000",
        );
    }
    if !(10..=60_000).contains(&o.timeout_ms) {
        c.err(
            0,
            "observability.otlp.timeout_ms",
            "must be between 10 and 60000",
        );
    }
    for (k, v) in &o.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            c.err(
                0,
                "observability.otlp.headers",
                format!("`{k}` is not a valid header"),
            );
        }
    }
}

fn check_rate_limits(c: &mut Checker, config: &Config) {
    for (i, l) in config.rate_limits.iter().enumerate() {
        let key = format!("rate_limits[{i}]");
        c.name(&l.name, format!("{key}.name"));
        let bucket = l.algorithm.value == RateAlgorithm::TokenBucket;
        let (want, other) = if bucket {
            (
                [
                    ("capacity", l.capacity.as_ref().map(|v| v.line)),
                    (
                        "refill_per_second",
                        l.refill_per_second.as_ref().map(|v| v.line),
                    ),
                ],
                [
                    ("limit", l.limit.as_ref().map(|v| v.line)),
                    ("window_s", l.window_s.as_ref().map(|v| v.line)),
                ],
            )
        } else {
            (
                [
                    ("limit", l.limit.as_ref().map(|v| v.line)),
                    ("window_s", l.window_s.as_ref().map(|v| v.line)),
                ],
                [
                    ("capacity", l.capacity.as_ref().map(|v| v.line)),
                    (
                        "refill_per_second",
                        l.refill_per_second.as_ref().map(|v| v.line),
                    ),
                ],
            )
        };
        let algo = if bucket {
            "token_bucket"
        } else {
            "sliding_window"
        };
        for (field, line) in want {
            if line.is_none() {
                c.err(
                    l.algorithm.line,
                    format!("{key}.{field}"),
                    format!("{algo} needs `{field}`"),
                );
            }
        }
        for (field, line) in other {
            if let Some(line) = line {
                c.err(
                    line,
                    format!("{key}.{field}"),
                    format!("`{field}` does not apply to {algo}"),
                );
            }
        }
        for v in [&l.capacity, &l.limit].into_iter().flatten() {
            if !(1..=1_000_000_000).contains(&v.value) {
                c.err(v.line, key.clone(), "must be between 1 and 1000000000");
            }
        }
        if let Some(r) = &l.refill_per_second {
            if !(r.value > 0.0 && r.value <= 1_000_000.0) {
                c.err(
                    r.line,
                    format!("{key}.refill_per_second"),
                    "must be above 0 and at most 1000000",
                );
            }
        }
        if let Some(w) = &l.window_s {
            if !(1..=86_400).contains(&w.value) {
                c.err(
                    w.line,
                    format!("{key}.window_s"),
                    "must be between 1 and 86400",
                );
            }
        }
        let mut parts = BTreeSet::new();
        for k in &l.key {
            if let Err(e) = crate::ratelimit::key::KeyPart::parse(k) {
                c.err(k.line, format!("{key}.key"), e);
            } else if !parts.insert(&*k.value.0) {
                c.err(
                    k.line,
                    format!("{key}.key"),
                    format!("`{}` is listed twice", k.value),
                );
            }
        }
        if !(1..=10_000_000).contains(&l.max_keys) {
            c.err(
                l.name.line,
                format!("{key}.max_keys"),
                "must be between 1 and 10000000",
            );
        }
        if l.store == RateStore::Redis && config.redis.is_none() {
            c.err(
                l.name.line,
                format!("{key}.store"),
                "store: redis needs a top-level `redis` section",
            );
        }
    }
    c.duplicates(
        "rate limit",
        config
            .rate_limits
            .iter()
            .enumerate()
            .map(|(i, l)| (&l.name, format!("rate_limits[{i}].name"))),
    );
    check_limit_refs(
        c,
        config,
        &config.defaults.rate_limits,
        "defaults.rate_limits",
        &[],
    );
    if let Some(r) = &config.redis {
        if let Err(e) = crate::ratelimit::redis::check_url(&r.url) {
            c.err(r.url.line, "redis.url", e);
        }
        if !(1..=10_000).contains(&r.timeout_ms) {
            c.err(r.line, "redis.timeout_ms", "must be between 1 and 10000");
        }
        if r.breaker_failures == 0 {
            c.err(r.line, "redis.breaker_failures", "must be at least 1");
        }
        if !(10..=600_000).contains(&r.breaker_open_ms) {
            c.err(
                r.line,
                "redis.breaker_open_ms",
                "must be between 10 and 600000",
            );
        }
    }
}

/// A route's (or the defaults') list of limit names: each defined, none twice, none already
/// applied by the defaults.
fn check_limit_refs(
    c: &mut Checker,
    config: &Config,
    names: &[Located<super::Text>],
    key: &str,
    defaults: &[Located<super::Text>],
) {
    let mut seen = BTreeSet::new();
    for n in names {
        if !config.rate_limits.iter().any(|l| l.name.value == n.value) {
            c.err(n.line, key, format!("unknown rate limit `{}`", n.value));
        } else if defaults.iter().any(|d| d.value == n.value) {
            c.err(
                n.line,
                key,
                format!(
                    "`{}` is already applied to every route by defaults.rate_limits",
                    n.value
                ),
            );
        } else if !seen.insert(&*n.value.0) {
            c.err(n.line, key, format!("`{}` is listed twice", n.value));
        }
    }
}
