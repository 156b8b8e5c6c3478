//! Edge protection: `ip_rules` (named CIDR lists, applied by listeners and routes) and
//! `edge_rules` (the built-in request checks and the configurable deny / log rules).

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

/// `ip_rules[]`: one named allow / deny list. The most specific matching CIDR decides (a tie
/// goes to deny); an address no entry matches is allowed unless the rule has an allow list.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRule {
    pub name: Located<Text>,
    #[serde(default)]
    pub allow: Vec<Located<Text>>,
    #[serde(default)]
    pub deny: Vec<Located<Text>>,
    /// One CIDR (or address) per line, `#` comments; relative to the config file; re-read on
    /// every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_file: Option<Located<Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_file: Option<Located<Text>>,
}

/// `edge_rules`: the request-rule layer in front of routing and authentication.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRules {
    /// `enforce` (default) or `report_only` (log and count what would be refused).
    #[serde(default)]
    pub mode: Option<Located<Text>>,
    /// Methods any route may be asked for; others get 405 before routing. Default: GET, HEAD,
    /// POST, PUT, PATCH, DELETE, OPTIONS (TRACE and CONNECT refused).
    #[serde(default)]
    pub methods: Option<Located<Vec<Text>>>,
    /// More request header fields than this get 431. Default 100.
    #[serde(default)]
    pub max_header_count: Option<Located<u64>>,
    /// Built-in rules to turn off, by name (`path-traversal`, …).
    #[serde(default)]
    pub disable: Option<Located<Vec<Located<Text>>>>,
    /// Configurable rules, applied to every route unless `defaults.edge_rules` or the route's
    /// `edge_rules` name the ones it uses.
    #[serde(default)]
    pub rules: Vec<Located<EdgeRule>>,
}

/// One configurable rule: every condition it states must hold for it to match.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRule {
    pub name: Located<Text>,
    /// `deny` (403, default) or `log` (counted and logged, the request goes on).
    #[serde(default)]
    pub action: Option<Located<Text>>,
    /// Regexes on the User-Agent; any one matching is a match. A request without one does not
    /// match (use `header: { name: user-agent, absent: true }` for that).
    #[serde(default)]
    pub user_agent: Option<Located<Vec<Located<Text>>>>,
    /// A file of User-Agent patterns, one regex per line, `#` comments (a bad-bot list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_file: Option<Located<Text>>,
    /// A regex on the normalized path.
    #[serde(default)]
    pub path: Option<Located<Text>>,
    /// A regex on the raw query string (without `?`).
    #[serde(default)]
    pub query: Option<Located<Text>>,
    /// A header's presence, absence or value.
    #[serde(default)]
    pub header: Option<Located<EdgeHeaderCondition>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeHeaderCondition {
    pub name: Text,
    /// Matches when the header is present (any value).
    #[serde(default)]
    pub present: bool,
    /// Matches when the header is absent.
    #[serde(default)]
    pub absent: bool,
    /// Matches when one of the header's values matches.
    #[serde(default)]
    pub regex: Option<Text>,
}
