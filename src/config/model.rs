//! The serde model of the configuration file. It mirrors `shared/contract/portcullis.example.yaml`:
//! key names and shapes here are the user-facing contract. Sections whose capability has not been
//! built yet are parsed (so their location is known) and refused by validation.

use super::located::{Located, Text};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A section that is recognised but not implemented yet: kept only for its location.
pub type Unsupported = Option<Located<IgnoredAny>>;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listeners: Vec<Located<Listener>>,
    pub admin: Located<Admin>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub upstreams: Vec<Located<Upstream>>,
    #[serde(default)]
    pub routes: Vec<Located<Route>>,

    #[serde(default)]
    pub dns: DnsConfig,

    #[serde(default)]
    pub auth: AuthProviders,
    #[serde(default)]
    pub rate_limits: Vec<Located<RateLimit>>,
    #[serde(default)]
    pub redis: Option<Located<RedisConfig>>,
    #[serde(default)]
    pub observability: Observability,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// SNI picks among these by their SANs; the first is the default.
    pub certificates: Vec<Located<CertificateFiles>>,
    #[serde(default = "default_min_tls")]
    pub min_version: Located<Text>,
    #[serde(default)]
    pub client_auth: Option<Located<ClientAuth>>,
    #[serde(default)]
    pub hsts: Option<Hsts>,
}

fn default_min_tls() -> Located<Text> {
    Located::new(Text::from("1.2"), 0)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: Text,
    pub key_file: Text,
}

/// mTLS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub ca_file: Text,
    /// true: the handshake fails without a client certificate signed by the CA.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    pub max_age_s: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

/// A named limit, applied by the routes (and `defaults`) that list it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: Located<Text>,
    pub algorithm: Located<RateAlgorithm>,
    /// token_bucket: burst size.
    #[serde(default)]
    pub capacity: Option<Located<u64>>,
    /// token_bucket: steady rate.
    #[serde(default)]
    pub refill_per_second: Option<Located<f64>>,
    /// sliding_window: requests per window.
    #[serde(default)]
    pub limit: Option<Located<u64>>,
    /// sliding_window: window length.
    #[serde(default)]
    pub window_s: Option<Located<u64>>,
    /// Parts of the bucket key: tenant, subject, api_key, client_ip, route, header:NAME.
    #[serde(default)]
    pub key: Vec<Located<Text>>,
    #[serde(default)]
    pub store: RateStore,
    /// Redis only: what to do while Redis cannot be used.
    #[serde(default)]
    pub on_store_failure: StoreFailure,
    /// `shadow`: decide and count, never refuse.
    #[serde(default)]
    pub mode: RateMode,
    /// Local store (and local fallback): most keys kept at once.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    TokenBucket,
    SlidingWindow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateStore {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    #[default]
    LocalFallback,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateMode {
    #[default]
    Enforce,
    Shadow,
}

/// The Redis server shared by `store: redis` limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`.
    pub url: Located<Text>,
    /// Limit for one decision's round trip; beyond it the store counts as failed.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures that open the breaker (Redis is then skipped).
    #[serde(default = "default_redis_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one request probes Redis again.
    #[serde(default = "default_redis_open")]
    pub breaker_open_ms: u64,
    /// Prefix of every key the gateway writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: Text,
}

fn default_redis_timeout() -> u64 {
    50
}
fn default_redis_failures() -> u32 {
    3
}
fn default_redis_open() -> u64 {
    500
}
fn default_redis_prefix() -> Text {
    Text::from("portcullis:rl:")
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Located<Text>,
    pub address: Located<Text>,
    #[serde(default)]
    pub tls: Option<Located<ListenerTls>>,
    #[serde(default)]
    pub limits: ListenerLimits,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    pub max_header_bytes: u64,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: u64,
    pub max_concurrent_requests: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 65_536,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 50_000,
            max_concurrent_requests: 20_000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Located<Text>,
    /// When set, every admin call except the health probes needs `Authorization: Bearer <token>`.
    #[serde(default, serialize_with = "redact")]
    pub token: Option<Text>,
}

fn redact<S: serde::Serializer>(v: &Option<Text>, s: S) -> Result<S::Ok, S::Error> {
    use sha2::Digest;
    // The checksum must change when the token changes, but the token itself is never written out.
    match v {
        Some(t) => s.serialize_str(&format!(
            "redacted:{}",
            hex::encode(sha2::Sha256::digest(t.as_bytes()))
        )),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub auth: Option<Located<AuthSpec>>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Located<u64>,
    /// Request body limit for routes that do not set `request.max_body_bytes`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// `%2F` / `%5C` in a path are refused with 400 unless this is true (then they are kept
    /// encoded, never treated as separators).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Limits applied to every route, before the route's own (they stack).
    #[serde(default)]
    pub rate_limits: Vec<Located<Text>>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            rate_limits: Vec::new(),
            auth: None,
            timeout_ms: default_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            drain_timeout_ms: default_drain_timeout_ms(),
            allow_encoded_slashes: false,
        }
    }
}

