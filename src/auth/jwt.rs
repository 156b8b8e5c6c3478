//! JWT verification, locally: the identity provider is never called on the request path for a
//! token whose key is cached.
//!
//! Order of checks: size (≤ 8 KiB, before any parsing) → header (the algorithm must be on the
//! provider's allow-list before any signature work; `none` can never be listed; an unknown
//! `crit` is refused; `jku`/`x5u`/`x5c`/`jwk` are never used) → key (by `kid`, from the
//! provider's own key source only, and of the algorithm's family: an RSA key is never an HMAC
//! secret) → signature → claims (`exp` required, `nbf`, `iat` numeric with the clock skew, `iss`,
//! `aud`). Verified tokens are cached by their SHA-256 until no later than their `exp`.
//!
//! JWKS: cached for `jwks_cache_s` (or the response's max-age if shorter) and refreshed in the
//! background before expiry; an unknown `kid` triggers one refetch — single-flight, at most once
//! per `jwks_min_refetch_s` — and a kid still unknown after it is remembered as unknown for that
//! long. A failed or garbled fetch keeps the last good keys.

use super::expiring::Expiring;
use super::{AuthCounters, Failure, Principal, Reason};
use crate::config::{Diag, JwtProvider, Located, RevocationFailure};
use crate::outbound::Endpoint;
use crate::redis_store::RedisStore;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Tokens larger than this are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const MAX_JWKS_BYTES: usize = 512 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries in each cache (verified tokens, unknown kids, revocation answers).
const CACHE_MAX: usize = 10_000;

pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    if s.eq_ignore_ascii_case("none") {
        return Err("`none` can never be allowed".into());
    }
    Ok(match s {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(format!("unsupported algorithm `{other}`")),
    })
}

pub fn is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One usable verification key.
struct Key {
    key: DecodingKey,
    /// The JWK's own `alg`, when it states one: the token must use exactly that.
    alg: Option<Algorithm>,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a kid.
    anonymous: Vec<Arc<Key>>,
}

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    Url(Endpoint),
    File(PathBuf),
}

/// Where a provider's keys come from.
#[derive(Clone, PartialEq)]
pub enum KeySource {
    /// HMAC secret (HS256/384/512 only).
    Secret(String),
    Jwks(JwksSource),
}

impl std::fmt::Debug for KeySource {
    // The secret is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(<redacted>)"),
            KeySource::Jwks(s) => f.debug_tuple("Jwks").field(s).finish(),
        }
    }
}

/// `revocation`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationSpec {
    pub key_prefix: String,
    pub cache_s: u64,
    pub allow_on_failure: bool,
}

/// One `auth.jwt[]` provider, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSpec {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub clock_skew_s: u64,
    pub jwks_cache_s: u64,
    pub jwks_min_refetch_s: u64,
    pub forward: Vec<(String, HeaderName)>,
    pub tenant_claim: Option<String>,
    pub consumer_claim: Option<String>,
    pub revocation: Option<RevocationSpec>,
    pub verified_cache_s: u64,
}

