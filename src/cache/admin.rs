//! The cache's admin surface: `GET /admin/cache` (stores and per-route counters),
//! `POST /admin/cache/purge`, and its `/metrics` families.

use super::store::Purge;
use super::{CacheCounters, CacheRuntime, BYPASS_REASONS};
use crate::observe::metrics::{family, label, RouteMetrics};
use serde::Deserialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `POST /admin/cache/purge`: exactly one of `url`, `prefix`, `surrogate_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub surrogate_key: Option<String>,
    /// Mark stale (validated before the next use) instead of removing.
    #[serde(default)]
    pub soft: bool,
}

/// Runs a purge; `Err` is what the caller is told (400, or 503 when the shared tier could
/// not be reached: the in-process copies are purged all the same).
pub async fn purge(
    runtime: &CacheRuntime,
    body: &[u8],
    allow_encoded_slashes: bool,
) -> Result<serde_json::Value, PurgeError> {
    let req: PurgeRequest = serde_json::from_slice(body)
        .map_err(|e| PurgeError::Bad(format!("invalid purge request: {e}")))?;
    let given = [&req.url, &req.prefix, &req.surrogate_key]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        return Err(PurgeError::Bad(
            "give exactly one of `url`, `prefix`, `surrogate_key`".into(),
        ));
    }
    let key = match (&req.url, &req.prefix) {
        (Some(url), _) => url_key(url, allow_encoded_slashes).map_err(PurgeError::Bad)?,
        (_, Some(prefix)) => prefix_key(prefix).map_err(PurgeError::Bad)?,
        _ => req.surrogate_key.clone().unwrap_or_default(),
    };
    let what = if req.url.is_some() {
        Purge::Url(&key)
    } else if req.prefix.is_some() {
        Purge::Prefix(&key)
    } else {
        Purge::SurrogateKey(&key)
    };
    let (local, shared) = runtime
        .purge_everywhere(&what, req.soft)
        .await
        .map_err(|e| {
            PurgeError::SharedTier(format!(
                "the shared cache tier could not be purged ({e}); in-process copies were"
            ))
        })?;
    Ok(serde_json::json!({ "purged": local, "purged_shared": shared, "soft": req.soft }))
}

/// Why a purge request was not carried out in full.
#[derive(Debug)]
pub enum PurgeError {
    /// The request itself (400).
    Bad(String),
    /// Redis did not take the purge (503).
    SharedTier(String),
}

/// An absolute URL as the cache keys it: scheme, host (lowercase, no port), normalized path,
/// sorted query.
fn url_key(url: &str, allow_encoded_slashes: bool) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(format!("`{url}` must be absolute (http://host/path)"));
    };
    let path = crate::router::normalize::normalize_path(uri.path(), allow_encoded_slashes)
        .map_err(|e| format!("`{url}`: {e}"))?;
    Ok(super::key::url_key(
        scheme,
        &host.to_ascii_lowercase(),
        &path,
        uri.query(),
        None,
    ))
}

/// A URL prefix: scheme and host lowercased (no port), the rest as given.
fn prefix_key(prefix: &str) -> Result<String, String> {
    let (scheme, rest) = prefix
        .split_once("://")
        .ok_or_else(|| format!("`{prefix}` must start with a scheme and host (http://host/…)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    });
    if host.is_empty() {
        return Err(format!("`{prefix}` has no host"));
    }
    Ok(format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// `GET /admin/cache`.
pub fn document(
    runtime: &CacheRuntime,
    routes: &[(String, Arc<RouteMetrics>)],
) -> serde_json::Value {
    let stores: Vec<serde_json::Value> = runtime
        .stores
        .iter()
        .map(|s| {
            let u = s.usage();
            serde_json::json!({
                "name": s.name,
                "entries": u.entries,
                "bytes": u.bytes,
                "max_bytes": u.max_bytes,
                "evictions": u.evictions,
            })
        })
        .collect();
    let routes: Vec<serde_json::Value> = routes
        .iter()
        .filter(|(_, m)| m.cache.hits.load(Relaxed) + m.cache.misses.load(Relaxed) > 0)
        .map(|(name, m)| {
            let c = &m.cache;
            let hits =
                c.hits.load(Relaxed) + c.stale_served.load(Relaxed) + c.coalesced.load(Relaxed);
            let lookups = hits + c.misses.load(Relaxed);
            serde_json::json!({
                "route": name,
                "hits": c.hits.load(Relaxed),
                "misses": c.misses.load(Relaxed),
                "stale_served": c.stale_served.load(Relaxed),
                "revalidated": c.revalidated.load(Relaxed),
                "coalesced": c.coalesced.load(Relaxed),
                "stored": c.stored.load(Relaxed),
                "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
            })
        })
        .collect();
    serde_json::json!({
        "name": &*runtime.spec.name,
        "max_bytes": runtime.spec.max_bytes,
        "max_object_bytes": runtime.spec.max_object_bytes,
        "stores": stores,
        "routes": routes,
    })
}

/// The cache's `/metrics` families.
pub fn render_metrics(
    runtime: &CacheRuntime,
    routes: &[(String, Arc<RouteMetrics>)],
    out: &mut String,
) {
    let per_route = |pick: fn(&CacheCounters) -> u64| -> Vec<(String, f64)> {
        routes
            .iter()
            .map(|(r, m)| (label("route", r), pick(&m.cache) as f64))
            .collect()
    };
    for (name, help, pick) in [
        (
            "portcullis_cache_hits_total",
            "Requests answered by a fresh cache entry, by route.",
            (|c: &CacheCounters| c.hits.load(Relaxed)) as fn(&CacheCounters) -> u64,
        ),
        (
            "portcullis_cache_misses_total",
            "Cacheable requests that went upstream (no entry, another variant, or stale), by route.",
            |c| c.misses.load(Relaxed),
        ),
        (
            "portcullis_cache_stale_served_total",
            "Requests answered by a stale entry (stale-while-revalidate, stale-if-error, max-stale), by route.",
            |c| c.stale_served.load(Relaxed),
        ),
        (
            "portcullis_cache_revalidated_total",
            "Stale entries freshened by a 304 from the upstream, by route.",
            |c| c.revalidated.load(Relaxed),
        ),
        (
            "portcullis_cache_coalesced_total",
            "Requests that waited on another request's fill instead of going upstream, by route.",
            |c| c.coalesced.load(Relaxed),
        ),
        (
            "portcullis_cache_stored_total",
            "Responses stored, by route.",
            |c| c.stored.load(Relaxed),
        ),
        (
            "portcullis_cache_not_stored_total",
            "Responses the cache could not store (no-store, private, Set-Cookie, too large…), by route.",
            |c| c.not_stored.load(Relaxed),
        ),
    ] {
        family(out, name, "counter", help, &per_route(pick));
    }
    let mut bypass = Vec::new();
    for (r, m) in routes {
        for (i, reason) in BYPASS_REASONS.iter().enumerate() {
            let v = m.cache.bypass[i].load(Relaxed);
            if v > 0 {
                bypass.push((
                    format!("{},{}", label("route", r), label("reason", reason)),
                    v as f64,
                ));
            }
        }
    }
    family(
        out,
        "portcullis_cache_bypass_total",
        "counter",
        "Requests on caching routes that skipped the cache, by route and reason.",
        &bypass,
    );
    let stores = |pick: fn(&super::store::Usage) -> f64| -> Vec<(String, f64)> {
        runtime
            .stores
            .iter()
            .map(|s| (label("store", &s.name), pick(&s.usage())))
            .collect()
    };
    family(
        out,
        "portcullis_cache_bytes",
        "gauge",
        "Bytes the cache accounts for (bodies, heads and keys), by store.",
        &stores(|u| u.bytes as f64),
    );
    family(
        out,
        "portcullis_cache_max_bytes",
        "gauge",
        "The store's bound, by store.",
        &stores(|u| u.max_bytes as f64),
    );
    family(
        out,
        "portcullis_cache_entries",
        "gauge",
        "Entries stored, by store.",
        &stores(|u| u.entries as f64),
    );
    if let Some(tier) = &runtime.shared {
        let c = &tier.counters;
        family(
            out,
            "portcullis_cache_shared_total",
            "counter",
            "What the shared (Redis) tier did: lookups that hit or missed, errors (each one a miss, never a client error), writes, writes dropped (too many in flight), purges received from other gateways.",
            &crate::observe::metrics::by_result(&[
                ("hit", &c.hits),
                ("miss", &c.misses),
                ("error", &c.errors),
                ("write", &c.writes),
                ("write_dropped", &c.writes_dropped),
                ("purge_received", &c.purges_received),
            ]),
        );
    }
    family(
        out,
        "portcullis_cache_evictions_total",
        "counter",
        "Entries evicted to keep the store within its bound, by store.",
        &stores(|u| u.evictions as f64),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_urls_are_keyed_as_requests_are() {
        assert_eq!(
            url_key("http://API.example:8080/a/../b?z=1&a=2", false).unwrap(),
            "http://api.example/b?a=2&z=1"
        );
        assert!(url_key("/relative", false).is_err());
        assert_eq!(prefix_key("HTTP://Host:80/v1/").unwrap(), "http://host/v1/");
        assert!(prefix_key("host/v1").is_err());
    }
}
