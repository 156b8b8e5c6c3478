//! Authentication (who is calling) and authorization (may they). Providers are compiled from
//! `auth` once and kept across reloads while unchanged (JWKS caches survive); each route holds
//! a cheap `RouteAuth` that runs its policy per request and yields a `Principal`.

pub mod api_key;
pub mod expiring;
pub mod introspection;
pub mod jwt;
pub mod signature;

use crate::config::{AuthProviders, AuthSpec, Authorization, Diag, Located};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What a provider may read of a request: all as the client sent it.
pub struct AuthRequest<'a> {
    pub method: &'a http::Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `Host` (or `:authority`) as sent.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    pub has_body: bool,
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

/// Who made the request, as authentication established it.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    /// The provider that authenticated it.
    pub provider: Arc<str>,
    pub subject: Option<String>,
    pub tenant: Option<String>,
    /// The id of the API key used.
    pub api_key: Option<String>,
    pub scopes: Vec<String>,
    /// A token's verified claims (JWT), for `forward_claims` and `required_claims`.
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// A signed request's `Content-Digest`, which its body must match (checked as it streams).
    pub body_digest: Option<Arc<signature::digest::Expected>>,
    /// The counters of the provider that verified the signature (for a digest mismatch).
    pub signature_counters: Option<Arc<AuthCounters>>,
    /// The consumer, when the credential's record carries it (a stored API key).
    pub consumer: Option<Arc<crate::consumer::Consumer>>,
    /// The consumer's id, when the credential names one (looked up after authentication).
    pub consumer_ref: Option<Arc<str>>,
}

/// Why authentication failed: the metrics label and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingCredentials,
    UnknownApiKey,
    Malformed,
    TooLarge,
    AlgorithmNotAllowed,
    UnknownCrit,
    UnknownKey,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    /// Introspection said the token is not active.
    Inactive,
    /// The token's `jti` is on the deny-list.
    Revoked,
    /// The provider could not be asked (introspection endpoint down): 503, never "allow".
    ProviderUnavailable,
    /// A signature does not cover a component the provider requires.
    ComponentNotCovered,
    /// A signed request with a body has no `Content-Digest`.
    MissingDigest,
    /// The body does not match its `Content-Digest`.
    DigestMismatch,
    /// The provider requires a nonce and the signature has none.
    MissingNonce,
    /// The signature's nonce was already used within its validity window.
    Replayed,
    /// The consumer store could not be read (`on_store_failure: unauthorized`): 401.
    StoreUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::MissingCredentials,
        Reason::UnknownApiKey,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownCrit,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::MissingExp,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::Inactive,
        Reason::Revoked,
        Reason::ProviderUnavailable,
        Reason::ComponentNotCovered,
        Reason::MissingDigest,
        Reason::DigestMismatch,
        Reason::MissingNonce,
        Reason::Replayed,
        Reason::StoreUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingCredentials => "missing_credentials",
            Reason::UnknownApiKey => "unknown_api_key",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownCrit => "unknown_crit",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::MissingExp => "missing_exp",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Inactive => "inactive",
            Reason::Revoked => "revoked",
            Reason::ProviderUnavailable => "provider_unavailable",
            Reason::ComponentNotCovered => "component_not_covered",
            Reason::MissingDigest => "missing_digest",
            Reason::DigestMismatch => "digest_mismatch",
            Reason::MissingNonce => "missing_nonce",
            Reason::Replayed => "replayed",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }

    /// Position in `ALL` (declared in the same order).
    fn index(self) -> usize {
        self as usize
    }
}

/// A failed authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub provider: Arc<str>,
    pub reason: Reason,
    pub description: &'static str,
    /// The `WWW-Authenticate` scheme (`Bearer`, or `Signature` for signed requests).
    pub scheme: &'static str,
}

impl Failure {
    pub fn missing(provider: &Arc<str>) -> Failure {
        Failure {
            provider: Arc::clone(provider),
            reason: Reason::MissingCredentials,
            description: "credentials are required",
            scheme: "Bearer",
        }
    }

    pub fn new(provider: &Arc<str>, reason: Reason, description: &'static str) -> Failure {
        Failure {
            provider: Arc::clone(provider),
            reason,
            description,
            scheme: "Bearer",
        }
    }

