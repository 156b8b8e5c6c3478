//! 1,000,000 distinct responses through a 64 MiB cache: the store's accounted bytes never pass
//! its bound, and the process's memory grows by no more than that bound plus 10% — the weight
//! each entry is charged (body, head, keys, a fixed overhead) covers what it really costs under
//! the allocator the gateway binary uses (mimalloc). In its own test binary so no other test's
//! allocations blur the measurement.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use portcullis::cache::entry::{Entry, Freshness, Times};
use portcullis::cache::key::{index_key, VaryValues};
use portcullis::cache::store::{Found, Store};
use std::time::{Duration, SystemTime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_million_responses_through_64_mib_stay_within_the_bound() {
    const MAX: usize = 64 * 1024 * 1024;
    let store = Store::new("shared", MAX);
    let lang = http::HeaderName::from_static("accept-language");
    let mut req = HeaderMap::new();
    req.insert(&lang, "en-US,en;q=0.8".parse().unwrap());
    let now = SystemTime::now();
    let before = rss_bytes();
    let mut peak_accounted = 0;
    for i in 0u32..1_000_000 {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("cache-control", "public, max-age=60".parse().unwrap());
        headers.insert("etag", format!("\"v{i}\"").parse().unwrap());
        headers.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
        // Bodies from 100 B to ~2 KiB, as API responses are.
        let body = Bytes::from(vec![b'x'; 100 + (i as usize * 37) % 1948]);
        let key = index_key(
            "http",
            "api.example.com",
            &format!("/v1/items/{i}"),
            Some("page=1&sort=name"),
            None,
            "",
        );
        let entry = Entry::new(
            key.into(),
            StatusCode::OK,
            headers,
            body,
            VaryValues::of([&lang], &req),
            Times {
                request_time: now,
                response_time: now,
                date: now,
                age_value: 0,
            },
            Freshness {
                lifetime: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                forbids_stale: false,
                always_revalidate: false,
            },
            Box::new([]),
        );
        assert!(store.insert(entry).is_some());
        let u = store.usage();
        assert!(
            u.bytes <= MAX,
            "accounted {} above the bound at insert {i}",
            u.bytes
        );
        peak_accounted = peak_accounted.max(u.bytes);
    }
    let grown = rss_bytes().saturating_sub(before);
    let u = store.usage();
    eprintln!(
        "entries kept {}, accounted {} B (peak {}), evictions {}, RSS grown {} B ({:.1}% of the bound)",
        u.entries,
        u.bytes,
        peak_accounted,
        u.evictions,
        grown,
        grown as f64 * 100.0 / MAX as f64
    );
    assert!(
        u.evictions >= 900_000,
        "the bound, not the count, limited the store"
    );
    assert!(
        grown <= MAX + MAX / 10,
        "RSS grew {grown} B for a {MAX} B cache: the per-entry weight undercounts"
    );
    // The most recent entries are the ones kept.
    let last = index_key(
        "http",
        "api.example.com",
        "/v1/items/999999",
        Some("page=1&sort=name"),
        None,
        "",
    );
    assert!(matches!(store.lookup(&last, &req), Found::Entry(_)));
}
