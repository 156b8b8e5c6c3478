//! `cors`: the CORS protocol of the Fetch standard, answered at the gateway.
//!
//! - A preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) is answered here, in
//!   the early-answer phase, before credentials are asked for, and never forwarded. One the
//!   policy refuses gets a 204 without any allow header: the browser then stops the request.
//! - Every other response of the route, the upstream's and the gateway's own (401, 429, 503…)
//!   alike, gets `Access-Control-Allow-Origin` for an allowed origin, so a browser app can read
//!   why it failed; the upstream's own `Access-Control-*` headers are replaced.
//! - `Vary: Origin` is on every response whose CORS headers depend on the origin (all but the
//!   non-credentialed `*` policy), with or without an `Origin`, so a shared cache never hands one
//!   origin's answer to another.
//! - A config that would let any site read credentialed responses (`allow_credentials` with `*`)
//!   is refused when loaded, not discovered in production.

use crate::body::ResponseBody;
use crate::config::{Cors as CorsConfig, Diag, Located, Text};
use crate::policy::vary::add_vary;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};

/// Browsers cap the preflight cache at 2 h (Chromium) or less; a longer one only delays a policy
/// change for the clients that would honour it.
pub const MAX_AGE_LIMIT_S: u64 = 7200;

const PRIVATE_NETWORK_REQUEST: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const PRIVATE_NETWORK_ALLOW: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// The headers this policy owns on a response.
const OWNED: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// A serialized origin, lowercase, without a default port (`null` included, when listed).
    Exact(String),
    /// `scheme://*.suffix[:port]`: any host of one or more labels in front of `.suffix`.
    Subdomains {
        scheme: String,
        /// With its leading dot.
        suffix: String,
        port: Option<u16>,
    },
}

/// Names, and whether `*` (all, for non-credentialed requests) was listed too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed<T> {
    any: bool,
    names: Vec<T>,
}

/// Why a cross-origin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method,
    Headers,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Origin, Refusal::Method, Refusal::Headers];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Method => "method",
            Refusal::Headers => "headers",
        }
    }

    /// For the access log.
    pub fn log_value(self, enforced: bool) -> &'static str {
        match (self, enforced) {
            (Refusal::Origin, true) => "refused:origin",
            (Refusal::Method, true) => "refused:method",
            (Refusal::Headers, true) => "refused:headers",
            (Refusal::Origin, false) => "would_refuse:origin",
            (Refusal::Method, false) => "would_refuse:method",
            (Refusal::Headers, false) => "would_refuse:headers",
        }
    }
}

/// Counters per route, kept across reloads (in the route's metrics).
#[derive(Debug, Default)]
pub struct CorsCounters {
    pub preflights: AtomicU64,
    /// By `Refusal`, enforced.
    pub refused: [AtomicU64; 3],
    /// By `Refusal`, in `report_only` mode.
    pub would_refuse: [AtomicU64; 3],
}