    /// A signed request's failure (challenge scheme `Signature`).
    pub fn signature(provider: &Arc<str>, reason: Reason, description: &'static str) -> Failure {
        Failure {
            scheme: "Signature",
            ..Failure::new(provider, reason, description)
        }
    }

    /// `WWW-Authenticate` per RFC 6750 §3: no error code when no credentials were sent.
    pub fn challenge(&self) -> HeaderValue {
        let v = if self.reason == Reason::MissingCredentials {
            format!("{} realm=\"portcullis\"", self.scheme)
        } else {
            format!(
                "{} realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                self.scheme, self.description
            )
        };
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
    }
}

/// Failures by reason for one provider.
#[derive(Debug, Default)]
pub struct AuthCounters {
    failures: [AtomicU64; Reason::ALL.len()],
    pub successes: AtomicU64,
}

impl AuthCounters {
    pub fn fail(&self, r: Reason) {
        self.failures[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures so far for one reason.
    pub fn failures(&self, r: Reason) -> u64 {
        self.failures[r.index()].load(Ordering::Relaxed)
    }

    /// Counts one authentication's outcome and passes it on.
    fn count(&self, r: Result<Arc<Principal>, Failure>) -> Result<Option<Arc<Principal>>, Failure> {
        match &r {
            Ok(_) => {
                self.successes.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => self.fail(f.reason),
        }
        r.map(Some)
    }
}

/// A route's compiled auth policy.
#[derive(Clone, Default)]
pub enum RouteAuth {
    #[default]
    None,
    Jwt(Arc<jwt::JwtVerifier>),
    /// Configured keys, counters, and the consumer store (for `consumer_store: true`).
    ApiKey(
        Arc<api_key::ApiKeys>,
        Arc<AuthCounters>,
        Option<Arc<crate::consumer::store::ConsumerStore>>,
    ),
    Introspection(Arc<introspection::Introspection>),
    /// A client certificate the listener's CA verified (provider name, counters).
    Mtls(Arc<str>, Arc<AuthCounters>),
    /// RFC 9421 signed requests.
    Signature(Arc<signature::SignatureVerifier>),
    /// The first that succeeds; when all fail, the first failure that is not "no credentials".
    Any(Vec<RouteAuth>),
}

impl RouteAuth {
    pub fn is_none(&self) -> bool {
        matches!(self, RouteAuth::None)
    }

    pub async fn authenticate(
        &self,
        req: &AuthRequest<'_>,
    ) -> Result<Option<Arc<Principal>>, Failure> {
        let (headers, uri, client_cert) = (req.headers, req.uri, req.client_cert);
        match self {
            RouteAuth::None => Ok(None),
            RouteAuth::Mtls(name, counters) => counters.count(match client_cert {
                Some(c) => Ok(Arc::new(Principal {
                    provider: Arc::clone(name),
                    subject: c.subject.to_str().ok().map(str::to_string),
                    ..Principal::default()
                })),
                None => Err(Failure::new(
                    name,
                    Reason::MissingCredentials,
                    "a verified client certificate is required",
                )),
            }),
            RouteAuth::Jwt(j) => j.counters.count(j.authenticate(headers).await),
            RouteAuth::Introspection(i) => i.counters.count(i.authenticate(headers).await),
            RouteAuth::ApiKey(k, counters, store) => {
                counters.count(k.authenticate(headers, uri, store.as_deref()).await)
            }
            RouteAuth::Signature(v) => {
                let input = signature::SignatureInput {
                    request: signature::base::SignedRequest {
                        method: req.method.as_str(),
                        scheme: req.scheme,
                        authority: req.authority,
                        path: uri.path(),
                        query: uri.query(),
                        headers,
                    },
                    has_body: req.has_body,
                    now: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                };
                v.counters.count(v.authenticate(&input).await)
            }
            RouteAuth::Any(all) => {
                let mut first: Option<Failure> = None;
                for a in all {
                    match Box::pin(a.authenticate(req)).await {
                        Ok(p) => return Ok(p),
                        Err(f) => {
                            // Report an unreachable provider first (503), then a real
                            // failure over "no credentials for this one".
                            let rank = |r: Reason| match r {
                                Reason::ProviderUnavailable => 2,
                                Reason::MissingCredentials => 0,
                                _ => 1,
                            };
                            let better = first
                                .as_ref()
                                .is_none_or(|g| rank(f.reason) > rank(g.reason));
                            if better {
                                first = Some(f);
                            }
                        }
                    }
                }
                Err(first.expect("`any` has at least one policy"))
            }
        }
    }

    /// Sets the verified claims the authenticating JWT provider forwards.
    pub fn forward_claims(&self, p: &Principal, headers: &mut HeaderMap) {
        match self {
            RouteAuth::Jwt(j) if j.name == p.provider => j.forward_claims(p, headers),
            RouteAuth::Any(all) => all.iter().for_each(|a| a.forward_claims(p, headers)),
            _ => {}
        }
    }

    /// Credential headers this policy reads, removed before the request goes upstream.
    pub fn credential_headers(&self, out: &mut Vec<HeaderName>) {
        match self {
            // Signature fields stay: the upstream may verify the signature again.
            RouteAuth::None | RouteAuth::Mtls(..) | RouteAuth::Signature(_) => {}
            RouteAuth::Jwt(_) | RouteAuth::Introspection(_) => {
                out.push(http::header::AUTHORIZATION)
            }
            RouteAuth::ApiKey(k, ..) => out.extend(k.header().cloned()),
            RouteAuth::Any(all) => all.iter().for_each(|a| a.credential_headers(out)),
        }
    }
}

/// A route's authorization rules.
#[derive(Debug, Clone, Default)]
pub struct Authorize {
    scopes: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
    /// `tenant_status`: the statuses a request's tenant may have (checked by `tenant`).
    pub tenant_status: Option<Vec<String>>,
}

/// Why authorization refused.
#[derive(Debug)]
pub struct Denied {
    /// The scopes the route needs (for the challenge).
    pub scopes: String,
}

impl Denied {
    pub fn challenge(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
            self.scopes
        ))
        .unwrap_or(HeaderValue::from_static(
            "Bearer error=\"insufficient_scope\"",
        ))
    }
}

impl Authorize {
    /// `authorization` of a route; `public` says whether the route's auth is `none` (nothing to
    /// authorize then).
    pub fn build(
        a: Option<&Located<Authorization>>,
        public: bool,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Option<Authorize>> {
        let Some(a) = a else { return Some(None) };
        // A public route may still require its (host's) tenant to be active.
        if public && (!a.required_scopes.is_empty() || !a.required_claims.is_empty()) {
            diag.err(
                a.line,
                format!("{key}.authorization"),
                "required_scopes and required_claims need an authenticated route (auth is none)",
            );
            return None;
        }
        if let Some(t) = a.tenant_status.as_ref().filter(|t| t.is_empty()) {
            diag.err(
                t.line,
                format!("{key}.authorization.tenant_status"),
                "must list at least one status",
            );
            return None;
        }
        Some(Some(Authorize {
            tenant_status: a
                .tenant_status
                .as_ref()
                .map(|t| t.iter().map(|s| s.to_string()).collect()),
            scopes: a.required_scopes.iter().map(|s| s.to_string()).collect(),
            claims: a
                .required_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        }))
    }

    /// Checks scopes and claims (a rule with neither lets every request through).
    pub fn check(&self, p: Option<&Principal>) -> Result<(), Denied> {
        if self.scopes.is_empty() && self.claims.is_empty() {
            return Ok(());
        }
        let denied = || Denied {
            scopes: self.scopes.join(" "),
        };
        let Some(p) = p else {
            return Err(denied());
        };
        if !self.scopes.iter().all(|s| p.scopes.iter().any(|h| h == s)) {
            return Err(denied());
        }
        for (claim, allowed) in &self.claims {
            let value = p.claims.as_ref().and_then(|c| c.get(claim));
            let ok = match value {
                Some(serde_json::Value::String(s)) => allowed.iter().any(|a| a == s),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| allowed.iter().any(|a| a == s))),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    let v = v.to_string();
                    allowed.contains(&v)
                }
                _ => false,
            };
            if !ok {
                return Err(denied());
            }
        }
        Ok(())
    }
}

