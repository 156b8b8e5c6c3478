//! A flood of 1,000,000 distinct client IPs against a local limit: the store keeps at most its
//! `max_keys`, and the process's memory grows by no more than the bound the README states
//! (128 bytes per key), measured under the allocator the gateway binary uses (mimalloc). In its
//! own test binary so no other test's allocations blur the measurement.

use http::HeaderMap;
use portcullis::ratelimit::algorithm::Algorithm;
use portcullis::ratelimit::key::{KeyInput, KeyPart, KeySpec};
use portcullis::ratelimit::local::{now_us, LocalStore, BYTES_PER_KEY};

// The gateway binary's allocator (src/main.rs): the bound must hold for the memory it really
// takes, table growth and allocator overhead included.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The README's promise: "at most 128 bytes per key". Written here, not read from the crate, so
/// the test checks the documented figure rather than whatever the code declares.
const README_BYTES_PER_KEY: usize = 128;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_million_distinct_client_ips_stay_within_the_memory_bound() {
    let max_keys = 100_000;
    let store = LocalStore::new(
        Algorithm::TokenBucket {
            capacity: 10,
            interval_us: 200_000,
        },
        max_keys,
    );
    let spec = KeySpec::new(vec![KeyPart::ClientIp]);
    let headers = HeaderMap::new();
    let before = rss_bytes();
    let now = now_us();
    let mut ip = String::with_capacity(16);
    for i in 0u32..1_000_000 {
        ip.clear();
        let b = i.to_be_bytes();
        use std::fmt::Write;
        let _ = write!(ip, "10.{}.{}.{}", b[1], b[2], b[3]);
        let key = spec
            .local(&KeyInput {
                route: "api",
                client_ip: &ip,
                headers: &headers,
                principal: None,
                consumer: None,
                tenant: None,
            })
            .unwrap();
        // One instant for all: no entry ever expires, so only the bound limits growth.
        assert!(
            store.decide(key, now).allowed,
            "a new client is always admitted"
        );
    }
    let grown = rss_bytes().saturating_sub(before);
    const { assert!(BYTES_PER_KEY <= README_BYTES_PER_KEY) };
    let bound = max_keys * README_BYTES_PER_KEY;
    eprintln!(
        "keys held {} (capacity {}), memory grown {} KiB, bound {} KiB",
        store.len(),
        store.capacity(),
        grown / 1024,
        bound / 1024
    );
    assert!(store.len() <= store.capacity());
    assert!(store.capacity() <= max_keys + 64);
    assert!(grown <= bound, "grew {grown} bytes, bound {bound}");
}
