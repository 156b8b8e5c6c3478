//! Partners' signed requests: RFC 9421 HTTP Message Signatures, verified against keys bound to
//! their algorithms, with the application requirements of §3.2.1 / §7.2 enforced (covered
//! components, `created` / `expires`, nonces never accepted twice) and the body bound through
//! `Content-Digest` (RFC 9530, checked as the body streams; see `digest`).

pub mod base;
pub mod digest;
pub mod keys;
pub mod replay;

use crate::auth::{AuthCounters, Failure, Principal, Reason};
use crate::config::{Diag, Located, SignatureProvider};
use base::{BaseError, SignedRequest};
use keys::{Alg, KeyMaterial, Verifier};
use replay::{LocalNonces, NonceStore, Seen};
use sfv::visitor::{DictionaryVisitor, EntryVisitor, Ignored};
use sfv::{BareItem, InnerList, ListEntry, Parser};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One partner key, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub id: String,
    pub material: KeyMaterial,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    /// The consumer this key signs for.
    pub consumer: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySpec {
    pub redis: bool,
    pub allow_on_failure: bool,
    pub max_entries: usize,
}

/// `auth.signatures[]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureSpec {
    pub name: String,
    pub keys: Vec<KeySpec>,
    /// Component names every signature must cover (besides the rules always applied).
    pub required: Vec<String>,
    pub label: Option<String>,
    pub max_age_s: u64,
    pub clock_skew_s: u64,
    pub require_nonce: bool,
    pub replay: ReplaySpec,
}

/// Components required when `required_components` is not given.
const DEFAULT_REQUIRED: [&str; 3] = ["@method", "@authority", "@path"];

const DERIVED: [&str; 8] = [
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@query-param",
];

impl SignatureSpec {
    /// Builds one provider; key files are read relative to `base` (the config file's folder).
    pub fn build(
        p: &Located<SignatureProvider>,
        key: &str,
        base: &Path,
        redis: bool,
        diag: &mut Diag,
    ) -> Option<SignatureSpec> {
        let mark = diag.mark();
        diag.kebab_name(&p.name, format!("{key}.name"));
        if p.keys.is_empty() {
            diag.err(
                p.keys.line,
                format!("{key}.keys"),
                "at least one key is required",
            );
        }
        let mut keys = Vec::new();
        let mut ids: Vec<&str> = Vec::new();
        for (i, k) in p.keys.iter().enumerate() {
            let kkey = format!("{key}.keys[{i}]");
            if k.id.is_empty() {
                diag.err(k.id.line, format!("{kkey}.id"), "a key id is required");
            }
            if ids.contains(&k.id.as_str()) {
                diag.err(
                    k.id.line,
                    format!("{kkey}.id"),
                    format!("key id `{}` is used twice", k.id.as_str()),
                );
            }
            ids.push(k.id.as_str());
            let Some(alg) = Alg::parse(&k.alg) else {
                diag.err(
                    k.alg.line,
                    format!("{kkey}.alg"),
                    format!(
                        "unknown algorithm `{}`: use one of {}",
                        k.alg.as_str(),
                        Alg::NAMES
                    ),
                );
                continue;
            };
            let sources = [
                k.key_file.is_some(),
                k.secret.is_some(),
                k.secret_base64.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                diag.err(
                    k.id.line,
                    &kkey,
                    "exactly one of key_file, secret, secret_base64 is required",
                );
                continue;
            }
            let material = match (&k.key_file, &k.secret, &k.secret_base64) {
                (Some(f), _, _) => {
                    let path = base.join(f.as_str());
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
                        .and_then(|pem| KeyMaterial::public_pem(alg, &pem))
                        .map_err(|m| (f.line, format!("{kkey}.key_file"), m))
                }
                (_, Some(s), _) if alg == Alg::HmacSha256 => {
                    KeyMaterial::secret(s.as_bytes().to_vec())
                        .map_err(|m| (s.line, format!("{kkey}.secret"), m))
                }
                (_, _, Some(s)) if alg == Alg::HmacSha256 => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(s.as_str().trim())
                        .map_err(|e| format!("not base64: {e}"))
                        .and_then(KeyMaterial::secret)
                        .map_err(|m| (s.line, format!("{kkey}.secret_base64"), m))
                }
                _ => Err((
                    k.alg.line,
                    format!("{kkey}.alg"),
                    format!(
                        "{} needs a public key (key_file), not a secret",
                        alg.as_str()
                    ),
                )),
            };
            match material {
                Ok(material) => keys.push(KeySpec {
                    id: k.id.to_string(),
                    material,
                    tenant: k.tenant.as_ref().map(|t| t.to_string()),
                    consumer: k.consumer.as_ref().map(|c| c.to_string()),
                    scopes: k.scopes.iter().map(|s| s.to_string()).collect(),
                }),
                Err((line, at, m)) => diag.err(line, at, m),
            }
        }
        let required: Vec<String> = match &p.required_components {
            None => DEFAULT_REQUIRED.iter().map(|s| s.to_string()).collect(),
            Some(list) => list
                .iter()
                .filter_map(|c| {
                    let ok = if c.starts_with('@') {
                        DERIVED.contains(&c.as_str()) && c.as_str() != "@query-param"
                    } else {
                        !c.is_empty()
                            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
                    };
                    if !ok {
                        diag.err(
                            c.line,
                            format!("{key}.required_components"),
                            format!("`{}` is not a derived component of a request nor a lowercase field name", c.as_str()),
                        );
                    }
                    ok.then(|| c.to_string())
                })
                .collect(),
        };
        if p.max_age_s == 0 || p.max_age_s > 86_400 {
            diag.err(
                p.name.line,
                format!("{key}.max_age_s"),
                "between 1 and 86400",
            );
        }
        if p.clock_skew_s > 300 {
            diag.err(p.name.line, format!("{key}.clock_skew_s"), "at most 300");
        }
        let replay = match &p.replay {
            None => ReplaySpec {
                redis: false,
                allow_on_failure: false,
                max_entries: 100_000,
            },
            Some(r) => {
                let redis_store = match r.store.as_str() {
                    "local" => false,
                    "redis" => {
                        if !redis {
                            diag.err(
                                r.line,
                                format!("{key}.replay.store"),
                                "store `redis` needs the top-level `redis` section",
                            );
                        }
                        true
                    }
                    other => {
                        diag.err(
                            r.line,
                            format!("{key}.replay.store"),
                            format!("unknown store `{other}`: use local or redis"),
                        );
                        false
                    }
                };
                if r.max_entries == 0 {
                    diag.err(r.line, format!("{key}.replay.max_entries"), "at least 1");
                }
                ReplaySpec {
                    redis: redis_store,
                    allow_on_failure: r.on_store_failure == crate::config::RevocationFailure::Allow,
                    max_entries: r.max_entries,
                }
            }
        };
        diag.ok_since(
            mark,
            SignatureSpec {
                name: p.name.to_string(),
                keys,
                required,
                label: p.label.as_ref().map(|l| l.to_string()),
                max_age_s: p.max_age_s,
                clock_skew_s: p.clock_skew_s,
                require_nonce: p.require_nonce,
                replay,
            },
        )
    }

    /// How long a nonce is remembered: as long as a signature carrying it can be valid.
    fn nonce_window(&self) -> Duration {
        Duration::from_secs(self.max_age_s + 2 * self.clock_skew_s)
    }
}

