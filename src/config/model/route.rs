//! `routes[]`: match rules, the action, and the per-route policies.

use super::{
    AuthSpec, Authorization, Compression, Cors, FaultConfig, MirrorConfig, RouteCacheConfig,
};
use crate::config::located::{HeaderText, Located, Text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Located<Redirect>>,

    /// Another upstream for bodiless requests when this route's fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Located<Fallback>>,
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
    /// Response body shaping (`response.json`).
    #[serde(default, skip_serializing_if = "ResponseRules::is_empty")]
    pub response: ResponseRules,

    #[serde(default, skip_serializing)]
    pub authorization: Option<Located<Authorization>>,
    /// Limits applied to this route, after the `defaults.rate_limits`.
    #[serde(default)]
    pub rate_limits: Vec<Located<super::LimitRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Located<RouteCacheConfig>>,
    // Absent sections are not serialized: the checksum of a config without them is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Located<Cors>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Located<Compression>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Located<MirrorConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Located<FaultConfig>>,
    /// This public route may reach an `exposure: internal` upstream on purpose.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expose_internal: bool,
    /// `ip_rules` by name, checked after routing, before authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_rules: Vec<Located<Text>>,
    /// The configurable `edge_rules.rules` this route applies (replaces `defaults.edge_rules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_rules: Option<Located<Vec<Located<Text>>>>,
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
    /// Query parameter predicates, after the header ones in precedence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<Located<QueryMatch>>,
}

/// A query parameter predicate: `present: true` (or only `name`), equal to `value`, or matching
/// `regex`; on the parameter's first occurrence, percent-decoded.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    pub name: Text,
    #[serde(default)]
    pub value: Option<Text>,
    #[serde(default)]
    pub regex: Option<Text>,
    #[serde(default)]
    pub present: Option<bool>,
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
pub struct Fallback {
    pub upstream: Located<Text>,
    /// `5xx`, `connect_failure`, `timeout`, `breaker_open`, `reset`; default all but `reset`.
    #[serde(default)]
    pub on: Option<Vec<Located<Text>>>,
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
    /// Every request's path becomes this one (the query is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<Text>,
}

/// `redirect`: the gateway answers with a redirect that keeps what it does not replace.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<Text>,
    #[serde(default)]
    pub host: Option<Text>,
    #[serde(default)]
    pub port: Option<u16>,
    /// The whole path (the query is kept).
    #[serde(default)]
    pub path: Option<Text>,
    /// A string: the route's matched prefix is replaced by it; `{ from, to }`: as in
    /// `rewrite.replace_prefix`.
    #[serde(default)]
    pub replace_prefix: Option<RedirectPrefix>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RedirectPrefix {
    To(Text),
    FromTo(ReplacePrefix),
}

fn default_redirect_status() -> u16 {
    302
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
    /// Only these client headers go upstream (framing and `Host` always do); the gateway's
    /// own headers and the route's header rules apply after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<Located<Vec<Text>>>,
    /// Client headers removed before the upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_headers: Vec<Located<Text>>,
    /// A JSON Schema the request body must match: inline (a mapping, or `true`/`false`) or a
    /// file path (a string, relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Located<serde_json::Value>>,
    /// The most schema errors one refusal lists (the rest are counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema_max_errors: Option<Located<u32>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Located<JsonShaping>>,
}

impl ResponseRules {
    pub fn is_empty(&self) -> bool {
        self.json.is_none()
    }
}

/// `response.json`: members removed by JSONPath, keys renamed.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonShaping {
    #[serde(default)]
    pub remove: Vec<Located<String>>,
    /// `from: to`; `from` a member name (any depth) or a JSONPath ending in one.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Bodies are held up to this to be shaped (default 1 MiB); larger ones pass unchanged.
    #[serde(default)]
    pub max_bytes: Option<u64>,
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
    /// Values may hold `${…}` template variables (see `policy::template`).
    #[serde(default)]
    pub set: BTreeMap<String, HeaderText>,
    /// Appended after `set`, keeping the values already there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, HeaderText>,
    #[serde(default)]
    pub remove: Vec<Text>,
}