impl JwtSpec {
    /// Builds one provider; `redis` says whether the shared `redis` section exists.
    pub fn build(
        j: &Located<JwtProvider>,
        key: &str,
        redis: bool,
        diag: &mut Diag,
    ) -> Option<JwtSpec> {
        let mark = diag.mark();
        diag.kebab_name(&j.name, format!("{key}.name"));
        let sources = [
            j.jwks_url.is_some(),
            j.jwks_file.is_some(),
            j.secret.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            diag.err(
                j.name.line,
                key,
                "exactly one of jwks_url, jwks_file, secret is required",
            );
        }
        if j.algorithms.is_empty() {
            diag.err(
                j.algorithms.line,
                format!("{key}.algorithms"),
                "at least one algorithm",
            );
        }
        let mut algorithms = Vec::new();
        for a in j.algorithms.iter() {
            match parse_algorithm(&a.value) {
                Err(e) => diag.err(a.line, format!("{key}.algorithms"), e),
                Ok(alg) => {
                    let hmac = is_hmac(alg);
                    if j.secret.is_some() && !hmac {
                        diag.err(
                            a.line,
                            format!("{key}.algorithms"),
                            format!(
                                "`{}` needs a public key (jwks_url or jwks_file), not a secret",
                                a.value
                            ),
                        );
                    }
                    if j.secret.is_none() && hmac {
                        diag.err(
                            a.line,
                            format!("{key}.algorithms"),
                            format!("`{}` needs `secret` (keys from a JWKS are never used as HMAC secrets)", a.value),
                        );
                    }
                    algorithms.push(alg);
                }
            }
        }
        let url = j
            .jwks_url
            .as_ref()
            .and_then(|u| match Endpoint::parse(u, None) {
                Ok(e) => Some(e),
                Err(e) => {
                    diag.err(u.line, format!("{key}.jwks_url"), e);
                    None
                }
            });
        if let Some(s) = &j.secret {
            if s.len() < 32 {
                diag.err(
                    s.line,
                    format!("{key}.secret"),
                    "an HMAC secret must be at least 32 bytes",
                );
            }
        }
        if j.jwks_min_refetch_s == 0 || j.jwks_cache_s == 0 {
            diag.err(
                j.name.line,
                key,
                "jwks_cache_s and jwks_min_refetch_s must be at least 1",
            );
        }
        let mut forward = Vec::new();
        for (claim, h) in &j.forward_claims {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => forward.push((claim.clone(), name)),
                Err(_) => diag.err(
                    j.name.line,
                    format!("{key}.forward_claims"),
                    format!("`{h}` (for claim `{claim}`) is not a valid header name"),
                ),
            }
        }
        if let Some(r) = &j.revocation {
            if &*r.store != "redis" {
                diag.err(
                    r.line,
                    format!("{key}.revocation.store"),
                    "the only store is `redis`",
                );
            }
            if !redis {
                diag.err(
                    r.line,
                    format!("{key}.revocation"),
                    "revocation needs a top-level `redis` section",
                );
            }
            if r.cache_s > 300 {
                diag.err(r.line, format!("{key}.revocation.cache_s"), "at most 300");
            }
        }
        if j.verified_cache_s > 3600 {
            diag.err(
                j.name.line,
                format!("{key}.verified_cache_s"),
                "at most 3600",
            );
        }
        if !diag.clean_since(mark) {
            return None;
        }
        let keys = match (&j.secret, &j.jwks_file, url) {
            (Some(s), None, None) => KeySource::Secret(s.value.to_string()),
            (None, Some(f), None) => KeySource::Jwks(JwksSource::File(PathBuf::from(&*f.value.0))),
            (None, None, Some(u)) => KeySource::Jwks(JwksSource::Url(u)),
            _ => return None,
        };
        Some(JwtSpec {
            name: j.name.value.to_string(),
            algorithms,
            keys,
            issuer: j.issuer.as_ref().map(|s| s.to_string()),
            audiences: j.audiences.iter().map(|s| s.to_string()).collect(),
            clock_skew_s: j.clock_skew_s,
            jwks_cache_s: j.jwks_cache_s,
            jwks_min_refetch_s: j.jwks_min_refetch_s,
            forward,
            tenant_claim: j.tenant_claim.as_ref().map(|s| s.to_string()),
            consumer_claim: j.consumer_claim.as_ref().map(|s| s.to_string()),
            revocation: j.revocation.as_ref().map(|r| RevocationSpec {
                key_prefix: r.key_prefix.to_string(),
                cache_s: r.cache_s,
                allow_on_failure: r.on_store_failure == RevocationFailure::Allow,
            }),
            verified_cache_s: j.verified_cache_s,
        })
    }
}