/// A route's auth policy, checked: providers are positions in `AuthProviderSpecs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPolicy {
    None,
    Jwt(usize),
    ApiKey(usize),
    Introspection(usize),
    Mtls,
    Signature(usize),
    Any(Vec<AuthPolicy>),
}

impl AuthPolicy {
    /// Builds `auth: none` or `{ jwt: NAME }` / `{ api_key: NAME }` / `{ introspection: NAME }`
    /// / `{ mtls: {} }` / `{ any: [...] }`. `mtls_listener` says whether any listener verifies
    /// client certificates.
    pub fn build(
        spec: &Located<AuthSpec>,
        key: &str,
        providers: &AuthProviders,
        mtls_listener: bool,
        diag: &mut Diag,
    ) -> Option<AuthPolicy> {
        let mark = diag.mark();
        let policy = Self::build_spec(&spec.value, spec.line, key, providers, mtls_listener, diag);
        diag.ok_since(mark, policy?)
    }

    fn build_spec(
        spec: &AuthSpec,
        line: u32,
        key: &str,
        providers: &AuthProviders,
        mtls_listener: bool,
        diag: &mut Diag,
    ) -> Option<AuthPolicy> {
        let p = match spec {
            AuthSpec::Keyword(k) if k == "none" => return Some(AuthPolicy::None),
            AuthSpec::Keyword(k) => {
                diag.err(
                    line,
                    key,
                    format!("unknown auth `{k}`: use `none` or a policy such as `{{ jwt: NAME }}`"),
                );
                return None;
            }
            AuthSpec::Policy(p) => p,
        };
        let set = [
            p.jwt.is_some(),
            p.api_key.is_some(),
            p.introspection.is_some(),
            p.any.is_some(),
            p.mtls.is_some(),
            p.signature.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            diag.err(
                line,
                key,
                "an auth policy is exactly one of jwt, api_key, introspection, signature, any, mtls",
            );
            return None;
        }
        let by_name = |names: Vec<&str>, n: &str, kind: &str, diag: &mut Diag| {
            let i = names.iter().position(|name| *name == n);
            if i.is_none() {
                diag.err(line, key, format!("unknown {kind} provider `{n}`"));
            }
            i
        };
        if let Some(n) = &p.jwt {
            let names = providers
                .jwt
                .iter()
                .map(|j| j.name.value.0.as_str())
                .collect();
            return by_name(names, n, "jwt", diag).map(AuthPolicy::Jwt);
        }
        if let Some(n) = &p.api_key {
            let names = providers
                .api_keys
                .iter()
                .map(|j| j.name.value.0.as_str())
                .collect();
            return by_name(names, n, "api_keys", diag).map(AuthPolicy::ApiKey);
        }
        if let Some(n) = &p.introspection {
            let names = providers
                .introspection
                .iter()
                .map(|j| j.name.value.0.as_str())
                .collect();
            return by_name(names, n, "introspection", diag).map(AuthPolicy::Introspection);
        }
        if let Some(n) = &p.signature {
            let names = providers
                .signatures
                .iter()
                .map(|j| j.name.value.0.as_str())
                .collect();
            return by_name(names, n, "signatures", diag).map(AuthPolicy::Signature);
        }
        if p.mtls.is_some() {
            if !mtls_listener {
                diag.err(line, key, "mtls auth needs a listener with tls.client_auth");
                return None;
            }
            return Some(AuthPolicy::Mtls);
        }
        let any = p.any.as_deref().unwrap_or_default();
        if any.is_empty() {
            diag.err(line, key, "`any` needs at least one policy");
        }
        let mut all = Vec::with_capacity(any.len());
        let mut ok = !any.is_empty();
        for a in any {
            if matches!(a, AuthSpec::Keyword(k) if k == "none") {
                diag.err(line, key, "`none` inside `any` would make the route public");
                ok = false;
            } else {
                match Self::build_spec(a, line, key, providers, mtls_listener, diag) {
                    Some(policy) => all.push(policy),
                    None => ok = false,
                }
            }
        }
        ok.then_some(AuthPolicy::Any(all))
    }

