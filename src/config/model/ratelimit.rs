//! `rate_limits[]` and the shared `redis` server.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

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
    /// `rediss://`: the CA that signed the server's certificate (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<Text>,
    /// `rediss://` with a client certificate (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<Text>,
    /// Find the primary through Redis Sentinel (and follow its failovers); `url` then gives
    /// the database, password and TLS of the data nodes, its host is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<Located<RedisSentinel>>,
    /// A Redis Cluster: its nodes (any of them; the rest are discovered); `url` then gives the
    /// password and TLS, its host is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Located<RedisCluster>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCluster {
    /// `host:port` of cluster nodes.
    pub nodes: Vec<Text>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSentinel {
    /// The name the sentinels monitor the primary under.
    pub master_name: Text,
    /// `host:port` of each sentinel.
    pub nodes: Vec<Text>,
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