fn default_timeout_ms() -> Located<u64> {
    Located::new(15_000, 0)
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}

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
    pub keys: Vec<Located<ApiKey>>,
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
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: Located<Text>,
    pub targets: Located<Vec<Located<Target>>>,
    #[serde(default)]
    pub protocol: Located<Protocol>,
    #[serde(default)]
    pub tls: Option<Located<UpstreamTls>>,
    #[serde(default)]
    pub load_balancing: Located<LoadBalancing>,
    /// consistent_hash only: `header:NAME`, `cookie:NAME`, `client_ip` (or `claim:NAME` once auth exists).
    #[serde(default)]
    pub hash_key: Option<Located<Text>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Bulkhead: requests in flight to this upstream above this get 503 at once.
    #[serde(default)]
    pub max_concurrent_requests: Option<Located<u64>>,
    #[serde(default)]
    pub health_check: Option<Located<HealthCheck>>,
    #[serde(default)]
    pub circuit_breaker: Option<Located<CircuitBreaker>>,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: Text,
    #[serde(default = "default_hc_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_hc_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_hc_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy_threshold: u32,
}

fn default_hc_interval_ms() -> u64 {
    2_000
}
fn default_hc_timeout_ms() -> u64 {
    500
}
fn default_hc_healthy() -> u32 {
    2
}
fn default_hc_unhealthy() -> u32 {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "default_cb_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_cb_open_ms")]
    pub open_ms: u64,
    #[serde(default = "default_cb_half_open")]
    pub half_open_requests: u32,
}

fn default_cb_failures() -> u32 {
    5
}
fn default_cb_open_ms() -> u64 {
    30_000
}
fn default_cb_half_open() -> u32 {
    3
}

/// Retries to an upstream may add at most `percent` of its recent request rate, plus
/// `min_retries_per_second`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    pub percent: u32,
    pub min_retries_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20,
            min_retries_per_second: 3,
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}

/// `protocol: https` settings: the server name verified (default: the target's host) and the CA
/// trusted (default: the Mozilla root set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub server_name: Option<Text>,
    #[serde(default)]
    pub ca_file: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Https,
}

impl Default for Located<Protocol> {
    fn default() -> Self {
        Located::new(Protocol::Http1, 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

impl Default for Located<LoadBalancing> {
    fn default() -> Self {
        Located::new(LoadBalancing::RoundRobin, 0)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub address: Located<Text>,
    #[serde(default = "default_weight")]
    pub weight: Located<u32>,
}

fn default_weight() -> Located<u32> {
    Located::new(1, 0)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub max_idle_per_target: usize,
    pub idle_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_target: 64,
            idle_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Located<Text>,
    #[serde(rename = "match")]
    pub matcher: Located<RouteMatch>,
    #[serde(default)]
    pub priority: i32,

    // Exactly one action.
    #[serde(default)]
    pub upstream: Option<Located<Text>>,
    #[serde(default)]
    pub split: Option<Located<Vec<Located<SplitEntry>>>>,
    #[serde(default)]
    pub split_key: Option<Located<Text>>,
    #[serde(default)]
    pub direct_response: Option<Located<DirectResponse>>,

    #[serde(default)]
    pub rewrite: Option<Located<Rewrite>>,
    #[serde(default)]
    pub timeout_ms: Option<Located<u64>>,
    #[serde(default)]
    pub retries: Option<Located<Retries>>,
    #[serde(default)]
    pub auth: Option<Located<AuthSpec>>,
    #[serde(default)]
    pub request: RequestRules,
    #[serde(default)]
    pub headers: HeaderRules,

    #[serde(default, skip_serializing)]
    pub authorization: Option<Located<Authorization>>,
    /// Limits applied to this route, after the `defaults.rate_limits`.
    #[serde(default)]
    pub rate_limits: Vec<Located<Text>>,
    #[serde(default, skip_serializing)]
    pub cache: Unsupported,
    #[serde(default, skip_serializing)]
    pub cors: Unsupported,
    #[serde(default, skip_serializing)]
    pub mirror: Unsupported,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub hosts: Vec<Located<Text>>,
    pub path: Located<PathMatch>,
    #[serde(default)]
    pub methods: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub headers: Vec<Located<HeaderMatch>>,
}

/// `{ exact: P }`, `{ prefix: P }` or `{ regex: R }`; exactly one.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default)]
    pub exact: Option<Text>,
    #[serde(default)]
    pub prefix: Option<Text>,
    #[serde(default)]
    pub regex: Option<Text>,
}

/// A header predicate: present (only `name`), equal to `value`, or matching `regex`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: Text,
    #[serde(default)]
    pub value: Option<Text>,
    #[serde(default)]
    pub regex: Option<Text>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitEntry {
    pub upstream: Located<Text>,
    pub weight: u32,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Text,
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub strip_prefix: Option<Text>,
    #[serde(default)]
    pub replace_prefix: Option<ReplacePrefix>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefix {
    pub from: Text,
    pub to: Text,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: Located<u32>,
    /// `connect_failure`, `reset`, `timeout`, or a status code such as "503".
    #[serde(default = "default_retry_on")]
    pub on: Vec<Located<Text>>,
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default)]
    pub per_try_timeout_ms: Option<Located<u64>>,
    #[serde(default)]
    pub idempotency_key: bool,
    #[serde(default = "default_max_replay_bytes")]
    pub max_replay_bytes: u64,
}

fn default_retry_on() -> Vec<Located<Text>> {
    ["connect_failure", "reset"]
        .iter()
        .map(|s| Located::new(Text::from(*s), 0))
        .collect()
}
fn default_backoff_ms() -> u64 {
    25
}
fn default_max_replay_bytes() -> u64 {
    64 * 1024
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRules {
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub content_types: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub required_headers: Vec<Located<Text>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default)]
    pub request: HeaderOps,
    #[serde(default)]
    pub response: HeaderOps,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, Text>,
    #[serde(default)]
    pub remove: Vec<Text>,
}

/// How upstream host names are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `IP:port` of DNS servers; empty: the system's (/etc/resolv.conf).
    pub nameservers: Vec<Text>,
    /// Re-resolve no sooner than this, whatever the record's TTL (and this long after a failure).
    pub min_ttl_s: u64,
    /// Re-resolve at least this often.
    pub max_ttl_s: u64,
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            min_ttl_s: 5,
            max_ttl_s: 300,
            timeout_ms: 2000,
        }
    }
}