/// A provider's JWKS, shared by every snapshot while the provider's settings are unchanged.
pub struct JwksCache {
    source: JwksSource,
    keys: ArcSwap<KeySet>,
    cache_s: u64,
    min_refetch_s: u64,
    /// Unix seconds: the current keys expire (refresh due before then).
    expires_at: AtomicU64,
    /// Unix milliseconds of the last fetch attempt (for the unknown-kid limit; whole seconds
    /// would let two fetches come barely more than one second apart).
    last_attempt_ms: AtomicU64,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// kids still unknown after a refetch, until when.
    unknown: Expiring<String, ()>,
    pub fetches_ok: AtomicU64,
    pub fetches_failed: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl JwksCache {
    fn new(source: JwksSource, cache_s: u64, min_refetch_s: u64) -> Arc<JwksCache> {
        let cache = Arc::new(JwksCache {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            cache_s,
            min_refetch_s,
            expires_at: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
            unknown: Expiring::new(CACHE_MAX),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(refresh_loop(Arc::downgrade(&cache)));
        }
        cache
    }

    /// Fetches and installs the key set; on any failure the previous keys stay.
    async fn fetch(&self) -> bool {
        self.last_attempt_ms.store(unix_now_ms(), Ordering::Relaxed);
        let result = match &self.source {
            JwksSource::File(p) => {
                let path = p.clone();
                // A small file, but never read on a runtime thread.
                match tokio::task::spawn_blocking(move || std::fs::read(&path)).await {
                    Ok(Ok(b)) => Ok((Bytes::from(b), None)),
                    Ok(Err(e)) => Err(format!("cannot read {}: {e}", p.display())),
                    Err(e) => Err(format!("cannot read {}: {e}", p.display())),
                }
            }
            JwksSource::Url(endpoint) => {
                match tokio::time::timeout(FETCH_TIMEOUT, get(endpoint)).await {
                    Ok(r) => r,
                    Err(_) => Err("JWKS endpoint did not answer in time".into()),
                }
            }
        };
        let parsed = result.and_then(|(body, max_age)| {
            let set: JwkSet =
                serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
            Ok((key_set(&set), max_age))
        });
        match parsed {
            Ok((keys, max_age)) => {
                let ttl = max_age.map_or(self.cache_s, |m| m.min(self.cache_s)).max(1);
                self.keys.store(Arc::new(keys));
                self.expires_at.store(unix_now() + ttl, Ordering::Relaxed);
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                self.unknown.clear();
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(source = ?self.source, "JWKS fetch recovered");
                }
                true
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(source = ?self.source, error = %e,
                        "JWKS fetch failed; the last good keys stay in use");
                }
                false
            }
        }
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let keys = self.keys.load();
        match kid {
            Some(k) => keys.by_kid.get(k).filter(|key| key.fits(alg)).cloned(),
            None => {
                // No kid: only unambiguous when exactly one key fits.
                let mut fitting = keys
                    .by_kid
                    .values()
                    .chain(keys.anonymous.iter())
                    .filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(Arc::clone(k)),
                    _ => None,
                }
            }
        }
    }

    /// The key for an unknown kid: one refetch (single-flight, rate-limited), then give up.
    async fn lookup_after_refetch(&self, kid: &str, alg: Algorithm) -> Option<Arc<Key>> {
        let now = unix_now();
        if self.unknown.get(kid, now).is_some() {
            return None;
        }
        {
            let _one = self.fetching.lock().await;
            // Someone may have fetched while this request waited.
            if let Some(k) = self.lookup(Some(kid), alg) {
                return Some(k);
            }
            let last = self.last_attempt_ms.load(Ordering::Relaxed);
            if last == 0 || unix_now_ms() >= last + self.min_refetch_s * 1000 {
                self.fetch().await;
            }
        }
        let found = self.lookup(Some(kid), alg);
        if found.is_none() {
            self.unknown
                .insert(kid.to_string(), (), unix_now() + self.min_refetch_s, now);
        }
        found
    }
}

