//! One route in compiled form: its match rules and action, and one field per per-route
//! capability, each built by the module that owns the capability. Adding a capability is one
//! field here, one line in `build`, and one line in the pipeline.

use crate::auth::{AuthPolicy, Authorize};
use crate::config::names::Names;
use crate::config::{AuthSpec, Config, Defaults, Diag, Located, Route};
use crate::policy::direct_response::DirectResponse;
use crate::policy::header_ops::HeaderOps;
use crate::policy::request_rules::RequestRules;
use crate::policy::rewrite::Rewrite;
use crate::ratelimit::spec::resolve as resolve_limits;
use crate::router::RouteMatcher;
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
}

/// `defaults`: what routes get when they do not say.
pub struct RouteDefaults {
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub drain_timeout: Duration,
    pub allow_encoded_slashes: bool,
    pub auth: Option<AuthPolicy>,
}

impl RouteDefaults {
    pub fn build(d: &Defaults, config: &Config, names: &Names, diag: &mut Diag) -> Option<Self> {
        let mark = diag.mark();
        check_timeout(&d.timeout_ms, "defaults.timeout_ms", diag);
        let auth = d.auth.as_ref().map(|a| {
            AuthPolicy::build(a, "defaults.auth", &config.auth, names.mtls_listener, diag)
        });
        if d.max_body_bytes == 0 {
            diag.err(0, "defaults.max_body_bytes", "must be greater than 0");
        }
        let defaults = RouteDefaults {
            timeout: Duration::from_millis(d.timeout_ms.value),
            max_body_bytes: d.max_body_bytes,
            drain_timeout: Duration::from_millis(d.drain_timeout_ms),
            allow_encoded_slashes: d.allow_encoded_slashes,
            auth: match auth {
                Some(a) => Some(a?),
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

/// Builds route `i`: its matcher and its rules. `defaults` is `None` when the defaults section
/// itself was invalid (the route is still checked).
pub fn build(
    r: &Located<Route>,
    i: usize,
    config: &Config,
    names: &Names,
    defaults: Option<&RouteDefaults>,
    diag: &mut Diag,
) -> Option<(RouteMatcher, RouteRules)> {
    let key = format!("routes[{i}]");
    let mark = diag.mark();
    diag.kebab_name(&r.name, format!("{key}.name"));
    let matcher = RouteMatcher::build(&r.name.value, i, r.priority, &r.matcher, &key, diag);

    let actions = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions != 1 {
        diag.err(
            r.line,
            key.clone(),
            "a route needs exactly one of `upstream`, `split` or `direct_response`",
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
    let is_direct = r.direct_response.is_some();
    let rewrite = r
        .rewrite
        .as_ref()
        .map(|rw| Rewrite::build(rw, is_direct, &key, diag));
    if let Some(t) = &r.timeout_ms {
        check_timeout(t, &format!("{key}.timeout_ms"), diag);
    }
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
    let request = RequestRules::build(&r.request, default_max_body, r.line, &key, diag);
    let request_headers = HeaderOps::build(
        &r.headers.request,
        r.line,
        &format!("{key}.headers.request"),
        diag,
    );
    let response_headers = HeaderOps::build(
        &r.headers.response,
        r.line,
        &format!("{key}.headers.response"),
        diag,
    );
    // As written (the policy may have failed to build): `none`, or no auth at all.
    let public = r
        .auth
        .as_ref()
        .or(config.defaults.auth.as_ref())
        .is_none_or(|a| matches!(&a.value, AuthSpec::Keyword(k) if k == "none"));
    let authorize = Authorize::build(r.authorization.as_ref(), public, &key, diag);
    let rate_limits = resolve_limits(
        &config.rate_limits,
        &r.rate_limits,
        &format!("{key}.rate_limits"),
        &config.defaults.rate_limits,
        diag,
    );
    diag.unsupported(&r.cache, format!("{key}.cache"), "cache issue");
    diag.unsupported(&r.cors, format!("{key}.cors"), "transform issue");
    diag.unsupported(&r.mirror, format!("{key}.mirror"), "shadow traffic issue");

    if !diag.clean_since(mark) {
        return None;
    }
    let action = match (upstream, split?, direct) {
        (Some(u), None, None) => Action::Upstream(u),
        (None, Some(s), None) => Action::Split(s),
        (None, None, Some(d)) => Action::Direct(d?),
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
    };
    Some((matcher?, rules))
}
