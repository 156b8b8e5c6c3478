//! `routes[].mirror` (shadow traffic and its comparison) and `routes[].fault` (fault injection
//! for rehearsing a migration).

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

/// `routes[].mirror`: a copy of sampled requests goes to another upstream; its response never
/// reaches the client and, with `compare`, is compared with the primary's.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstream: Located<Text>,
    /// Share of the route's requests mirrored, 0–100 (decimals allowed).
    #[serde(default)]
    pub percent: Option<Located<f64>>,
    #[serde(default)]
    pub compare: bool,
    /// Methods mirrored (default GET, HEAD, OPTIONS: a mirrored POST can write twice).
    #[serde(default)]
    pub methods: Option<Located<Vec<Located<Text>>>>,
    /// Copies in flight at once; a copy that finds the cap full is dropped.
    #[serde(default)]
    pub max_in_flight: Option<Located<u64>>,
    /// Request bodies larger than this are not mirrored.
    #[serde(default)]
    pub max_body_bytes: Option<Located<u64>>,
    /// Send `Authorization`, cookies and the route's API-key headers to the mirror too.
    #[serde(default)]
    pub forward_credentials: bool,
    /// The copy's own timeout (default: the route's).
    #[serde(default)]
    pub timeout_ms: Option<Located<u64>>,
    /// Response headers never compared, beside the built-in list.
    #[serde(default)]
    pub ignore_headers: Vec<Located<Text>>,
    /// JSON field paths (`$.meta.ts`, `$.items[].id`) never compared, with everything under them.
    #[serde(default)]
    pub ignore_paths: Vec<Located<Text>>,
    /// Share of compared requests also sent to a second target of the primary upstream, to
    /// learn which fields differ between two primaries (noise). Default 10.
    #[serde(default)]
    pub noise_percent: Option<Located<f64>>,
    /// A field is reported when its candidate rate exceeds its noise rate by this many
    /// percentage points (default 1) …
    #[serde(default)]
    pub absolute_threshold_percent: Option<Located<f64>>,
    /// … and by this share of the noise rate (default 20 %).
    #[serde(default)]
    pub relative_threshold_percent: Option<Located<f64>>,
    /// Response bodies compared field by field up to this size; larger ones by hash and length.
    #[serde(default)]
    pub max_compare_bytes: Option<Located<u64>>,
    /// Differing samples kept for the report (masked, bodies truncated).
    #[serde(default)]
    pub samples: Option<Located<u64>>,
}

/// `routes[].fault`: delays and aborts injected into a share of the route's requests.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default)]
    pub delay: Option<Located<FaultDelay>>,
    #[serde(default)]
    pub abort: Option<Located<FaultAbort>>,
    /// Only requests carrying this header get faults.
    #[serde(default)]
    pub only_with_header: Option<Located<Text>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub ms: Located<u64>,
    pub percent: Located<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub status: Located<u16>,
    pub percent: Located<f64>,
}