    pub fn is_public(&self) -> bool {
        *self == AuthPolicy::None
    }
}

/// Every auth provider, checked, in file order within its kind.
#[derive(Clone, Default)]
pub struct AuthProviderSpecs {
    pub jwt: Vec<jwt::JwtSpec>,
    pub api_keys: Vec<Arc<api_key::ApiKeys>>,
    pub introspection: Vec<introspection::IntrospectionSpec>,
    pub signatures: Vec<signature::SignatureSpec>,
}

impl AuthProviderSpecs {
    /// Builds `auth`; `redis` says whether the shared `redis` section exists (revocation needs
    /// it).
    pub fn build(
        auth: &AuthProviders,
        redis: bool,
        consumers: &[Located<crate::config::ConsumerConfig>],
        consumer_store: bool,
        base: &std::path::Path,
        diag: &mut Diag,
    ) -> Option<AuthProviderSpecs> {
        let signatures: Vec<_> = auth
            .signatures
            .iter()
            .enumerate()
            .map(|(i, p)| {
                signature::SignatureSpec::build(
                    p,
                    &format!("auth.signatures[{i}]"),
                    base,
                    redis,
                    diag,
                )
            })
            .collect();
        let introspection: Vec<_> = auth
            .introspection
            .iter()
            .enumerate()
            .map(|(i, p)| {
                introspection::IntrospectionSpec::build(
                    p,
                    &format!("auth.introspection[{i}]"),
                    diag,
                )
            })
            .collect();
        let jwt: Vec<_> = auth
            .jwt
            .iter()
            .enumerate()
            .map(|(i, j)| jwt::JwtSpec::build(j, &format!("auth.jwt[{i}]"), redis, diag))
            .collect();
        let api_keys: Vec<_> = auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let key = format!("auth.api_keys[{i}]");
                api_key::ApiKeys::build(a, &key, consumers, consumer_store, diag).map(Arc::new)
            })
            .collect();
        let names = auth
            .jwt
            .iter()
            .map(|j| &j.name)
            .chain(auth.api_keys.iter().map(|a| &a.name))
            .chain(auth.introspection.iter().map(|a| &a.name))
            .chain(auth.signatures.iter().map(|a| &a.name))
            .enumerate()
            .map(|(i, n)| (n, format!("auth provider {i}")));
        diag.duplicates("auth provider", names);
        // A signing key's consumer must exist somewhere it can be found.
        if !consumer_store {
            for (i, p) in auth.signatures.iter().enumerate() {
                for k in p.keys.iter() {
                    let Some(c) = &k.consumer else { continue };
                    if !consumers.iter().any(|d| d.id.value == *c) {
                        diag.err(
                            k.id.line,
                            format!("auth.signatures[{i}].keys"),
                            format!(
                                "unknown consumer `{c}` (not in consumers, and no consumer_store)"
                            ),
                        );
                    }
                }
            }
        }
        Some(AuthProviderSpecs {
            jwt: jwt.into_iter().collect::<Option<_>>()?,
            api_keys: api_keys.into_iter().collect::<Option<_>>()?,
            introspection: introspection.into_iter().collect::<Option<_>>()?,
            signatures: signatures.into_iter().collect::<Option<_>>()?,
        })
    }
}

