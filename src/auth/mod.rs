//! Authentication (who is calling) and authorization (may they). Providers are compiled from
//! `auth` once and kept across reloads while unchanged (JWKS caches survive); each route holds
//! a cheap `RouteAuth` that runs its policy per request and yields a `Principal`.

pub mod api_key;
pub mod expiring;
pub mod introspection;
pub mod jwt;

use crate::config::{AuthSpec, Authorization, Config};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use std::collections::HashMap;
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
}

impl Reason {
    pub const ALL: [Reason; 17] = [
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
        }
    }

    /// Position in `ALL` (declared in the same order).
    fn index(self) -> usize {
        self as usize
    }
}

/// A failed authentication.
#[derive(Debug, Clone)]
pub struct Failure {
    pub provider: Arc<str>,
    pub reason: Reason,
    pub description: &'static str,
}

impl Failure {
    pub fn missing(provider: &Arc<str>) -> Failure {
        Failure {
            provider: Arc::clone(provider),
            reason: Reason::MissingCredentials,
            description: "credentials are required",
        }
    }

    pub fn new(provider: &Arc<str>, reason: Reason, description: &'static str) -> Failure {
        Failure {
            provider: Arc::clone(provider),
            reason,
            description,
        }
    }

    /// `WWW-Authenticate` per RFC 6750 §3: no error code when no credentials were sent.
    pub fn challenge(&self) -> HeaderValue {
        let v = if self.reason == Reason::MissingCredentials {
            "Bearer realm=\"portcullis\"".to_string()
        } else {
            format!(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                self.description
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
    fn fail(&self, r: Reason) {
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
    ApiKey(Arc<api_key::ApiKeys>, Arc<AuthCounters>),
    Introspection(Arc<introspection::Introspection>),
    /// A client certificate the listener's CA verified (provider name, counters).
    Mtls(Arc<str>, Arc<AuthCounters>),
    /// The first that succeeds; when all fail, the first failure that is not "no credentials".
    Any(Vec<RouteAuth>),
}

impl RouteAuth {
    pub fn is_none(&self) -> bool {
        matches!(self, RouteAuth::None)
    }

    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client_cert: Option<&crate::tls::ClientCert>,
    ) -> Result<Option<Arc<Principal>>, Failure> {
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
            RouteAuth::ApiKey(k, counters) => counters.count(k.authenticate(headers, uri)),
            RouteAuth::Any(all) => {
                let mut first: Option<Failure> = None;
                for a in all {
                    match Box::pin(a.authenticate(headers, uri, client_cert)).await {
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
            RouteAuth::None | RouteAuth::Mtls(..) => {}
            RouteAuth::Jwt(_) | RouteAuth::Introspection(_) => {
                out.push(http::header::AUTHORIZATION)
            }
            RouteAuth::ApiKey(k, _) => out.extend(k.header().cloned()),
            RouteAuth::Any(all) => all.iter().for_each(|a| a.credential_headers(out)),
        }
    }
}

/// A route's authorization rules.
#[derive(Debug, Clone, Default)]
pub struct Authorize {
    scopes: Vec<String>,
    claims: Vec<(String, Vec<String>)>,
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
    pub fn compile(a: Option<&Authorization>) -> Option<Authorize> {
        let a = a?;
        Some(Authorize {
            scopes: a.required_scopes.iter().map(|s| s.to_string()).collect(),
            claims: a
                .required_claims
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
        })
    }

    pub fn check(&self, p: Option<&Principal>) -> Result<(), Denied> {
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

/// Providers carried across reloads.
pub struct AuthRegistry {
    jwt: HashMap<String, (crate::config::JwtProvider, Arc<jwt::JwtVerifier>)>,
    api_keys: HashMap<String, (Arc<api_key::ApiKeys>, Arc<AuthCounters>)>,
    introspection: HashMap<
        String,
        (
            crate::config::IntrospectionProvider,
            Arc<introspection::Introspection>,
        ),
    >,
    /// Every header any JWT provider forwards claims in: removed from every request.
    pub forwarded_headers: Vec<HeaderName>,
    mtls: (Arc<str>, Arc<AuthCounters>),
    mtls_configured: bool,
}

impl Default for AuthRegistry {
    fn default() -> Self {
        AuthRegistry {
            jwt: HashMap::new(),
            api_keys: HashMap::new(),
            introspection: HashMap::new(),
            forwarded_headers: Vec::new(),
            mtls: (Arc::from("mtls"), Arc::default()),
            mtls_configured: false,
        }
    }
}

/// The per-provider counters in a snapshot, for `/metrics`.
pub struct ProviderStats {
    pub name: Arc<str>,
    pub counters: Arc<AuthCounters>,
    pub jwks: Option<Arc<jwt::JwksCache>>,
}

impl AuthRegistry {
    /// Compiles the providers; `redis` is the shared store (for revocation), and `redis_changed`
    /// says whether it is a new one since the last compile.
    pub fn compile(
        &mut self,
        cfg: &Config,
        redis: Option<&Arc<crate::ratelimit::redis::RedisStore>>,
        redis_changed: bool,
    ) {
        self.mtls_configured = cfg
            .listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()));
        let mut jwt = HashMap::new();
        for j in &cfg.auth.jwt {
            let name = j.name.value.to_string();
            let keep = !(redis_changed && j.revocation.is_some());
            let verifier = match self.jwt.remove(&name) {
                Some((old, v)) if old == j.value && keep => v,
                _ => Arc::new(jwt::JwtVerifier::compile(&j.value, redis)),
            };
            jwt.insert(name, (j.value.clone(), verifier));
        }
        self.jwt = jwt;
        let mut keys = HashMap::new();
        for a in &cfg.auth.api_keys {
            let name = a.name.value.to_string();
            let counters = self
                .api_keys
                .get(&name)
                .map(|(_, c)| Arc::clone(c))
                .unwrap_or_default();
            keys.insert(
                name,
                (Arc::new(api_key::ApiKeys::compile(&a.value)), counters),
            );
        }
        self.api_keys = keys;
        let mut intro = HashMap::new();
        for p in &cfg.auth.introspection {
            let name = p.name.value.to_string();
            let provider = match self.introspection.remove(&name) {
                Some((old, v)) if old == p.value => v,
                _ => Arc::new(introspection::Introspection::compile(&p.value)),
            };
            intro.insert(name, (p.value.clone(), provider));
        }
        self.introspection = intro;
        let mut forwarded: Vec<HeaderName> = self
            .jwt
            .values()
            .flat_map(|(_, v)| v.forwarded_headers())
            .collect();
        forwarded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        forwarded.dedup();
        self.forwarded_headers = forwarded;
    }

    pub fn route(&self, spec: Option<&AuthSpec>) -> RouteAuth {
        match spec {
            None | Some(AuthSpec::Keyword(_)) => RouteAuth::None,
            Some(AuthSpec::Policy(p)) => {
                if let Some(n) = &p.jwt {
                    self.jwt
                        .get(n)
                        .map_or(RouteAuth::None, |(_, v)| RouteAuth::Jwt(Arc::clone(v)))
                } else if let Some(n) = &p.api_key {
                    self.api_keys.get(n).map_or(RouteAuth::None, |(k, c)| {
                        RouteAuth::ApiKey(Arc::clone(k), Arc::clone(c))
                    })
                } else if let Some(n) = &p.introspection {
                    self.introspection.get(n).map_or(RouteAuth::None, |(_, v)| {
                        RouteAuth::Introspection(Arc::clone(v))
                    })
                } else if p.mtls.is_some() {
                    RouteAuth::Mtls(Arc::clone(&self.mtls.0), Arc::clone(&self.mtls.1))
                } else if let Some(any) = &p.any {
                    RouteAuth::Any(any.iter().map(|a| self.route(Some(a))).collect())
                } else {
                    RouteAuth::None
                }
            }
        }
    }

    pub fn stats(&self) -> Vec<ProviderStats> {
        let mut v: Vec<ProviderStats> = self
            .jwt
            .values()
            .map(|(_, j)| ProviderStats {
                name: Arc::clone(&j.name),
                counters: Arc::clone(&j.counters),
                jwks: j.jwks(),
            })
            .chain(self.api_keys.values().map(|(k, c)| ProviderStats {
                name: Arc::clone(&k.name),
                counters: Arc::clone(c),
                jwks: None,
            }))
            .chain(self.introspection.values().map(|(_, i)| ProviderStats {
                name: Arc::clone(&i.name),
                counters: Arc::clone(&i.counters),
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
