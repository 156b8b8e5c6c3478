//! One route in compiled form: its match rules and action, and one field per per-route
//! capability, each built by the module that owns the capability. Adding a capability is one
//! field here, one line in `build`, and one line in the pipeline.

use crate::auth::{AuthPolicy, Authorize};
use crate::cache::RoutePolicy;
use crate::config::names::Names;
use crate::config::{AuthSpec, Config, Defaults, Diag, LimitRef, Located, Route, Text};
use crate::edge::rules::RuleSet;
use crate::edge::EdgeSpec;
use crate::policy::compression::CompressionPolicy;
use crate::policy::cors::CorsPolicy;
use crate::policy::direct_response::DirectResponse;
use crate::policy::fault::FaultPolicy;
use crate::policy::header_ops::HeaderOps;
use crate::policy::json_shape::JsonShape;
use crate::policy::redirect::Redirect;
use crate::policy::request_rules::RequestRules;
use crate::policy::rewrite::Rewrite;
use crate::ratelimit::spec::resolve as resolve_limits;
use crate::router::RouteMatcher;
use crate::shadow::MirrorPolicy;
use crate::upstream::fallback::FallbackPolicy;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::spec::MAX_TIMEOUT_MS;
use crate::upstream::split::Split;
use std::sync::Arc;
use std::time::Duration;

pub enum Action {
    /// Position in the snapshot's upstreams.
    Upstream(usize),
    Split(Split),
    Direct(DirectResponse),
    Redirect(Redirect),
}

/// Everything the config alone decides about one route. The snapshot adds the shared state
/// it uses (metrics, limiter counters, auth providers): see `snapshot::LiveRoute`.
pub struct RouteRules {
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: Option<Rewrite>,
    pub timeout: Duration,
    pub retry: Option<RetryPolicy>,
    pub request: RequestRules,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub auth: AuthPolicy,
    pub authorize: Option<Authorize>,
    /// Positions of the limits this route applies after the defaults' (see `RouteDefaults`).
    pub rate_limits: Vec<usize>,
    /// `{ by_plan: true }`: the consumer's plan's limits and quotas apply after those.
    pub by_plan: bool,
    /// The route's own, or the defaults'.
    pub cors: Option<Arc<CorsPolicy>>,
    /// The route's own, or the defaults'.
    pub compression: Option<Arc<CompressionPolicy>>,
    /// `response.json`: response bodies shaped in phase 13.
    pub response_json: Option<Arc<JsonShape>>,
    /// The suffixes of the route's `{tenant}.suffix` hosts (`.api.example.com`): a request
    /// matched through one has that label as its tenant.
    pub tenant_suffixes: Box<[String]>,
    /// Positions in the snapshot's `ip_rules`, checked after routing, before authentication.
    pub ip_rules: Vec<usize>,
    /// The configurable edge rules the route applies (its own selection or the defaults').
    pub edge_rules: Option<Arc<RuleSet>>,
    /// What the route stores in and serves from the response cache.
    pub cache: Option<Arc<RoutePolicy>>,
    /// Where a bodiless request goes when the primary upstream fails.
    pub fallback: Option<FallbackPolicy>,
    /// A copy of sampled requests to a candidate upstream, compared or not.
    pub mirror: Option<MirrorPolicy>,
    /// Delays and aborts injected into a share of requests.
    pub fault: Option<FaultPolicy>,
}

/// The articles' "internal services exposed publicly": a public route (auth none) that reaches
/// an `exposure: internal` upstream — as its upstream, in its split, or as its fallback — while
/// some listener is not `internal` (routes are served on every listener).
fn check_internal_exposure(r: &Located<Route>, config: &Config, key: &str, diag: &mut Diag) {
    let Some(open) = config.listeners.iter().find(|l| !l.internal) else {
        return;
    };
    let reached = r
        .upstream
        .iter()
        .map(|u| &u.value)
        .chain(
            r.split
                .iter()
                .flat_map(|s| s.iter().map(|e| &e.upstream.value)),
        )
        .chain(r.fallback.iter().map(|f| &f.upstream.value));
    for name in reached {
        let internal = config
            .upstreams
            .iter()
            .any(|u| u.name.value == *name && u.exposure == crate::config::Exposure::Internal);
        if internal {
            diag.err(
                r.line,
                key,
                format!(
                    "route `{}` reaches internal upstream `{name}` without authentication on \
                     listener `{}`, which is not internal: add auth, mark the listener \
                     `internal: true`, or say `expose_internal: true` if that is meant",
                    r.name.value, open.name.value
                ),
            );
        }
    }
}

