//! `auth` (the providers) and the per-route `auth` / `authorization` sections.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `auth: none` or `auth: { jwt: NAME }` / `{ api_key: NAME }` / `{ any: [...] }` / `{ mtls: {} }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AuthSpec {
    Keyword(String),
    Policy(AuthPolicy),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    #[serde(default)]
    pub jwt: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub introspection: Option<String>,
    #[serde(default)]
    pub any: Option<Vec<AuthSpec>>,
    #[serde(default)]
    pub mtls: Option<BTreeMap<String, String>>,
    /// An `auth.signatures` provider (RFC 9421 signed requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Top-level `auth`: the providers routes refer to by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthProviders {
    #[serde(default)]
    pub jwt: Vec<Located<JwtProvider>>,
    #[serde(default)]
    pub api_keys: Vec<Located<ApiKeyProvider>>,
    #[serde(default)]
    pub introspection: Vec<Located<IntrospectionProvider>>,
    // Absent sections stay out of the canonical form, so checksums agree across builds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<Located<SignatureProvider>>,
}

/// Partners' signed requests (RFC 9421 HTTP Message Signatures).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureProvider {
    pub name: Located<Text>,
    pub keys: Located<Vec<Located<SignatureKey>>>,
    /// Components every signature must cover, beyond the ones always required.
    #[serde(default)]
    pub required_components: Option<Located<Vec<Located<Text>>>>,
    /// Only the signature with this label is considered (default: any whose `keyid` is known).
    #[serde(default)]
    pub label: Option<Text>,
    #[serde(default = "default_signature_max_age")]
    pub max_age_s: u64,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    #[serde(default)]
    pub require_nonce: bool,
    #[serde(default)]
    pub replay: Option<Located<ReplayConfig>>,
}

fn default_signature_max_age() -> u64 {
    300
}

/// Where used nonces are remembered.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// `local` (this gateway) or `redis` (the fleet).
    #[serde(default = "default_replay_store")]
    pub store: Located<Text>,
    /// While Redis cannot be asked (or the local table is full): `deny` (503) or `allow`.
    #[serde(default)]
    pub on_store_failure: RevocationFailure,
    /// Bound of the local table.
    #[serde(default = "default_replay_entries")]
    pub max_entries: usize,
}

fn default_replay_store() -> Located<Text> {
    Located::new(Text::from("local"), 0)
}

fn default_replay_entries() -> usize {
    100_000
}

/// One partner key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureKey {
    /// The `keyid` signers send.
    pub id: Located<Text>,
    /// The consumer this key signs for (`consumers[].id` or the consumer store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Text>,
    pub alg: Located<Text>,
    /// A PEM public key (`PUBLIC KEY`, or `RSA PUBLIC KEY`), relative to the config file.
    #[serde(default)]
    pub key_file: Option<Located<Text>>,
    /// An `hmac-sha256` secret as text, or as base64 in `secret_base64`.
    #[serde(default)]
    pub secret: Option<Located<Text>>,
    #[serde(default)]
    pub secret_base64: Option<Located<Text>>,
    #[serde(default)]
    pub tenant: Option<Text>,
    #[serde(default)]
    pub scopes: Vec<Text>,
}

/// OAuth2 token introspection (RFC 7662) for opaque tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionProvider {
    pub name: Located<Text>,
    /// The introspection endpoint (http).
    pub endpoint: Located<Text>,
    pub client_id: Text,
    pub client_secret: Text,
    /// Active results are cached until the smaller of the token's `exp` and this.
    #[serde(default = "default_introspection_cache")]
    pub cache_s: u64,
    /// Inactive results are cached this long.
    #[serde(default = "default_inactive_cache")]
    pub inactive_cache_s: u64,
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
    /// Field holding the tenant (default `tenant_id`, then `tenant`).
    #[serde(default)]
    pub tenant_claim: Option<Text>,
    /// The claim naming the token's consumer (`consumers[].id` or the consumer store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<Text>,
}

fn default_introspection_cache() -> u64 {
    60
}

fn default_inactive_cache() -> u64 {
    10
}

fn default_introspection_timeout() -> u64 {
    1000
}

/// JSON Web Tokens verified locally.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    pub name: Located<Text>,
    /// Exactly one key source.
    #[serde(default)]
    pub jwks_url: Option<Located<Text>>,
    #[serde(default)]
    pub jwks_file: Option<Located<Text>>,
    /// HS256/384/512 only.
    #[serde(default)]
    pub secret: Option<Located<Text>>,
    #[serde(default)]
    pub issuer: Option<Text>,
    #[serde(default)]
    pub audiences: Vec<Text>,
    pub algorithms: Located<Vec<Located<Text>>>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_s: u64,
    #[serde(default = "default_jwks_cache")]
    pub jwks_cache_s: u64,
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_s: u64,
    /// Claim name → request header sent upstream.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, Text>,
    /// Claim holding the tenant (default `tenant_id`, then `tenant`).
    #[serde(default)]
    pub tenant_claim: Option<Text>,
    /// The claim naming the token's consumer (`consumers[].id` or the consumer store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<Text>,
    /// A `jti` deny-list in Redis.
    #[serde(default)]
    pub revocation: Option<Located<Revocation>>,
    /// How long a verified token is remembered (never past its `exp`); 0 verifies every time.
    #[serde(default = "default_verified_cache")]
    pub verified_cache_s: u64,
}

fn default_verified_cache() -> u64 {
    300
}

/// Revoked token ids (`jti`) kept in Redis by whoever revokes them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// `redis` (the only store).
    pub store: Text,
    /// A token is revoked when `<key_prefix><jti>` exists.
    #[serde(default = "default_revocation_prefix")]
    pub key_prefix: Text,
    /// Answers are remembered this long per jti.
    #[serde(default = "default_revocation_cache")]
    pub cache_s: u64,
    /// While Redis cannot be asked: `deny` (503) or `allow`.
    #[serde(default)]
    pub on_store_failure: RevocationFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationFailure {
    #[default]
    Deny,
    Allow,
}

fn default_revocation_prefix() -> Text {
    Text::from("revoked:")
}

fn default_revocation_cache() -> u64 {
    5
}

fn default_clock_skew() -> u64 {
    30
}

fn default_jwks_cache() -> u64 {
    86_400
}

fn default_jwks_min_refetch() -> u64 {
    300
}

/// API keys, stored only as SHA-256 hashes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyProvider {
    pub name: Located<Text>,
    /// Header carrying the key (default `X-API-Key`); or `query` for a query parameter.
    #[serde(default)]
    pub header: Option<Text>,
    #[serde(default)]
    pub query: Option<Text>,
    #[serde(default)]
    pub keys: Vec<Located<ApiKey>>,
    /// Keys not listed in `keys` are looked up in `consumer_store` (Redis).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consumer_store: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: Located<Text>,
    /// Hex SHA-256 of the key.
    pub sha256: Located<Text>,
    #[serde(default)]
    pub tenant: Option<Text>,
    #[serde(default)]
    pub scopes: Vec<Text>,
    /// The `consumers[].id` this key belongs to (its tenant and scopes when the key has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<Located<Text>>,
}

/// `routes[].authorization`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    #[serde(default)]
    pub required_scopes: Vec<Text>,
    /// Claim → allowed values (any one).
    #[serde(default)]
    pub required_claims: BTreeMap<String, Vec<Text>>,
    /// The request's tenant must have one of these statuses (`tenants`, or its status source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_status: Option<Located<Vec<Text>>>,
}
