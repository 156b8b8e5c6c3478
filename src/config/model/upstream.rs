//! `upstreams[]`: targets, protocol, balancing, pools, health checks, breakers, retry budgets.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

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
    /// `internal`: never reached without authentication from a listener that is not
    /// `internal`, unless the route says `expose_internal: true`.
    #[serde(default, skip_serializing_if = "Exposure::is_public")]
    pub exposure: Exposure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exposure {
    #[default]
    Public,
    Internal,
}

impl Exposure {
    pub fn is_public(&self) -> bool {
        *self == Exposure::Public
    }
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
    /// Also open when this share of the requests in a sliding window failed (with at least
    /// `min_requests` in it), however they alternate with successes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<Located<FailureRate>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailureRate {
    pub percent: u32,
    #[serde(default = "default_fr_min_requests")]
    pub min_requests: u32,
    #[serde(default = "default_fr_window_s")]
    pub window_s: u64,
}

fn default_fr_min_requests() -> u32 {
    20
}

fn default_fr_window_s() -> u64 {
    10
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
    /// mTLS: the certificate chain (PEM) the gateway presents, with its key; re-read on reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 in cleartext (h2c, prior knowledge).
    Http2,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS, ALPN `h2` required.
    H2,
}

impl Protocol {
    /// Over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::H2)
    }

    /// HTTP/2 (one shared connection per target).
    pub fn http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::H2)
    }
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