/// A route's `rate_limits` entries: the limit names, and whether `{ by_plan: true }` is one.
fn split_limit_refs(
    refs: &[Located<LimitRef>],
    key: &str,
    plans: bool,
    diag: &mut Diag,
) -> (Vec<Located<Text>>, bool) {
    let mut names = Vec::with_capacity(refs.len());
    let mut by_plan = false;
    for r in refs {
        match &r.value {
            LimitRef::Name(n) => names.push(Located::new(n.clone(), r.line)),
            LimitRef::ByPlan(b) if !b.by_plan => diag.err(
                r.line,
                format!("{key}.rate_limits"),
                "`by_plan: false` applies nothing: remove it",
            ),
            LimitRef::ByPlan(_) if by_plan => diag.err(
                r.line,
                format!("{key}.rate_limits"),
                "`by_plan` is listed twice",
            ),
            LimitRef::ByPlan(_) if !plans => diag.err(
                r.line,
                format!("{key}.rate_limits"),
                "`by_plan` needs a top-level `plans` section",
            ),
            LimitRef::ByPlan(_) => by_plan = true,
        }
    }
    (names, by_plan)
}

/// `defaults`: what routes get when they do not say.
pub struct RouteDefaults {
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub drain_timeout: Duration,
    pub drain_delay: Duration,
    pub allow_encoded_slashes: bool,
    pub auth: Option<AuthPolicy>,
    /// Also answers for requests no route matched (their 404s carry it).
    pub cors: Option<Arc<CorsPolicy>>,
    pub compression: Option<Arc<CompressionPolicy>>,
}

impl RouteDefaults {
    pub fn build(d: &Defaults, config: &Config, names: &Names, diag: &mut Diag) -> Option<Self> {
        let mark = diag.mark();
        check_timeout(&d.timeout_ms, "defaults.timeout_ms", diag);
        if d.drain_delay_ms > 600_000 {
            diag.err(
                0,
                "defaults.drain_delay_ms",
                "must be at most 600000 (10 minutes)",
            );
        }
        if d.timeout_ms.value > d.drain_timeout_ms {
            diag.warn(
                d.timeout_ms.line,
                "defaults.timeout_ms",
                outlasts_drain(d.timeout_ms.value, d.drain_timeout_ms),
            );
        }
        let auth = d.auth.as_ref().map(|a| {
            AuthPolicy::build(a, "defaults.auth", &config.auth, names.mtls_listener, diag)
        });
        let cors = d
            .cors
            .as_ref()
            .map(|c| CorsPolicy::build(c, "defaults.cors", diag));
        let compression = d
            .compression
            .as_ref()
            .map(|c| CompressionPolicy::build(c, "defaults.compression", diag));
        if d.max_body_bytes == 0 {
            diag.err(0, "defaults.max_body_bytes", "must be greater than 0");
        }
        let defaults = RouteDefaults {
            timeout: Duration::from_millis(d.timeout_ms.value),
            max_body_bytes: d.max_body_bytes,
            drain_timeout: Duration::from_millis(d.drain_timeout_ms),
            drain_delay: Duration::from_millis(d.drain_delay_ms),
            allow_encoded_slashes: d.allow_encoded_slashes,
            auth: match auth {
                Some(a) => Some(a?),
                None => None,
            },
            cors: match cors {
                Some(c) => Some(Arc::new(c?)),
                None => None,
            },
            compression: match compression {
                Some(c) => Some(Arc::new(c?)),
                None => None,
            },
        };
        diag.ok_since(mark, defaults)
    }
}

