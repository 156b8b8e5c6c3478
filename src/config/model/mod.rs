//! The serde model of the configuration file, one file per section. It mirrors
//! `shared/contract/portcullis.example.yaml`: key names and shapes here are the user-facing
//! contract. The model only describes the file; each domain module turns its section into its
//! compiled form (see `crate::compile`).

mod auth;
mod browser;
mod cache;
mod consumer;
mod edge;
mod listener;
mod observe;
mod ratelimit;
mod route;
mod shadow;
mod tenant;
mod upstream;

pub use auth::*;
pub use browser::*;
pub use cache::*;
pub use consumer::*;
pub use edge::*;
pub use listener::*;
pub use observe::*;
pub use ratelimit::*;
pub use route::*;
pub use shadow::*;
pub use tenant::*;
pub use upstream::*;

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Vec<Located<Listener>>,
    /// Required: optional here only so that a file without it is told exactly that (serde's
    /// "missing field" is located at whatever key came last).
    #[serde(default)]
    pub admin: Option<Located<Admin>>,
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

    // Absent sections are not serialized: the checksum of a config without them is unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_rules: Vec<Located<IpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_rules: Option<Located<EdgeRules>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Located<CacheStoreConfig>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Located<ConsumerConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_store: Option<Located<ConsumerStoreConfig>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<Located<Plan>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Located<TenantsConfig>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Located<Text>,
    /// When set, every admin call except the health probes needs `Authorization: Bearer <token>`.
    #[serde(default, serialize_with = "redact")]
    pub token: Option<Text>,
    /// Serve the read-only dashboard at `/dashboard` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<bool>,
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
    /// On SIGTERM, how long `/health/ready` answers 503 (and HTTP/1.1 responses say
    /// `Connection: close`) while the gateway still serves, before it stops accepting: the time a
    /// load balancer needs to see the instance go and stop sending to it.
    // Absent (0) is not serialized: the checksum of a config without it is unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drain_delay_ms: u64,
    /// `%2F` / `%5C` in a path are refused with 400 unless this is true (then they are kept
    /// encoded, never treated as separators).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Limits applied to every route, before the route's own (they stack).
    #[serde(default)]
    pub rate_limits: Vec<Located<Text>>,
    /// CORS for routes that do not set their own, and for the gateway's 404s.
    // Absent sections are not serialized: the checksum of a config without them is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Located<Cors>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Located<Compression>>,
    /// The configurable `edge_rules.rules` (by name) routes apply when they do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_rules: Option<Located<Vec<Located<Text>>>>,
    /// The plan of consumers that have none (and of principals without a consumer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Located<Text>>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            rate_limits: Vec::new(),
            auth: None,
            timeout_ms: default_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            drain_timeout_ms: default_drain_timeout_ms(),
            drain_delay_ms: 0,
            allow_encoded_slashes: false,
            cors: None,
            compression: None,
            edge_rules: None,
            plan: None,
        }
    }
}

fn default_timeout_ms() -> Located<u64> {
    Located::new(15_000, 0)
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_drain_timeout_ms() -> u64 {
    30_000
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