/// Providers carried across reloads (JWKS caches, verified-token caches and counters survive a
/// reload that does not change the provider).
pub struct AuthRegistry {
    jwt: Vec<(jwt::JwtSpec, Arc<jwt::JwtVerifier>)>,
    api_keys: Vec<(Arc<api_key::ApiKeys>, Arc<AuthCounters>)>,
    /// The consumer store stored API keys are looked up in.
    consumer_store: Option<Arc<crate::consumer::store::ConsumerStore>>,
    introspection: Vec<(
        introspection::IntrospectionSpec,
        Arc<introspection::Introspection>,
    )>,
    signatures: Vec<(signature::SignatureSpec, Arc<signature::SignatureVerifier>)>,
    /// Local nonce tables by provider name: a reload never reopens a replay window.
    nonces: Vec<(String, Arc<signature::replay::LocalNonces>)>,
    /// Every header any JWT provider forwards claims in: removed from every request.
    pub forwarded_headers: Vec<HeaderName>,
    mtls: (Arc<str>, Arc<AuthCounters>),
    mtls_configured: bool,
}

impl Default for AuthRegistry {
    fn default() -> Self {
        AuthRegistry {
            jwt: Vec::new(),
            api_keys: Vec::new(),
            consumer_store: None,
            introspection: Vec::new(),
            signatures: Vec::new(),
            nonces: Vec::new(),
            forwarded_headers: Vec::new(),
            mtls: (Arc::from("mtls"), Arc::default()),
            mtls_configured: false,
        }
    }
}