/// Telemetry. Sections not built yet are refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    #[serde(default)]
    pub trace_context: TraceContextConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// OpenTelemetry span export over OTLP/HTTP (protobuf), batched by a background thread.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL (`http://host:port/v1/traces`; a bare `http://host:port` gets `/v1/traces`).
    pub endpoint: Text,
    /// Fraction of new traces exported. A continued trace follows the caller's sampled flag
    /// unless `parent_based` is false.
    #[serde(default = "default_sample")]
    pub sample_ratio: f64,
    #[serde(default = "default_true")]
    pub parent_based: bool,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: Text,
    /// More resource attributes (e.g. `deployment.environment`).
    #[serde(default)]
    pub resource: BTreeMap<String, Text>,
    /// Headers sent with every export (e.g. a collector's authorization).
    #[serde(default)]
    pub headers: BTreeMap<String, Text>,
    /// Spans per export request.
    #[serde(default = "default_otlp_batch")]
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    #[serde(default = "default_otlp_interval")]
    pub export_interval_ms: u64,
    /// Spans waiting for the exporter; beyond this, spans are dropped and counted.
    #[serde(default = "default_otlp_queue")]
    pub queue_size: usize,
    /// Limit for one export request (connect + send + answer).
    #[serde(default = "default_otlp_timeout")]
    pub timeout_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_service_name() -> Text {
    Text::from("portcullis")
}
fn default_otlp_batch() -> usize {
    512
}
fn default_otlp_interval() -> u64 {
    1000
}
fn default_otlp_queue() -> usize {
    8192
}
fn default_otlp_timeout() -> u64 {
    5000
}

/// W3C Trace Context propagation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceContextConfig {
    /// Continue or start a trace and send `traceparent` / `tracestate` upstream.
    pub enabled: bool,
    /// When set, every response carries the trace id in this header.
    pub response_header: Option<Text>,
}

impl Default for TraceContextConfig {
    fn default() -> Self {
        TraceContextConfig {
            enabled: true,
            response_header: None,
        }
    }
}

/// One JSON line per request, written off the request path.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr` or a file path (reopened on SIGUSR1).
    #[serde(default = "default_log_destination")]
    pub destination: Text,
    /// Lines waiting for the writer; beyond this, lines are dropped and counted.
    #[serde(default = "default_log_queue")]
    pub queue_size: usize,
    /// Fraction of 2xx lines kept (errors are always logged).
    #[serde(default = "default_sample")]
    pub sample_2xx: f64,
    /// Log query strings (secret parameters are always masked).
    #[serde(default)]
    pub include_query: bool,
}

fn default_log_destination() -> Text {
    Text::from("stdout")
}
fn default_log_queue() -> usize {
    8192
}
fn default_sample() -> f64 {
    1.0
}

/// Prometheus metrics at `GET /metrics` on the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record request metrics (gauges of live state are always available).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}
