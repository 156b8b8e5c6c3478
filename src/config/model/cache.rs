//! `cache` (the store every caching route shares) and `routes[].cache` (what one route caches).

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

/// `cache`: the response store. Optional: a route with `cache` uses the defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheStoreConfig {
    /// Bytes the in-process store may hold, every entry weighed with its headers and keys.
    #[serde(default)]
    pub max_bytes: Option<Located<u64>>,
    /// `local` (in process only) or `redis` (in process, then shared by the fleet through the
    /// `redis` section's server).
    #[serde(default)]
    pub store: Option<Located<Text>>,
    /// Prefix of every key the shared tier writes (default `portcullis:cache:`).
    #[serde(default)]
    pub redis_key_prefix: Option<Located<Text>>,
    /// Larger responses are never stored (and a miss for one is not coalesced again).
    #[serde(default)]
    pub max_object_bytes: Option<Located<u64>>,
    /// How long requests coalesced behind a fill wait for its response head before they go
    /// upstream themselves.
    #[serde(default)]
    pub coalesce_timeout_ms: Option<Located<u64>>,
    /// How long a key whose response was not storable skips coalescing (hit-for-miss).
    #[serde(default)]
    pub uncacheable_s: Option<Located<u64>>,
    /// The largest share (percent) by which a stored freshness lifetime is shortened at random,
    /// so entries filled together do not expire together.
    #[serde(default)]
    pub ttl_jitter_percent: Option<Located<u32>>,
    /// The cache's name in `Cache-Status` (RFC 9211).
    #[serde(default)]
    pub name: Option<Located<Text>>,
    /// Send `Cache-Status` on the responses of caching routes (default true).
    #[serde(default)]
    pub status_header: Option<bool>,
}

/// `routes[].cache`: what this route stores and serves from the cache.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// `false` turns caching off on this route (the section may stay).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Freshness when the upstream gives none (no `s-maxage`, `max-age` or `Expires`), for the
    /// statuses RFC 9111 lets a cache store without explicit freshness.
    #[serde(default)]
    pub ttl_s: Option<Located<u64>>,
    /// The longest freshness stored, whatever the upstream says (shortens, never lengthens).
    #[serde(default)]
    pub max_ttl_s: Option<Located<u64>>,
    /// Request headers always part of the key, beside those the response's `Vary` names.
    #[serde(default)]
    pub vary: Option<Located<Vec<Located<Text>>>>,
    /// Serve a stale entry for this long past its freshness while one background request
    /// refreshes it (when the upstream's `stale-while-revalidate` does not say).
    #[serde(default)]
    pub stale_while_revalidate_s: Option<Located<u64>>,
    /// Serve a stale entry for this long past its freshness when the upstream fails (when the
    /// upstream's `stale-if-error` does not say).
    #[serde(default)]
    pub stale_if_error_s: Option<Located<u64>>,
    /// Only these query parameters are part of the key (all of them, sorted, when absent).
    #[serde(default)]
    pub query_allow: Option<Located<Vec<Located<Text>>>>,
    /// On an authenticated route, also store responses that carry none of `public`,
    /// `s-maxage`, `must-revalidate` (RFC 9111 §3.5), each only in the principal's own
    /// partition of the key.
    #[serde(default)]
    pub per_principal: bool,
    /// Responses with `Set-Cookie` are never stored unless this is `strip`: then they are
    /// stored without it (the client that caused the fill still gets its cookie).
    #[serde(default)]
    pub set_cookie: Option<Located<Text>>,
    /// This route's own share of `cache.max_bytes` (an LRU of its own); absent: the shared one.
    #[serde(default)]
    pub max_bytes: Option<Located<u64>>,
}