/// The providers for `specs`, in their order: the old one where its spec is unchanged (and
/// `rebuild` does not ask for a new one), a new one otherwise.
#[allow(clippy::type_complexity)]
fn reuse<S: PartialEq + Clone, T>(
    mut old: Vec<(S, Arc<T>)>,
    specs: &[S],
    rebuild: impl Fn(&S) -> bool,
    make: impl Fn(&S) -> T,
) -> Vec<(S, Arc<T>)> {
    specs
        .iter()
        .map(|spec| {
            let kept = old
                .iter()
                .position(|(o, _)| o == spec && !rebuild(spec))
                .map(|i| old.swap_remove(i).1);
            (spec.clone(), kept.unwrap_or_else(|| Arc::new(make(spec))))
        })
        .collect()
}

/// The per-provider counters in a snapshot, for `/metrics`.
pub struct ProviderStats {
    pub name: Arc<str>,
    pub counters: Arc<AuthCounters>,
    pub jwks: Option<Arc<jwt::JwksCache>>,
}

impl AuthRegistry {
    /// Instantiates the providers, reusing each one whose definition did not change.
    /// `redis` is the shared store (for revocation), and `redis_changed` says whether it is a
    /// new one since the last compile. `mtls_configured`: some listener verifies client
    /// certificates.
    pub fn compile(
        &mut self,
        specs: &AuthProviderSpecs,
        mtls_configured: bool,
        redis: Option<&Arc<crate::redis_store::RedisStore>>,
        redis_changed: bool,
        consumer_store: Option<&Arc<crate::consumer::store::ConsumerStore>>,
    ) {
        self.mtls_configured = mtls_configured;
        self.consumer_store = consumer_store.cloned();
        self.jwt = reuse(
            std::mem::take(&mut self.jwt),
            &specs.jwt,
            |spec| {
                // A verifier holds the Redis store of its revocation check.
                redis_changed && spec.revocation.is_some()
            },
            |spec| jwt::JwtVerifier::new(spec, redis),
        );
        let old_keys = std::mem::take(&mut self.api_keys);
        self.api_keys = specs
            .api_keys
            .iter()
            .map(|k| {
                let counters = old_keys
                    .iter()
                    .find(|(old, _)| old.name == k.name)
                    .map(|(_, c)| Arc::clone(c))
                    .unwrap_or_default();
                (Arc::clone(k), counters)
            })
            .collect();
        self.introspection = reuse(
            std::mem::take(&mut self.introspection),
            &specs.introspection,
            |_| false,
            introspection::Introspection::new,
        );
        let old_nonces = std::mem::take(&mut self.nonces);
        self.nonces = specs
            .signatures
            .iter()
            .map(|s| {
                let table = old_nonces
                    .iter()
                    .find(|(n, _)| *n == s.name)
                    .map(|(_, t)| Arc::clone(t))
                    .unwrap_or_else(|| {
                        Arc::new(signature::replay::LocalNonces::new(s.replay.max_entries))
                    });
                (s.name.clone(), table)
            })
            .collect();
        let nonces = &self.nonces;
        self.signatures = reuse(
            std::mem::take(&mut self.signatures),
            &specs.signatures,
            |spec| redis_changed && spec.replay.redis,
            |spec| {
                let table = nonces
                    .iter()
                    .find(|(n, _)| *n == spec.name)
                    .map(|(_, t)| Arc::clone(t))
                    .unwrap_or_else(|| {
                        Arc::new(signature::replay::LocalNonces::new(spec.replay.max_entries))
                    });
                signature::SignatureVerifier::new(spec, redis, table)
            },
        );
        let mut forwarded: Vec<HeaderName> = self
            .jwt
            .iter()
            .flat_map(|(_, v)| v.forwarded_headers())
            .collect();
        forwarded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        forwarded.dedup();
        self.forwarded_headers = forwarded;
    }

