//! `routes[].cors` and `routes[].compression` (both also in `defaults`): what browsers need.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

/// `cors`: which browser origins may call the route, and with what.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), anchored patterns (`https://*.example.com`),
    /// or `*`.
    pub allow_origins: Located<Vec<Located<Text>>>,
    #[serde(default)]
    pub allow_methods: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub allow_headers: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub expose_headers: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub allow_credentials: Option<Located<bool>>,
    #[serde(default)]
    pub max_age_s: Option<Located<u64>>,
    /// Answer `Access-Control-Request-Private-Network: true` with
    /// `Access-Control-Allow-Private-Network: true`.
    #[serde(default)]
    pub allow_private_network: bool,
    /// Decide and count, but change nothing: preflights go upstream, no header is added.
    #[serde(default)]
    pub report_only: bool,
}

/// `compression`: response compression negotiated by `Accept-Encoding`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// In order of preference (ties in the client's q-values go to the earlier).
    #[serde(default)]
    pub codecs: Option<Located<Vec<Text>>>,
    #[serde(default)]
    pub min_bytes: Option<Located<u64>>,
    /// Media types (`application/json`) or type wildcards (`text/*`).
    #[serde(default)]
    pub content_types: Option<Located<Vec<Text>>>,
    /// Codec level (gzip 1–9, br 0–11, zstd 1–19); each codec's default when absent.
    #[serde(default)]
    pub level: Option<Located<u32>>,
}