fn check_timeout(t: &Located<u64>, key: &str, diag: &mut Diag) {
    if t.value == 0 {
        diag.err(t.line, key, "must be greater than 0");
    } else if t.value > MAX_TIMEOUT_MS {
        diag.err(
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

/// Warnings (`validate --strict` refuses them): what loads but is probably not meant.
#[allow(clippy::too_many_arguments)]
fn warn_risky(
    r: &Located<Route>,
    key: &str,
    config: &Config,
    public: bool,
    is_direct: bool,
    by_plan: bool,
    limit_names: &[Located<Text>],
    diag: &mut Diag,
) {
    // The default's own warning is given once, at `defaults` (see `RouteDefaults::build`).
    let drain_ms = config.defaults.drain_timeout_ms;
    if let Some(t) = r
        .timeout_ms
        .as_ref()
        .filter(|t| !is_direct && t.value > drain_ms)
    {
        diag.warn(
            t.line,
            format!("{key}.timeout_ms"),
            outlasts_drain(t.value, drain_ms),
        );
    }
    let limited = by_plan || !limit_names.is_empty() || !config.defaults.rate_limits.is_empty();
    if public && !is_direct && !limited {
        diag.warn(
            r.line,
            format!("{key}.rate_limits"),
            "a public route to an upstream without any rate limit: one client can send it everything",
        );
    }
}

fn outlasts_drain(timeout_ms: u64, drain_ms: u64) -> String {
    format!(
        "{timeout_ms} ms is longer than defaults.drain_timeout_ms ({drain_ms} ms): a request still waiting when the gateway drains is cut off"
    )
}

/// What every route is built against.
pub struct RouteInputs<'a> {
    pub config: &'a Config,
    pub names: &'a Names<'a>,
    /// `None` when the defaults section itself was invalid (routes are still checked).
    pub defaults: Option<&'a RouteDefaults>,
    /// The config file's folder: files a route names are relative to it.
    pub base: &'a std::path::Path,
}

/// Builds route `i`: its matcher and its rules.
pub fn build(
    r: &Located<Route>,
    i: usize,
    inputs: &RouteInputs<'_>,
    edge: &mut EdgeSpec,
    diag: &mut Diag,
) -> Option<(RouteMatcher, RouteRules)> {
    let RouteInputs {
        config,
        names,
        defaults,
        base,
    } = *inputs;
    let key = format!("routes[{i}]");
    let mark = diag.mark();
    diag.kebab_name(&r.name, format!("{key}.name"));
    let matcher = RouteMatcher::build(&r.name.value, i, r.priority, &r.matcher, &key, diag);

    let actions = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.direct_response.is_some(),
        r.redirect.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions != 1 {
        diag.err(
            r.line,
            key.clone(),
            "a route needs exactly one of `upstream`, `split`, `direct_response` or `redirect`",
        );
    }
    let upstream = r.upstream.as_ref().and_then(|u| {
        let found = names.upstreams.get(&*u.value.0).copied();
        if found.is_none() {
            diag.err(
                u.line,
                format!("{key}.upstream"),
                format!("unknown upstream `{}`", u.value),
            );
        }
        found
    });
    let split = Split::build(
        r.split.as_ref(),
        r.split_key.as_ref(),
        &names.upstreams,
        &key,
        diag,
    );
    let direct = r
        .direct_response
        .as_ref()
        .map(|d| DirectResponse::build(d, &key, diag));
    let redirect = r
        .redirect
        .as_ref()
        .map(|d| Redirect::build(d, &r.matcher.path, &key, diag));
    // The gateway answers by itself: nothing goes upstream.
    let is_direct = r.direct_response.is_some() || r.redirect.is_some();
    let rewrite = r
        .rewrite
        .as_ref()
        .map(|rw| Rewrite::build(rw, is_direct, &key, diag));
    if let Some(t) = &r.timeout_ms {
        check_timeout(t, &format!("{key}.timeout_ms"), diag);
    }
    let fallback = FallbackPolicy::build(r, &names.upstreams, &key, diag);
    let retry = r
        .retries
        .as_ref()
        .map(|rt| RetryPolicy::build(rt, is_direct, &key, diag));
    let auth = match (&r.auth, &config.defaults.auth) {
        (Some(a), _) => AuthPolicy::build(
            a,
            &format!("{key}.auth"),
            &config.auth,
            names.mtls_listener,
            diag,
        ),
        (None, Some(_)) => defaults.and_then(|d| d.auth.clone()),
        (None, None) => {
            diag.err(
                r.line,
                format!("{key}.auth"),
                "route has no `auth` and `defaults` sets none: state `auth: none` explicitly for a public route",
            );
            None
        }
    };
    let default_max_body = defaults.map_or(config.defaults.max_body_bytes, |d| d.max_body_bytes);
    let request = RequestRules::build(&r.request, default_max_body, base, r.line, &key, diag);
    let request_headers = HeaderOps::build(
        &r.headers.request,
        r.line,
        &format!("{key}.headers.request"),
        false,
        diag,
    );
    let response_headers = HeaderOps::build(
        &r.headers.response,
        r.line,
        &format!("{key}.headers.response"),
        true,
        diag,
    );
    // As written (the policy may have failed to build): `none`, or no auth at all.
    let public = r
        .auth
        .as_ref()
        .or(config.defaults.auth.as_ref())
        .is_none_or(|a| matches!(&a.value, AuthSpec::Keyword(k) if k == "none"));
    let authorize = Authorize::build(r.authorization.as_ref(), public, &key, diag);
    if public && !r.expose_internal {
        check_internal_exposure(r, config, &key, diag);
    }
    let (limit_names, by_plan) = split_limit_refs(&r.rate_limits, &key, names.plans, diag);
    let rate_limits = resolve_limits(
        &config.rate_limits,
        &limit_names,
        &format!("{key}.rate_limits"),
        &config.defaults.rate_limits,
        diag,
    );
    let cache = r.cache.as_ref().map(|c| {
        (
            c.enabled != Some(false),
            RoutePolicy::build(c, &key, is_direct, diag),
        )
    });
    let cors = r
        .cors
        .as_ref()
        .map(|c| CorsPolicy::build(c, &format!("{key}.cors"), diag));
    let compression = r
        .compression
        .as_ref()
        .map(|c| CompressionPolicy::build(c, &format!("{key}.compression"), diag));
    let response_json = r
        .response
        .json
        .as_ref()
        .map(|j| JsonShape::build(j, &key, diag));
    let mirror = MirrorPolicy::build(r, &names.upstreams, &key, diag);
    let fault = r.fault.as_ref().map(|f| FaultPolicy::build(f, &key, diag));
    let ip_rules = edge
        .ip_rules
        .resolve(&r.ip_rules, &format!("{key}.ip_rules"), diag);
    let edge_rules = edge.rules.for_route(r.edge_rules.as_ref(), &key, diag);

    warn_risky(
        r,
        &key,
        config,
        public,
        is_direct,
        by_plan,
        &limit_names,
        diag,
    );
    if !diag.clean_since(mark) {
        return None;
    }
    let action = match (upstream, split?, direct, redirect) {
        (Some(u), None, None, None) => Action::Upstream(u),
        (None, Some(s), None, None) => Action::Split(s),
        (None, None, Some(d), None) => Action::Direct(d?),
        (None, None, None, Some(r)) => Action::Redirect(r?),
        _ => return None,
    };
    let timeout = r.timeout_ms.as_ref().map_or(
        defaults.map_or(
            Duration::from_millis(config.defaults.timeout_ms.value),
            |d| d.timeout,
        ),
        |t| Duration::from_millis(t.value),
    );
    let rules = RouteRules {
        name: r.name.value.0.as_str().into(),
        action,
        rewrite: rewrite.map_or(Some(None), |r| r.map(Some))?,
        timeout,
        retry: retry.map_or(Some(None), |r| r.map(Some))?,
        request: request?,
        request_headers: request_headers?,
        response_headers: response_headers?,
        auth: auth?,
        authorize: authorize?,
        rate_limits: rate_limits?,
        by_plan,
        cors: match cors {
            Some(c) => Some(Arc::new(c?)),
            None => defaults.and_then(|d| d.cors.clone()),
        },
        compression: match compression {
            Some(c) => Some(Arc::new(c?)),
            None => defaults.and_then(|d| d.compression.clone()),
        },
        tenant_suffixes: r
            .matcher
            .hosts
            .iter()
            .filter_map(|h| {
                h.to_ascii_lowercase()
                    .strip_prefix(crate::router::TENANT_LABEL)
                    .map(str::to_string)
            })
            .collect(),
        response_json: match response_json {
            Some(j) => Some(Arc::new(j?)),
            None => None,
        },
        ip_rules,
        edge_rules,
        fallback: fallback?,
        mirror: mirror?,
        fault: fault.map_or(Some(None), |f| f.map(Some))?,
        cache: match cache {
            Some((true, c)) => Some(Arc::new(c?)),
            _ => None,
        },
    };
    Some((matcher?, rules))
}

#[cfg(test)]
mod tests {
    /// Base config: one upstream `app`, one rate limit `rl`, one JWT provider `jwt`; the test's
    /// route follows at line 11.
    const BASE: &str = "listeners: [{ name: public, address: \"127.0.0.1:8080\" }]\nadmin: { address: \"127.0.0.1:9901\" }\nupstreams: [{ name: app, targets: [{ address: \"127.0.0.1:9001\" }] }]\nrate_limits: [{ name: rl, algorithm: sliding_window, limit: 5, window_s: 10 }]\nauth:\n  jwt:\n    - name: jwt\n      secret: \"0123456789abcdef0123456789abcdef\"\n      algorithms: [HS256]\nroutes:\n";

    fn errors(route: &str) -> Vec<(u32, String, String)> {
        crate::compile::errors_of(&format!("{BASE}{route}"))
    }

    fn one(route: &str) -> (u32, String, String) {
        let e = errors(route);
        assert_eq!(e.len(), 1, "{e:?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn a_valid_route_compiles_with_its_defaults() {
        let text = format!("{BASE}  - name: r\n    match: {{ path: {{ prefix: / }} }}\n    upstream: app\n    auth: {{ jwt: jwt }}\n    rate_limits: [rl]\n");
        let Ok(c) = crate::compile::text(&text, "t.yaml") else {
            panic!("valid")
        };
        let r = &c.routes[0];
        assert!(matches!(r.action, super::Action::Upstream(0)));
        assert_eq!(r.timeout, std::time::Duration::from_millis(15_000));
        assert_eq!(r.auth, crate::auth::AuthPolicy::Jwt(0));
        assert_eq!(r.rate_limits, vec![0]);
        assert_eq!(r.request.max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn actions_and_references() {
        assert_eq!(
            one("  - name: r\n    match: { path: { prefix: / } }\n    auth: none\n"),
            // Errors on a route as a whole are placed on `routes:` when it is the first.
            (
                10,
                "routes[0]".into(),
                "a route needs exactly one of `upstream`, `split`, `direct_response` or `redirect`"
                    .into()
            )
        );
        assert_eq!(
            one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: nope\n    auth: none\n"),
            (13, "routes[0].upstream".into(), "unknown upstream `nope`".into())
        );
        let e = one("  - name: r\n    match: { path: { prefix: / } }\n    split: [{ upstream: app, weight: 10000 }]\n    split_key: \"cookie:\"\n    auth: none\n");
        assert_eq!(
            (e.0, e.1.as_str(), e.2.as_str()),
            (14, "routes[0].split_key", "`` is not a valid cookie name")
        );
        assert_eq!(
            one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: { jwt: other }\n").2,
            "unknown jwt provider `other`"
        );
        assert_eq!(
            one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: none\n    rate_limits: [rl, rl]\n").2,
            "`rl` is listed twice"
        );
        assert_eq!(
            one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n").1,
            "routes[0].auth"
        );
    }

    #[test]
    fn timeouts_retries_and_authorization() {
        let e = one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: none\n    timeout_ms: 0\n");
        assert_eq!(
            (e.0, e.1.as_str(), e.2.as_str()),
            (15, "routes[0].timeout_ms", "must be greater than 0")
        );
        let e = errors("  - name: r\n    match: { path: { prefix: / } }\n    direct_response: { status: 204 }\n    auth: none\n    retries: { attempts: 3, on: [sometimes] }\n");
        let got: Vec<&str> = e.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(
            got,
            [
                "routes[0].retries.attempts",
                "routes[0].retries.on",
                "routes[0].retries"
            ]
        );
        assert!(e[0].2.contains("above the maximum of 2"), "{e:?}");
        let e = one("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: none\n    authorization: { required_scopes: [a] }\n");
        assert_eq!(
            e.2,
            "required_scopes and required_claims need an authenticated route (auth is none)"
        );
        // A public route may ask for its tenant's status.
        assert!(errors("  - name: r\n    match: { hosts: [\"{tenant}.api.test\"], path: { prefix: / } }\n    upstream: app\n    auth: none\n    authorization: { tenant_status: [ACTIVE] }\n").is_empty());
        assert!(errors("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: { jwt: jwt }\n    authorization: { required_scopes: [a] }\n").is_empty());
    }

    #[test]
    fn match_rules_are_built_by_the_router() {
        let e = errors("  - name: r\n    match:\n      hosts: [\"*\"]\n      path: { regex: \"(\" }\n      methods: [get]\n      headers: [{ name: x, value: \"1\", regex: \"1\" }]\n    upstream: app\n    auth: none\n");
        let got: Vec<(u32, &str)> = e.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (13, "routes[0].match.hosts[0]"),
                (14, "routes[0].match.path.regex"),
                (15, "routes[0].match.methods"),
                (16, "routes[0].match.headers[0]"),
            ]
        );
    }

    #[test]
    fn auth_policies_nest_and_never_allow_none_inside_any() {
        let e = errors("  - name: r\n    match: { path: { prefix: / } }\n    upstream: app\n    auth: { any: [none, { jwt: jwt, api_key: k }, { mtls: {} }] }\n");
        let got: Vec<&str> = e.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            got,
            [
                "`none` inside `any` would make the route public",
                "an auth policy is exactly one of jwt, api_key, introspection, signature, any, mtls",
                "mtls auth needs a listener with tls.client_auth",
            ]
        );
        assert!(
            e.iter()
                .all(|e| (e.0, e.1.as_str()) == (14, "routes[0].auth")),
            "{e:?}"
        );
    }
}