struct Key {
    id: String,
    alg: Alg,
    verifier: Verifier,
    tenant: Option<String>,
    scopes: Vec<String>,
    consumer: Option<Arc<str>>,
}

/// A provider at run time.
pub struct SignatureVerifier {
    pub name: Arc<str>,
    spec: SignatureSpec,
    keys: Vec<Key>,
    nonces: NonceStore,
    pub counters: Arc<AuthCounters>,
}

/// A request to verify: the parts the base needs, and whether it carries a body.
pub struct SignatureInput<'a> {
    pub request: SignedRequest<'a>,
    pub has_body: bool,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// Collects a dictionary's keys, including repeated ones (which RFC 9651 parsing folds).
struct Labels<'a>(&'a mut Vec<String>);

impl<'de> DictionaryVisitor<'de> for Labels<'_> {
    type Out = ();
    type Error = std::convert::Infallible;

    fn entry(&mut self, key: &'de sfv::KeyRef) -> Result<impl EntryVisitor<'de>, Self::Error> {
        self.0.push(key.as_str().to_string());
        Ok(Ignored)
    }

    fn finish(self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A dictionary field's combined lines, parsed; `Err` when malformed or when a label repeats.
fn dictionary(
    headers: &http::HeaderMap,
    name: &str,
) -> Result<Option<sfv::Dictionary>, &'static str> {
    let mut lines = Vec::new();
    for v in headers.get_all(name) {
        lines.push(
            v.to_str()
                .map_err(|_| "signature fields must be visible ASCII")?,
        );
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let joined = lines.join(", ");
    let mut labels = Vec::new();
    Parser::new(&joined)
        .parse_dictionary_with_visitor(Labels(&mut labels))
        .map_err(|_| "malformed signature field")?;
    let count = labels.len();
    labels.sort();
    labels.dedup();
    if labels.len() != count {
        return Err("a signature label appears twice");
    }
    Parser::new(&joined)
        .parse()
        .map(Some)
        .map_err(|_| "malformed signature field")
}

impl SignatureVerifier {
    pub fn new(
        spec: &SignatureSpec,
        redis: Option<&Arc<crate::redis_store::RedisStore>>,
        local: Arc<LocalNonces>,
    ) -> SignatureVerifier {
        let nonces = match (spec.replay.redis, redis) {
            (true, Some(r)) => NonceStore::Redis(Arc::clone(r)),
            _ => NonceStore::Local(local),
        };
        SignatureVerifier {
            name: Arc::from(spec.name.as_str()),
            keys: spec
                .keys
                .iter()
                .map(|k| Key {
                    id: k.id.clone(),
                    alg: k.material.alg,
                    verifier: Verifier::new(&k.material),
                    tenant: k.tenant.clone(),
                    consumer: k.consumer.as_deref().map(Arc::from),
                    scopes: k.scopes.clone(),
                })
                .collect(),
            spec: spec.clone(),
            nonces,
            counters: Arc::default(),
        }
    }

    pub fn spec(&self) -> &SignatureSpec {
        &self.spec
    }

    fn fail(&self, reason: Reason, description: &'static str) -> Failure {
        Failure::signature(&self.name, reason, description)
    }

    /// Verifies the request's signature and yields its principal (subject = key id); the
    /// principal carries the `Content-Digest` its body must still match.
    pub async fn authenticate(
        &self,
        input: &SignatureInput<'_>,
    ) -> Result<Arc<Principal>, Failure> {
        let (principal, nonce) = self.verify(input)?;
        if let Some(nonce) = nonce {
            let key = format!(
                "{}:{}:{}",
                self.name,
                principal.subject.as_deref().unwrap_or(""),
                nonce
            );
            match self.nonces.first_use(&key, self.spec.nonce_window()).await {
                Seen::First => {}
                Seen::Replayed => {
                    return Err(
                        self.fail(Reason::Replayed, "this signature's nonce was already used")
                    )
                }
                Seen::Unavailable if self.spec.replay.allow_on_failure => {}
                Seen::Unavailable => {
                    return Err(self.fail(
                        Reason::ProviderUnavailable,
                        "the nonce store cannot be asked",
                    ))
                }
            }
        }
        Ok(Arc::new(principal))
    }

    /// Everything but the replay check (which must only run on a signature that verified, or
    /// anyone could burn a partner's nonces): the principal and the nonce to record.
    pub fn verify(
        &self,
        input: &SignatureInput<'_>,
    ) -> Result<(Principal, Option<String>), Failure> {
        let headers = input.request.headers;
        let sig_input =
            dictionary(headers, "signature-input").map_err(|d| self.fail(Reason::Malformed, d))?;
        let sigs = dictionary(headers, "signature").map_err(|d| self.fail(Reason::Malformed, d))?;
        let (sig_input, sigs) = match (sig_input, sigs) {
            (None, None) => {
                return Err(Failure {
                    scheme: "Signature",
                    ..Failure::missing(&self.name)
                })
            }
            (Some(i), Some(s)) => (i, s),
            _ => {
                return Err(self.fail(
                    Reason::Malformed,
                    "Signature and Signature-Input must both be present",
                ))
            }
        };
        // Candidates: the configured label, or every signature whose keyid is ours.
        let mut first_failure: Option<Failure> = None;
        let mut unknown_key = false;
        for (label, entry) in &sig_input {
            if self
                .spec
                .label
                .as_deref()
                .is_some_and(|l| l != label.as_str())
            {
                continue;
            }
            let ListEntry::InnerList(list) = entry else {
                return Err(self.fail(
                    Reason::Malformed,
                    "a Signature-Input member is not an inner list",
                ));
            };
            let keyid = param_str(list, "keyid");
            let Some(key) = keyid.and_then(|id| self.keys.iter().find(|k| k.id == id)) else {
                unknown_key = true;
                continue;
            };
            let Some(ListEntry::Item(sig)) = sigs.get(label.as_str()) else {
                return Err(self.fail(
                    Reason::Malformed,
                    "no Signature member for the Signature-Input label",
                ));
            };
            let Some(sig) = sig.bare_item.as_byte_sequence() else {
                return Err(self.fail(Reason::Malformed, "a signature is a byte sequence"));
            };
            match self.check_one(input, list, key, sig) {
                Ok(v) => return Ok(v),
                Err(f) => {
                    first_failure.get_or_insert(f);
                }
            }
        }
        Err(first_failure.unwrap_or_else(|| {
            if unknown_key {
                self.fail(Reason::UnknownKey, "no signature by a known key id")
            } else {
                self.fail(
                    Reason::MissingCredentials,
                    "no signature with the expected label",
                )
            }
        }))
    }

    fn check_one(
        &self,
        input: &SignatureInput<'_>,
        list: &InnerList,
        key: &Key,
        sig: &[u8],
    ) -> Result<(Principal, Option<String>), Failure> {
        // Parameters: types first (§2.3).
        for (k, v) in &list.params {
            let ok = match k.as_str() {
                "created" | "expires" => v.as_integer().is_some(),
                "nonce" | "alg" | "keyid" | "tag" => v.as_string().is_some(),
                _ => true,
            };
            if !ok {
                return Err(self.fail(
                    Reason::Malformed,
                    "a signature parameter has the wrong type",
                ));
            }
        }
        if let Some(alg) = param_str(list, "alg") {
            if alg != key.alg.as_str() {
                return Err(self.fail(
                    Reason::AlgorithmNotAllowed,
                    "alg differs from the key's algorithm",
                ));
            }
        }
        // Covered components against the requirements.
        let covered: Vec<&str> = list
            .items
            .iter()
            .filter_map(|i| match &i.bare_item {
                BareItem::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let has = |c: &str| covered.contains(&c) || satisfied_by_target(c, &covered);
        let mut missing =
            !has("@method") || !(has("@authority") || covered.contains(&"@target-uri"));
        missing |= self.spec.required.iter().any(|r| !has(r));
        if input.has_body && !covered.contains(&"content-digest") {
            missing = true;
        }
        if missing {
            return Err(self.fail(
                Reason::ComponentNotCovered,
                "the signature does not cover every required component",
            ));
        }
        // Time (§3.2.1): created within max_age (and not ahead beyond the skew), expires.
        let now = input.now as i128;
        let skew = self.spec.clock_skew_s as i128;
        let Some(created) = param_int(list, "created") else {
            return Err(self.fail(Reason::Malformed, "the signature has no created parameter"));
        };
        if created > now + skew {
            return Err(self.fail(
                Reason::IssuedInFuture,
                "the signature was created in the future",
            ));
        }
        if now - created > self.spec.max_age_s as i128 + skew {
            return Err(self.fail(Reason::Expired, "the signature is older than max_age_s"));
        }
        if let Some(expires) = param_int(list, "expires") {
            if now > expires + skew {
                return Err(self.fail(Reason::Expired, "the signature has expired"));
            }
        }
        let nonce = param_str(list, "nonce").map(str::to_string);
        if self.spec.require_nonce && nonce.is_none() {
            return Err(self.fail(Reason::MissingNonce, "the signature needs a nonce"));
        }
        // The digest the body must match, when it is covered.
        let body_digest = if covered.contains(&"content-digest") {
            match digest::parse(headers_of(input)) {
                Ok(Some(d)) => Some(Arc::new(d)),
                Ok(None) => {
                    return Err(self.fail(
                        Reason::MissingDigest,
                        "a signed request with a body needs content-digest",
                    ))
                }
                Err(d) => return Err(self.fail(Reason::Malformed, d)),
            }
        } else {
            None
        };
        let base = base::signature_base(list, &input.request).map_err(|e| match e {
            BaseError::Absent(_)
                if covered.contains(&"content-digest")
                    && !input.request.headers.contains_key("content-digest") =>
            {
                self.fail(
                    Reason::MissingDigest,
                    "a signed request with a body needs content-digest",
                )
            }
            BaseError::Absent(_) => self.fail(
                Reason::Malformed,
                "a covered component is not in the request",
            ),
            BaseError::Malformed(_) => {
                self.fail(Reason::Malformed, "the covered components are malformed")
            }
        })?;
        if !key.verifier.verify(base.as_bytes(), sig) {
            return Err(self.fail(Reason::BadSignature, "the signature does not verify"));
        }
        Ok((
            Principal {
                provider: Arc::clone(&self.name),
                subject: Some(key.id.clone()),
                tenant: key.tenant.clone(),
                scopes: key.scopes.clone(),
                consumer_ref: key.consumer.clone(),
                body_digest,
                signature_counters: Some(Arc::clone(&self.counters)),
                ..Principal::default()
            },
            nonce,
        ))
    }
}

fn headers_of<'a>(input: &'a SignatureInput<'_>) -> &'a http::HeaderMap {
    input.request.headers
}

/// `@target-uri` covers the parts of the target; `@request-target` covers path and query.
fn satisfied_by_target(required: &str, covered: &[&str]) -> bool {
    match required {
        "@path" | "@query" => {
            covered.contains(&"@target-uri") || covered.contains(&"@request-target")
        }
        "@authority" | "@scheme" => covered.contains(&"@target-uri"),
        _ => false,
    }
}

fn param_str<'a>(list: &'a InnerList, name: &str) -> Option<&'a str> {
    list.params
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| v.as_string())
        .map(|s| s.as_str())
}

fn param_int(list: &InnerList, name: &str) -> Option<i128> {
    list.params
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| v.as_integer())
        .map(|i| i64::from(i) as i128)
}

#[cfg(test)]
mod tests;