/// Keeps the JWKS fresh: fetches at start, then before each expiry; retries a failed fetch
/// every few seconds. Ends when the cache is dropped.
async fn refresh_loop(cache: std::sync::Weak<JwksCache>) {
    loop {
        let wait = {
            let Some(c) = cache.upgrade() else { return };
            let due = c.expires_at.load(Ordering::Relaxed);
            let ok = if due == 0 || unix_now() + (c.cache_s / 10).max(1) >= due {
                let _one = c.fetching.lock().await;
                c.fetch().await
            } else {
                true
            };
            if ok {
                let due = c.expires_at.load(Ordering::Relaxed);
                let lead = (c.cache_s / 10).max(1);
                Duration::from_secs(due.saturating_sub(unix_now() + lead).clamp(1, 3600))
            } else {
                Duration::from_secs(c.min_refetch_s.clamp(1, 5))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn key_set(set: &JwkSet) -> KeySet {
    let mut keys = KeySet::default();
    for jwk in &set.keys {
        // Symmetric keys are never taken from a JWKS; encryption keys are not signing keys.
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            || jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| parse_algorithm(&format!("{a:?}")).ok());
        let key = Arc::new(Key { key, alg });
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    keys
}

/// A one-shot GET of the JWKS; the body and the response's max-age.
async fn get(endpoint: &Endpoint) -> Result<(Bytes, Option<u64>), String> {
    let req = endpoint
        .request(http::Method::GET)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = endpoint.send(req, MAX_JWKS_BYTES).await?;
    if !resp.status().is_success() {
        return Err(format!("JWKS endpoint answered {}", resp.status()));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok())
        });
    Ok((resp.into_body(), max_age))
}

enum Keys {
    Secret(Arc<Key>),
    Jwks(Arc<JwksCache>),
}

pub struct JwtVerifier {
    pub name: Arc<str>,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audiences: Vec<String>,
    skew: u64,
    keys: Keys,
    forward: Vec<(String, HeaderName)>,
    tenant_claim: Option<String>,
    consumer_claim: Option<String>,
    pub counters: Arc<AuthCounters>,
    /// SHA-256 of a verified token → its principal and when the entry ends (unix seconds).
    verified: Expiring<[u8; 32], Arc<Principal>>,
    verified_cache_s: u64,
    revocation: Option<RevocationCheck>,
}

/// The `jti` deny-list, asked through the shared Redis store with a short local cache.
struct RevocationCheck {
    store: Arc<RedisStore>,
    prefix: String,
    cache_s: u64,
    allow_on_failure: bool,
    /// jti → revoked.
    cache: Expiring<String, bool>,
}

impl RevocationCheck {
    async fn revoked(&self, jti: &str, now: u64) -> Result<bool, ()> {
        if let Some(revoked) = self.cache.get(jti, now) {
            return Ok(revoked);
        }
        match self.store.exists(&format!("{}{jti}", self.prefix)).await {
            Ok(revoked) => {
                self.cache
                    .insert(jti.to_string(), revoked, now + self.cache_s, now);
                Ok(revoked)
            }
            Err(_) if self.allow_on_failure => Ok(false),
            Err(_) => Err(()),
        }
    }
}

/// The token's header fields the gateway reads.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl JwtVerifier {
    /// The verifier for `spec`; `redis` is the shared store (for revocation).
    pub fn new(spec: &JwtSpec, redis: Option<&Arc<RedisStore>>) -> JwtVerifier {
        let keys = match &spec.keys {
            KeySource::Secret(secret) => Keys::Secret(Arc::new(Key {
                key: DecodingKey::from_secret(secret.as_bytes()),
                alg: None,
            })),
            KeySource::Jwks(source) => Keys::Jwks(JwksCache::new(
                source.clone(),
                spec.jwks_cache_s,
                spec.jwks_min_refetch_s,
            )),
        };
        JwtVerifier {
            name: spec.name.as_str().into(),
            algorithms: spec.algorithms.clone(),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            skew: spec.clock_skew_s,
            keys,
            forward: spec.forward.clone(),
            tenant_claim: spec.tenant_claim.clone(),
            consumer_claim: spec.consumer_claim.clone(),
            counters: Arc::default(),
            verified: Expiring::new(CACHE_MAX),
            verified_cache_s: spec.verified_cache_s,
            revocation: spec
                .revocation
                .as_ref()
                .zip(redis)
                .map(|(r, store)| RevocationCheck {
                    store: Arc::clone(store),
                    prefix: r.key_prefix.clone(),
                    cache_s: r.cache_s,
                    allow_on_failure: r.allow_on_failure,
                    cache: Expiring::new(CACHE_MAX),
                }),
        }
    }

    /// Refuses a revoked token (by `jti`); tokens without a `jti` cannot be revoked.
    async fn not_revoked(&self, p: Arc<Principal>, now: u64) -> Result<Arc<Principal>, Failure> {
        let Some(check) = &self.revocation else {
            return Ok(p);
        };
        let Some(jti) = p
            .claims
            .as_ref()
            .and_then(|c| c.get("jti"))
            .and_then(|v| v.as_str())
        else {
            return Ok(p);
        };
        match check.revoked(jti, now).await {
            Ok(false) => Ok(p),
            Ok(true) => Err(self.fail(Reason::Revoked, "the token has been revoked")),
            Err(()) => Err(self.fail(
                Reason::ProviderUnavailable,
                "the token's revocation status cannot be checked right now",
            )),
        }
    }

    pub fn jwks(&self) -> Option<Arc<JwksCache>> {
        match &self.keys {
            Keys::Jwks(c) => Some(Arc::clone(c)),
            Keys::Secret(_) => None,
        }
    }

    pub fn forwarded_headers(&self) -> impl Iterator<Item = HeaderName> + '_ {
        self.forward.iter().map(|(_, h)| h.clone())
    }

    /// Verified claims as request headers for the upstream.
    pub fn forward_claims(&self, p: &Principal, headers: &mut HeaderMap) {
        let Some(claims) = &p.claims else { return };
        for (claim, header) in &self.forward {
            let value = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => continue,
            };
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(header.clone(), v);
            }
        }
    }

    fn fail(&self, reason: Reason, description: &'static str) -> Failure {
        Failure::new(&self.name, reason, description)
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Failure> {
        let token = super::bearer(headers).ok_or_else(|| Failure::missing(&self.name))?;
        self.verify(token).await
    }

    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, Failure> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(self.fail(Reason::TooLarge, "the token is too large"));
        }
        let now = unix_now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.verified.get(&digest, now) {
            return self.not_revoked(p, now).await;
        }

        let malformed = || self.fail(Reason::Malformed, "the token is malformed");
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let header_json = URL_SAFE_NO_PAD.decode(h64).map_err(|_| malformed())?;
        let header: Header = serde_json::from_slice(&header_json).map_err(|_| malformed())?;
        // Allow-list before any signature work; `none` (any spelling) is never on it.
        let alg = parse_algorithm(&header.alg)
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| {
                self.fail(
                    Reason::AlgorithmNotAllowed,
                    "the token's algorithm is not allowed",
                )
            })?;
        if header.crit.is_some() {
            return Err(self.fail(
                Reason::UnknownCrit,
                "the token has critical headers the gateway does not understand",
            ));
        }
        let key = match &self.keys {
            Keys::Secret(k) => Some(Arc::clone(k)).filter(|k| k.fits(alg)),
            Keys::Jwks(cache) => match cache.lookup(header.kid.as_deref(), alg) {
                Some(k) => Some(k),
                None => match header.kid.as_deref() {
                    Some(kid) => cache.lookup_after_refetch(kid, alg).await,
                    None => None,
                },
            },
        }
        .ok_or_else(|| self.fail(Reason::UnknownKey, "no key for this token"))?;

        let message_len = h64.len() + 1 + p64.len();
        let valid =
            jsonwebtoken::crypto::verify(sig, &token.as_bytes()[..message_len], &key.key, alg)
                .unwrap_or(false);
        if !valid {
            return Err(self.fail(Reason::BadSignature, "the token's signature is not valid"));
        }

        let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| malformed())?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&payload).map_err(|_| malformed())?;
        let exp = self.check_claims(&claims, now)?;

        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(serde_json::Value::String(s)), _) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            (_, Some(serde_json::Value::Array(a))) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            (_, Some(serde_json::Value::String(s))) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let tenant = match &self.tenant_claim {
            Some(c) => text(c),
            None => text("tenant_id").or_else(|| text("tenant")),
        };
        let principal = Arc::new(Principal {
            provider: Arc::clone(&self.name),
            subject: text("sub"),
            tenant,
            api_key: None,
            scopes,
            consumer_ref: self
                .consumer_claim
                .as_deref()
                .and_then(|c| claims.get(c)?.as_str().map(Arc::from)),
            claims: Some(claims),
            ..Principal::default()
        });
        if self.verified_cache_s > 0 {
            let until = exp.min(now + self.verified_cache_s);
            self.verified
                .insert(digest, Arc::clone(&principal), until, now);
        }
        self.not_revoked(principal, now).await
    }

    /// Time claims (numbers only), issuer and audience. Returns `exp`.
    fn check_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<u64, Failure> {
        let number = |k: &str| -> Result<Option<u64>, Failure> {
            match claims.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|f| *f >= 0.0)
                    .map(|f| Some(f as u64))
                    .ok_or_else(|| self.fail(Reason::Malformed, "a time claim is not a number")),
            }
        };
        let exp = number("exp")?
            .ok_or_else(|| self.fail(Reason::MissingExp, "the token has no expiry"))?;
        if now >= exp + self.skew {
            return Err(self.fail(Reason::Expired, "the token has expired"));
        }
        if number("nbf")?.is_some_and(|nbf| now + self.skew < nbf) {
            return Err(self.fail(Reason::NotYetValid, "the token is not valid yet"));
        }
        if number("iat")?.is_some_and(|iat| iat > now + self.skew) {
            return Err(self.fail(Reason::IssuedInFuture, "the token was issued in the future"));
        }
        if let Some(iss) = &self.issuer {
            if claims.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str()) {
                return Err(self.fail(Reason::WrongIssuer, "the token's issuer is not accepted"));
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => self.audiences.iter().any(|x| x == a),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|a| self.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(self.fail(
                    Reason::WrongAudience,
                    "the token is not meant for this audience",
                ));
            }
        }
        Ok(exp)
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    fn build(yaml: &str, redis: bool) -> Result<JwtSpec, Vec<(u32, String, String)>> {
        crate::config::diag::build_yaml(yaml, |p: &Located<JwtProvider>, diag| {
            JwtSpec::build(p, "auth.jwt[0]", redis, diag)
        })
    }

    #[test]
    fn key_sources_and_algorithm_families() {
        let s = build("name: a\njwks_url: http://127.0.0.1:9/jwks\nalgorithms: [RS256, ES256]\nforward_claims: { sub: X-User }\n", false).unwrap();
        assert_eq!(s.algorithms, [Algorithm::RS256, Algorithm::ES256]);
        assert!(matches!(&s.keys, KeySource::Jwks(JwksSource::Url(e)) if e.path == "/jwks"));
        assert_eq!(s.forward[0].1, "x-user");
        let e = build(
            "name: a\nsecret: \"0123456789abcdef0123456789abcdef\"\nalgorithms: [RS256, none]\n",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                (
                    3,
                    "auth.jwt[0].algorithms".into(),
                    "`RS256` needs a public key (jwks_url or jwks_file), not a secret".into()
                ),
                (
                    3,
                    "auth.jwt[0].algorithms".into(),
                    "`none` can never be allowed".into()
                ),
            ]
        );
        let e = build("name: a\njwks_file: k.json\nalgorithms: [HS512]\n", false).unwrap_err();
        assert_eq!(
            e[0].2,
            "`HS512` needs `secret` (keys from a JWKS are never used as HMAC secrets)"
        );
    }

    #[test]
    fn secrets_sources_and_revocation() {
        let e = build("name: a\nsecret: short\njwks_file: k.json\nalgorithms: [HS256]\nrevocation: { store: redis }\n", false).unwrap_err();
        let got: Vec<&str> = e.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            got,
            [
                "exactly one of jwks_url, jwks_file, secret is required",
                "an HMAC secret must be at least 32 bytes",
                "revocation needs a top-level `redis` section",
            ]
        );
        let s = build("name: a\nsecret: \"0123456789abcdef0123456789abcdef\"\nalgorithms: [HS256]\nrevocation: { store: redis, on_store_failure: allow }\n", true).unwrap();
        assert!(s.revocation.unwrap().allow_on_failure);
    }
}