    /// The runtime form of a route's policy (positions come from the same specs).
    pub fn route(&self, policy: &AuthPolicy) -> RouteAuth {
        match policy {
            AuthPolicy::None => RouteAuth::None,
            AuthPolicy::Jwt(i) => RouteAuth::Jwt(Arc::clone(&self.jwt[*i].1)),
            AuthPolicy::ApiKey(i) => {
                let (k, c) = &self.api_keys[*i];
                let store = self.consumer_store.clone().filter(|_| k.uses_store());
                RouteAuth::ApiKey(Arc::clone(k), Arc::clone(c), store)
            }
            AuthPolicy::Introspection(i) => {
                RouteAuth::Introspection(Arc::clone(&self.introspection[*i].1))
            }
            AuthPolicy::Signature(i) => RouteAuth::Signature(Arc::clone(&self.signatures[*i].1)),
            AuthPolicy::Mtls => RouteAuth::Mtls(Arc::clone(&self.mtls.0), Arc::clone(&self.mtls.1)),
            AuthPolicy::Any(all) => RouteAuth::Any(all.iter().map(|a| self.route(a)).collect()),
        }
    }

    pub fn stats(&self) -> Vec<ProviderStats> {
        let mut v: Vec<ProviderStats> = self
            .jwt
            .iter()
            .map(|(_, j)| ProviderStats {
                name: Arc::clone(&j.name),
                counters: Arc::clone(&j.counters),
                jwks: j.jwks(),
            })
            .chain(self.api_keys.iter().map(|(k, c)| ProviderStats {
                name: Arc::clone(&k.name),
                counters: Arc::clone(c),
                jwks: None,
            }))
            .chain(self.introspection.iter().map(|(_, i)| ProviderStats {
                name: Arc::clone(&i.name),
                counters: Arc::clone(&i.counters),
                jwks: None,
            }))
            .chain(self.signatures.iter().map(|(_, v)| ProviderStats {
                name: Arc::clone(&v.name),
                counters: Arc::clone(&v.counters),
                jwks: None,
            }))
            .collect();
        if self.mtls_configured {
            v.push(ProviderStats {
                name: Arc::clone(&self.mtls.0),
                counters: Arc::clone(&self.mtls.1),
                jwks: None,
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The auth families for `/metrics`: successes and failures by provider (and reason), JWKS
/// fetches.
pub fn render_metrics(stats: &[ProviderStats], out: &mut String) {
    use crate::observe::metrics::{family, label};
    use std::sync::atomic::Ordering::Relaxed;
    if !stats.is_empty() {
        let mut failures = Vec::new();
        let mut successes = Vec::new();
        let mut fetches = Vec::new();
        for p in stats {
            for r in crate::auth::Reason::ALL {
                let n = p.counters.failures(r);
                failures.push((
                    format!(
                        "{},{}",
                        label("provider", &p.name),
                        label("reason", r.as_str())
                    ),
                    n as f64,
                ));
            }
            successes.push((
                label("provider", &p.name),
                p.counters.successes.load(Relaxed) as f64,
            ));
            if let Some(j) = &p.jwks {
                for (result, n) in [("ok", &j.fetches_ok), ("failed", &j.fetches_failed)] {
                    fetches.push((
                        format!("{},{}", label("provider", &p.name), label("result", result)),
                        n.load(Relaxed) as f64,
                    ));
                }
            }
        }
        family(
            out,
            "portcullis_auth_failures_total",
            "counter",
            "Failed authentications (401) by provider and reason.",
            &failures,
        );
        family(
            out,
            "portcullis_auth_successes_total",
            "counter",
            "Successful authentications by provider.",
            &successes,
        );
        if !fetches.is_empty() {
            family(
                out,
                "portcullis_jwks_fetches_total",
                "counter",
                "JWKS fetches by provider and result (a failed fetch keeps the last good keys).",
                &fetches,
            );
        }
    }
}
