//! `consumers`, `consumer_store` and `plans`: who calls (beyond one credential), where the
//! shared records live, and the limits and quotas each plan gives.

use crate::config::located::{Located, Text};
use crate::config::model::RateLimit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `consumers[]`: a consumer defined in the file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub id: Located<Text>,
    #[serde(default)]
    pub tenant: Option<Text>,
    /// A `plans[].name`; without one, `defaults.plan`.
    #[serde(default)]
    pub plan: Option<Located<Text>>,
    #[serde(default)]
    pub scopes: Vec<Text>,
    /// Free-form strings, shown by `/admin/consumers/<id>`; never forwarded.
    #[serde(default)]
    pub metadata: BTreeMap<String, Text>,
}

/// `consumer_store`: consumers and API keys kept in the shared Redis server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerStoreConfig {
    /// Keys are `<prefix>consumer:<id>` (hash) and `<prefix>apikey:<sha256 hex>` (hash).
    #[serde(default = "default_consumer_prefix")]
    pub key_prefix: Text,
    /// How long a record read from Redis is used before it is read again.
    #[serde(default = "default_consumer_ttl")]
    pub cache_ttl_ms: Located<u64>,
    /// How long "no such key / consumer" is remembered.
    #[serde(default = "default_consumer_ttl")]
    pub negative_ttl_ms: Located<u64>,
    /// While Redis cannot be read, a cached record keeps being used for this long past its TTL.
    #[serde(default = "default_consumer_stale")]
    pub stale_ttl_ms: Located<u64>,
    /// Most records (found or not) kept at once.
    #[serde(default = "default_consumer_entries")]
    pub max_entries: Located<u64>,
    /// A credential whose record is not cached while Redis cannot be read: `unavailable` (503)
    /// or `unauthorized` (401).
    #[serde(default)]
    pub on_store_failure: ConsumerStoreFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStoreFailure {
    #[default]
    Unavailable,
    Unauthorized,
}

fn default_consumer_prefix() -> Text {
    Text::from("portcullis:")
}

fn default_consumer_ttl() -> Located<u64> {
    Located::new(5_000, 0)
}

fn default_consumer_stale() -> Located<u64> {
    Located::new(3_600_000, 0)
}

fn default_consumer_entries() -> Located<u64> {
    Located::new(100_000, 0)
}

/// `plans[]`: the limits and quotas a consumer on this plan gets on routes that apply
/// `{ by_plan: true }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: Located<Text>,
    /// Rate limits, as in `rate_limits[]` (key default `[consumer]`).
    #[serde(default)]
    pub limits: Vec<Located<RateLimit>>,
    #[serde(default)]
    pub quotas: Vec<Located<Quota>>,
}

/// A long-period quota, counted per consumer over calendar windows.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub name: Located<Text>,
    /// Requests admitted per window.
    pub limit: Located<u64>,
    pub period: Located<QuotaPeriod>,
    /// IANA time zone the windows start in (days at local midnight, months on the 1st).
    #[serde(default = "default_time_zone")]
    pub time_zone: Located<Text>,
    /// `redis` (exact across the fleet; needs `redis`) or `local` (this gateway only).
    #[serde(default = "default_quota_store")]
    pub store: crate::config::model::RateStore,
    #[serde(default)]
    pub on_store_failure: crate::config::model::StoreFailure,
    /// 0: one atomic Redis call per decision (exact). Above 0: counted locally and added to
    /// Redis this often (fewer round trips; may admit more than `limit`, see the README).
    #[serde(default = "default_flush")]
    pub flush_interval_ms: Located<u64>,
    #[serde(default)]
    pub mode: crate::config::model::RateMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Hour,
    Day,
    Month,
}

fn default_flush() -> Located<u64> {
    Located::new(0, 0)
}

fn default_time_zone() -> Located<Text> {
    Located::new(Text::from("UTC"), 0)
}

fn default_quota_store() -> crate::config::model::RateStore {
    crate::config::model::RateStore::Redis
}

/// An entry of a route's `rate_limits`: a limit's name, or `{ by_plan: true }` (the
/// consumer's plan's limits and quotas).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LimitRef {
    Name(Text),
    ByPlan(ByPlan),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ByPlan {
    pub by_plan: bool,
}