#[cfg(test)]
mod verifier_tests {
    use super::*;
    use base64::Engine;

    fn verifier(extra: &str) -> JwtVerifier {
        let yaml = format!(
            "name: a\nsecret: \"0123456789abcdef0123456789abcdef\"\nalgorithms: [HS256]\nclock_skew_s: 30\n{extra}"
        );
        let spec = crate::config::diag::build_yaml(&yaml, |p: &Located<JwtProvider>, diag| {
            JwtSpec::build(p, "auth.jwt[0]", false, diag)
        })
        .unwrap();
        JwtVerifier::new(&spec, None)
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    fn reason(r: Result<u64, Failure>) -> Option<Reason> {
        r.err().map(|f| f.reason)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn time_claims_honour_the_skew_at_their_exact_edges() {
        let v = verifier("");
        let at = |c: serde_json::Value| reason(v.check_claims(&claims(c), NOW));
        assert_eq!(at(serde_json::json!({})), Some(Reason::MissingExp));
        assert_eq!(
            at(serde_json::json!({"exp": "soon"})),
            Some(Reason::Malformed)
        );
        assert_eq!(at(serde_json::json!({"exp": -1})), Some(Reason::Malformed));
        // Expired once now ≥ exp + skew (30 s).
        assert_eq!(at(serde_json::json!({"exp": NOW - 29})), None);
        assert_eq!(
            at(serde_json::json!({"exp": NOW - 30})),
            Some(Reason::Expired)
        );
        // nbf: valid from nbf − skew.
        assert_eq!(
            at(serde_json::json!({"exp": NOW + 60, "nbf": NOW + 30})),
            None
        );
        assert_eq!(
            at(serde_json::json!({"exp": NOW + 60, "nbf": NOW + 31})),
            Some(Reason::NotYetValid)
        );
        // iat may be at most the skew ahead.
        assert_eq!(
            at(serde_json::json!({"exp": NOW + 60, "iat": NOW + 30})),
            None
        );
        assert_eq!(
            at(serde_json::json!({"exp": NOW + 60, "iat": NOW + 31})),
            Some(Reason::IssuedInFuture)
        );
        assert_eq!(
            v.check_claims(&claims(serde_json::json!({"exp": NOW + 5})), NOW)
                .ok(),
            Some(NOW + 5),
            "exp is returned for the verified-token cache"
        );
    }

    #[test]
    fn issuer_and_audience_match_exactly_in_string_or_array_form() {
        let v = verifier("issuer: https://idp.example\naudiences: [orders, billing]\n");
        let at = |c: serde_json::Value| reason(v.check_claims(&claims(c), NOW));
        let exp = NOW + 60;
        let ok = serde_json::json!({"exp": exp, "iss": "https://idp.example", "aud": "orders"});
        assert_eq!(at(ok), None);
        assert_eq!(
            at(
                serde_json::json!({"exp": exp, "iss": "https://idp.example", "aud": ["x", "billing"]})
            ),
            None
        );
        assert_eq!(
            at(serde_json::json!({"exp": exp, "iss": "https://idp.example/", "aud": "orders"})),
            Some(Reason::WrongIssuer)
        );
        assert_eq!(
            at(serde_json::json!({"exp": exp, "aud": "orders"})),
            Some(Reason::WrongIssuer)
        );
        assert_eq!(
            at(serde_json::json!({"exp": exp, "iss": "https://idp.example", "aud": "Orders"})),
            Some(Reason::WrongAudience)
        );
        assert_eq!(
            at(serde_json::json!({"exp": exp, "iss": "https://idp.example", "aud": [1, 2]})),
            Some(Reason::WrongAudience)
        );
        assert_eq!(
            at(serde_json::json!({"exp": exp, "iss": "https://idp.example"})),
            Some(Reason::WrongAudience)
        );
    }

    fn ec_jwk(kid: Option<&str>, extra: serde_json::Value) -> serde_json::Value {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        let point = secret.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        });
        if let Some(k) = kid {
            jwk["kid"] = serde_json::json!(k);
        }
        for (k, v) in extra.as_object().unwrap() {
            jwk[k] = v.clone();
        }
        jwk
    }

    #[test]
    fn a_jwks_yields_signing_keys_only_and_each_key_fits_its_own_family() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            ec_jwk(Some("sig"), serde_json::json!({"use": "sig"})),
            ec_jwk(Some("enc"), serde_json::json!({"use": "enc"})),
            ec_jwk(Some("pinned"), serde_json::json!({"alg": "ES256"})),
            ec_jwk(None, serde_json::json!({})),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        ]}))
        .unwrap();
        let keys = key_set(&set);
        let mut kids: Vec<&str> = keys.by_kid.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(
            kids,
            ["pinned", "sig"],
            "no encryption key, no symmetric key"
        );
        assert_eq!(keys.anonymous.len(), 1);
        let sig = &keys.by_kid["sig"];
        assert!(sig.fits(Algorithm::ES256));
        assert!(!sig.fits(Algorithm::RS256) && !sig.fits(Algorithm::HS256));
        // A key whose JWK states its alg is used for that alg only.
        let pinned = &keys.by_kid["pinned"];
        assert!(pinned.fits(Algorithm::ES256) && !pinned.fits(Algorithm::ES384));
    }
}