impl CorsCounters {
    fn count(&self, r: Refusal, enforced: bool) {
        let by = if enforced {
            &self.refused
        } else {
            &self.would_refuse
        };
        by[r as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// `*`: every origin (only without credentials).
    any_origin: bool,
    origins: Vec<OriginRule>,
    credentials: bool,
    methods: Listed<Method>,
    headers: Listed<HeaderName>,
    allow_methods_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    max_age_value: Option<HeaderValue>,
    private_network: bool,
    pub report_only: bool,
}

/// What a preflight gets: the gateway's answer (none in report-only mode: it goes on
/// upstream), and what the policy refused, for the log.
pub struct Preflight {
    pub response: Option<Response<ResponseBody>>,
    pub refused: Option<Refusal>,
}

impl CorsPolicy {
    /// Builds `cors` at `key` (`routes[0].cors`, `defaults.cors`).
    pub fn build(c: &Located<CorsConfig>, key: &str, diag: &mut Diag) -> Option<CorsPolicy> {
        let mark = diag.mark();
        let credentials = c.allow_credentials.as_ref().is_some_and(|b| b.value);
        let cred_line = c.allow_credentials.as_ref().map_or(c.line, |b| b.line);
        let origins_key = format!("{key}.allow_origins");
        let mut any_origin = false;
        let mut origins = Vec::new();
        if c.allow_origins.value.is_empty() {
            diag.err(
                c.allow_origins.line,
                &origins_key,
                "list at least one origin (or `*`)",
            );
        }
        for o in &c.allow_origins.value {
            if &*o.value.0 == "*" {
                any_origin = true;
                if credentials {
                    diag.err(
                        o.line,
                        &origins_key,
                        format!(
                            "`*` with allow_credentials (line {cred_line}) would let every site \
                             read responses made with its visitors' cookies; list the origins"
                        ),
                    );
                }
                continue;
            }
            match parse_rule(&o.value) {
                Ok(rule) if origins.contains(&rule) => diag.err(
                    o.line,
                    &origins_key,
                    format!("`{}` is listed twice", o.value),
                ),
                Ok(rule) => origins.push(rule),
                Err(why) => diag.err(o.line, &origins_key, format!("`{}`: {why}", o.value)),
            }
        }
        if any_origin && !origins.is_empty() {
            diag.err(
                c.allow_origins.line,
                &origins_key,
                "`*` already allows every origin: list origins or `*`, not both",
            );
        }
        let methods = listed(
            c.allow_methods.as_ref(),
            credentials,
            false,
            &format!("{key}.allow_methods"),
            diag,
            |m| {
                Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| m.bytes().all(|b| b.is_ascii_graphic()))
            },
            "is not a method",
        )
        .unwrap_or_else(|| Listed {
            any: false,
            names: vec![Method::GET, Method::HEAD, Method::POST],
        });
        let headers = listed(
            c.allow_headers.as_ref(),
            credentials,
            true,
            &format!("{key}.allow_headers"),
            diag,
            |h| HeaderName::from_bytes(h.as_bytes()).ok(),
            "is not a header name",
        )
        .unwrap_or(Listed {
            any: false,
            names: Vec::new(),
        });
        let expose = listed(
            c.expose_headers.as_ref(),
            credentials,
            false,
            &format!("{key}.expose_headers"),
            diag,
            |h| HeaderName::from_bytes(h.as_bytes()).ok(),
            "is not a header name",
        );
        if let Some(m) = &c.max_age_s {
            if m.value > MAX_AGE_LIMIT_S {
                diag.err(
                    m.line,
                    format!("{key}.max_age_s"),
                    format!(
                        "{} s is above the {MAX_AGE_LIMIT_S} s maximum: browsers cap it anyway, \
                         and a long preflight cache delays every policy change",
                        m.value
                    ),
                );
            }
        }
        if !diag.clean_since(mark) {
            return None;
        }
        let allow_methods_value = joined(methods.any, methods.names.iter().map(Method::as_str));
        let expose_value =
            expose.and_then(|e| joined(e.any, e.names.iter().map(HeaderName::as_str)));
        Some(CorsPolicy {
            any_origin,
            origins,
            credentials,
            methods,
            headers,
            allow_methods_value,
            expose_value,
            max_age_value: c.max_age_s.as_ref().map(|m| HeaderValue::from(m.value)),
            private_network: c.allow_private_network,
            report_only: c.report_only,
        })
    }

    /// Whether the CORS headers depend on the request's origin (then `Vary: Origin`).
    fn varies(&self) -> bool {
        !self.any_origin || self.credentials
    }

    fn allows_origin(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let Some(parsed) = parse_origin(origin.as_bytes()) else {
            return false;
        };
        self.origins.iter().any(|rule| match rule {
            OriginRule::Exact(o) => o.eq_ignore_ascii_case(parsed.serialized),
            OriginRule::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                parsed.opaque.is_none()
                    && parsed.scheme.eq_ignore_ascii_case(scheme)
                    && parsed.port == *port
                    && parsed.host.len() > suffix.len()
                    && parsed.host.as_bytes()[..parsed.host.len() - suffix.len()]
                        .last()
                        .is_some_and(|b| *b != b'.')
                    && parsed.host[parsed.host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        })
    }

    /// `Access-Control-Allow-Origin` (and `-Credentials` when the policy allows them).
    fn insert_allow_origin(&self, value: HeaderValue, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Phase 3: answers a preflight (`requested` is its `Access-Control-Request-Method`). In
    /// report-only mode the decision is only counted and `None` returned: the request goes on.
    pub fn preflight(
        &self,
        requested: &Method,
        headers: &HeaderMap,
        counters: &CorsCounters,
    ) -> Option<Preflight> {
        let origin = headers.get(header::ORIGIN)?;
        let refused = self.check_preflight(origin, requested, headers);
        if let Some(r) = refused {
            counters.count(r, !self.report_only);
        }
        if self.report_only {
            return Some(Preflight {
                response: None,
                refused,
            });
        }
        counters.preflights.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(ResponseBody::Full(None));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        if refused.is_none() {
            self.insert_allow_origin(self.allow_origin_value(origin), h);
            if let Some(v) = &self.allow_methods_value {
                h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
            }
            match requested_headers(headers) {
                Ok(asked) if !asked.is_empty() => {
                    if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
                        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
                    }
                }
                _ => {}
            }
            if let Some(v) = &self.max_age_value {
                h.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            if self.private_network
                && headers
                    .get(PRIVATE_NETWORK_REQUEST)
                    .is_some_and(|v| v.as_bytes() == b"true")
            {
                h.insert(PRIVATE_NETWORK_ALLOW, HeaderValue::from_static("true"));
            }
        }
        // A preflight's answer depends on all three; no shared cache keeps it.
        add_vary(h, "origin");
        add_vary(h, "access-control-request-method");
        add_vary(h, "access-control-request-headers");
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(Preflight {
            response: Some(resp),
            refused,
        })
    }

    fn check_preflight(
        &self,
        origin: &HeaderValue,
        requested: &Method,
        headers: &HeaderMap,
    ) -> Option<Refusal> {
        if !self.allows_origin(origin) {
            return Some(Refusal::Origin);
        }
        // CORS-safelisted methods need no listing (Fetch: "CORS-safelisted method").
        let safelisted = matches!(*requested, Method::GET | Method::HEAD | Method::POST);
        let method_ok = safelisted || self.methods.any || self.methods.names.contains(requested);
        if !method_ok {
            return Some(Refusal::Method);
        }
        let asked = match requested_headers(headers) {
            Ok(asked) => asked,
            Err(()) => return Some(Refusal::Headers),
        };
        let all_allowed = asked.iter().all(|name| {
            self.headers.names.iter().any(|h| h.as_str() == name)
                // `*` never covers `Authorization` (Fetch: "CORS non-wildcard request-header
                // name"): it must be listed.
                || (self.headers.any && name != "authorization")
        });
        (!all_allowed).then_some(Refusal::Headers)
    }

    /// Phase 12, on every other response of the route: the allow headers for an allowed
    /// origin, `Vary: Origin`, and the upstream's own CORS headers replaced. Returns the
    /// refusal to record when the origin is not allowed.
    pub fn apply(
        &self,
        origin: Option<&HeaderValue>,
        headers: &mut HeaderMap,
        counters: &CorsCounters,
    ) -> Option<Refusal> {
        let allowed = origin.map(|o| self.allows_origin(o));
        if allowed == Some(false) {
            counters.count(Refusal::Origin, !self.report_only);
        }
        if self.report_only {
            return allowed.is_some_and(|a| !a).then_some(Refusal::Origin);
        }
        for name in &OWNED {
            headers.remove(name);
        }
        if self.varies() {
            add_vary(headers, "origin");
        }
        let allow_origin = match (origin, allowed) {
            (Some(o), Some(true)) => self.allow_origin_value(o),
            // The same answer for every origin and for none: cacheable without `Vary`.
            (None, _) if !self.varies() => HeaderValue::from_static("*"),
            (Some(_), _) => return Some(Refusal::Origin),
            (None, _) => return None,
        };
        self.insert_allow_origin(allow_origin, headers);
        if let Some(v) = &self.expose_value {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        None
    }
}

/// `Access-Control-Request-Headers` as lowercase names (empty when absent); `Err` when it is
/// not a list of header names.
fn requested_headers(headers: &HeaderMap) -> Result<Vec<String>, ()> {
    let mut out = Vec::new();
    for v in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let s = v.to_str().map_err(|_| ())?;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = name.to_ascii_lowercase();
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| ())?;
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// A list of names, `*`, or (`mixed_ok`: headers) both; `*` with credentials is an error
/// (browsers then take it literally).
fn listed<T>(
    list: Option<&Located<Vec<Text>>>,
    credentials: bool,
    mixed_ok: bool,
    key: &str,
    diag: &mut Diag,
    parse: impl Fn(&str) -> Option<T>,
    not_what: &str,
) -> Option<Listed<T>> {
    let list = list?;
    let mut out = Listed {
        any: false,
        names: Vec::with_capacity(list.value.len()),
    };
    for v in &list.value {
        if &*v.0 == "*" {
            out.any = true;
            continue;
        }
        match parse(v) {
            Some(t) => out.names.push(t),
            None => diag.err(list.line, key, format!("`{v}` {not_what}")),
        }
    }
    if out.any && credentials {
        diag.err(
            list.line,
            key,
            "`*` has no wildcard meaning on credentialed requests (Fetch standard): list the names",
        );
    }
    if out.any && !out.names.is_empty() && !mixed_ok {
        diag.err(
            list.line,
            key,
            "`*` already allows all: list names or `*`, not both",
        );
    }
    Some(out)
}

fn joined<'a>(any: bool, names: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let s: Vec<&str> = any.then_some("*").into_iter().chain(names).collect();
    (!s.is_empty())
        .then(|| HeaderValue::from_str(&s.join(", ")).ok())
        .flatten()
}

/// An origin as a browser serializes it (`scheme://host[:port]`), or `null`.
struct ParsedOrigin<'a> {
    serialized: &'a str,
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
    /// `Some` for the opaque origin `null`.
    opaque: Option<()>,
}

fn parse_origin(raw: &[u8]) -> Option<ParsedOrigin<'_>> {
    let s = std::str::from_utf8(raw).ok()?;
    if s == "null" {
        return Some(ParsedOrigin {
            serialized: s,
            scheme: "",
            host: "",
            port: None,
            opaque: Some(()),
        });
    }
    let (scheme, rest) = s.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        let (h, p) = rest.split_at(end + 1);
        h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().ok()?;
        (h, p)
    } else {
        match rest.find(':') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    if !host_ok {
        return None;
    }
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u16 = p.parse().ok()?;
            (Some(n) != default_port(scheme)).then_some(n)
        }
        Some(_) => return None,
    };
    Some(ParsedOrigin {
        serialized: s,
        scheme,
        host,
        port,
        opaque: None,
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// One configured `allow_origins` entry.
fn parse_rule(entry: &str) -> Result<OriginRule, String> {
    if entry == "null" {
        return Ok(OriginRule::Exact("null".into()));
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err("an origin is `scheme://host[:port]`".into());
    };
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("an origin has no path, query or fragment (not even a trailing `/`)".into());
    }
    if let Some(suffix_and_port) = rest.strip_prefix("*.") {
        if scheme.contains('*') {
            return Err("the scheme cannot be a wildcard".into());
        }
        let probe = format!("{scheme}://x.{suffix_and_port}");
        let parsed = parse_origin(probe.as_bytes()).ok_or("not a valid origin pattern")?;
        let suffix = &parsed.host[1..];
        if suffix.contains('*') || suffix.starts_with('[') {
            return Err("only the leftmost label can be `*`".into());
        }
        if !suffix[1..].contains('.') {
            return Err(format!(
                "`*.{}` matches every site under a top-level domain: name the site",
                &suffix[1..]
            ));
        }
        return Ok(OriginRule::Subdomains {
            scheme: scheme.to_ascii_lowercase(),
            suffix: suffix.to_ascii_lowercase(),
            port: parsed.port,
        });
    }
    if entry.contains('*') {
        return Err(
            "a wildcard is only `scheme://*.domain`, as the leftmost label; for every origin use `*`"
                .into(),
        );
    }
    let parsed = parse_origin(entry.as_bytes()).ok_or("not a valid origin")?;
    let mut serialized = format!(
        "{}://{}",
        parsed.scheme.to_ascii_lowercase(),
        parsed.host.to_ascii_lowercase()
    );
    if let Some(p) = parsed.port {
        serialized.push_str(&format!(":{p}"));
    }
    Ok(OriginRule::Exact(serialized))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<CorsPolicy, Vec<String>> {
        crate::config::diag::build_yaml(yaml, |c: &Located<CorsConfig>, diag| {
            CorsPolicy::build(c, "cors", diag)
        })
        .map_err(|e| e.into_iter().map(|(_, _, m)| m).collect())
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn origins_exact_and_anchored_patterns() {
        let p = policy(
            "allow_origins: [\"https://App.example.com:443\", \"https://*.example.org\", \"http://*.dev.test:8080\"]",
        )
        .unwrap();
        for ok in [
            "https://app.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://x.dev.test:8080",
        ] {
            assert!(p.allows_origin(&hv(ok)), "{ok}");
        }
        for no in [
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://example.org",
            "https://.example.org",
            "https://evilexample.org",
            "https://a.example.org.evil",
            "http://a.example.org",
            "http://x.dev.test",
            "null",
            "https://a.example.org/",
            "https://a.example.org@evil.com",
            "https://a%2eexample.org",
        ] {
            assert!(!p.allows_origin(&hv(no)), "{no}");
        }
        // `null` only when listed exactly; never by a pattern.
        let p = policy("allow_origins: [\"null\"]").unwrap();
        assert!(p.allows_origin(&hv("null")));
    }

    #[test]
    fn dangerous_configs_are_refused() {
        let e = policy("allow_origins: [\"*\"]\nallow_credentials: true").unwrap_err();
        assert!(e[0].contains("every site"), "{e:?}");
        for (cfg, want) in [
            ("allow_origins: [\"https://*\"]", "wildcard is only"),
            ("allow_origins: [\"https://*.com\"]", "top-level"),
            ("allow_origins: [\"*://*.example.com\"]", "scheme"),
            ("allow_origins: [\"https://a.*.example.com\"]", "leftmost"),
            ("allow_origins: [\"https://app.example.com/\"]", "no path"),
            ("allow_origins: [\"app.example.com\"]", "scheme://"),
            ("allow_origins: []", "at least one"),
            ("allow_origins: [\"*\", \"https://a.example.com\"]", "not both"),
            ("allow_origins: [\"https://a.example.com\"]\nmax_age_s: 86400", "7200"),
            (
                "allow_origins: [\"https://a.example.com\"]\nallow_credentials: true\nallow_headers: [\"*\"]",
                "wildcard meaning",
            ),
            ("allow_origins: [\"https://a.example.com\"]\nallow_methods: [\"G T\"]", "not a method"),
        ] {
            let e = policy(cfg).unwrap_err();
            assert!(e.iter().any(|m| m.contains(want)), "{cfg}: {e:?}");
        }
    }

    fn preflight(p: &CorsPolicy, origin: &str, method: &str, asked: Option<&str>) -> Preflight {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, hv(origin));
        if let Some(a) = asked {
            h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, hv(a));
        }
        p.preflight(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &h,
            &CorsCounters::default(),
        )
        .unwrap()
    }

    fn answer(p: &Preflight) -> &HeaderMap {
        p.response.as_ref().unwrap().headers()
    }

    #[test]
    fn preflights_check_method_and_headers_and_wildcards_never_cover_authorization() {
        let p = policy("allow_origins: [\"https://a.example.com\"]\nallow_methods: [GET, PUT]\nallow_headers: [authorization, x-trace]\nmax_age_s: 600").unwrap();
        let ok = preflight(
            &p,
            "https://a.example.com",
            "PUT",
            Some("X-Trace, Authorization"),
        );
        assert_eq!(ok.refused, None);
        let h = answer(&ok);
        assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-trace, authorization");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert_eq!(
            preflight(&p, "https://a.example.com", "DELETE", None).refused,
            Some(Refusal::Method)
        );
        // Methods are case-sensitive; safelisted ones need no listing.
        assert_eq!(
            preflight(&p, "https://a.example.com", "put", None).refused,
            Some(Refusal::Method)
        );
        assert_eq!(
            preflight(&p, "https://a.example.com", "POST", None).refused,
            None
        );
        let no = preflight(&p, "https://a.example.com", "PUT", Some("x-other"));
        assert_eq!(no.refused, Some(Refusal::Headers));
        assert!(answer(&no).get("access-control-allow-origin").is_none());
        let no = preflight(&p, "https://b.example.com", "GET", None);
        assert_eq!(no.refused, Some(Refusal::Origin));
        assert_eq!(no.response.unwrap().status(), StatusCode::NO_CONTENT);

        let listed =
            policy("allow_origins: [\"*\"]\nallow_headers: [\"*\", authorization]").unwrap();
        assert_eq!(
            preflight(&listed, "https://x.test", "GET", Some("authorization, x-a")).refused,
            None
        );
        let any = policy("allow_origins: [\"*\"]\nallow_headers: [\"*\"]").unwrap();
        let r = preflight(&any, "https://x.test", "GET", Some("x-anything"));
        assert_eq!(r.refused, None);
        assert_eq!(answer(&r)["access-control-allow-origin"], "*");
        assert_eq!(
            preflight(&any, "https://x.test", "GET", Some("authorization")).refused,
            Some(Refusal::Headers)
        );
    }

    #[test]
    fn responses_get_the_origin_and_vary_merged() {
        let p = policy("allow_origins: [\"https://a.example.com\"]\nallow_credentials: true\nexpose_headers: [x-total]").unwrap();
        let c = CorsCounters::default();
        let mut h = HeaderMap::new();
        h.insert(header::VARY, hv("Accept-Encoding, origin"));
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, hv("*"));
        assert_eq!(
            p.apply(Some(&hv("https://a.example.com")), &mut h, &c),
            None
        );
        assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-total");
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::VARY], "Accept-Encoding, origin");

        let mut h = HeaderMap::new();
        assert_eq!(
            p.apply(Some(&hv("https://evil.test")), &mut h, &c),
            Some(Refusal::Origin)
        );
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h[header::VARY], "origin");
        assert_eq!(c.refused[0].load(Ordering::Relaxed), 1);

        let mut h = HeaderMap::new();
        assert_eq!(p.apply(None, &mut h, &c), None);
        assert_eq!(h[header::VARY], "origin", "no Origin still varies");

        let any = policy("allow_origins: [\"*\"]").unwrap();
        let mut h = HeaderMap::new();
        any.apply(None, &mut h, &c);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get(header::VARY).is_none());
    }

    #[test]
    fn report_only_changes_nothing_and_counts() {
        let p = policy("allow_origins: [\"https://a.example.com\"]\nreport_only: true").unwrap();
        let c = CorsCounters::default();
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, hv("https://evil.test"));
        let pf = p.preflight(&Method::PUT, &h, &c).unwrap();
        assert!(pf.response.is_none());
        assert_eq!(pf.refused, Some(Refusal::Origin));
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, hv("https://evil.test"));
        assert_eq!(
            p.apply(Some(&hv("https://evil.test")), &mut resp, &c),
            Some(Refusal::Origin)
        );
        assert_eq!(resp["access-control-allow-origin"], "https://evil.test");
        assert!(resp.get(header::VARY).is_none());
        assert_eq!(c.would_refuse[0].load(Ordering::Relaxed), 2);
        assert_eq!(c.refused[0].load(Ordering::Relaxed), 0);
    }
}
