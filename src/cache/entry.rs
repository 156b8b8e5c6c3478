//! One stored response: its head and body, when it was received, how long it stays fresh, and
//! the request header values it was selected by (its `Vary`). Ages follow RFC 9111 §4.2.3;
//! responses served from an entry carry `Age`.

use super::key::VaryValues;
use crate::body::ResponseBody;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Bytes an entry costs beyond its head, body and keys: the entry itself, its LRU node and its
/// index slots. Measured under mimalloc (about 720 bytes for an entry without headers; each
/// header field about 200 bytes beyond its name and value), with a margin: see
/// `tests/cache_memory.rs`.
pub const ENTRY_OVERHEAD: usize = 640;

/// What one stored header field costs beyond its name and value (its `HeaderMap` bucket and
/// the value's own allocation).
pub const HEADER_OVERHEAD: usize = 200;

/// When a response was asked for and received, as §4.2.3 computes its age from.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The response's `Date` (the response time when it has none).
    pub date: SystemTime,
    /// The response's `Age`, in seconds.
    pub age_value: u64,
}

impl Times {
    /// `corrected_initial_age` (§4.2.3).
    fn initial_age(&self) -> Duration {
        let apparent = self
            .response_time
            .duration_since(self.date)
            .unwrap_or(Duration::ZERO);
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or(Duration::ZERO);
        apparent.max(Duration::from_secs(self.age_value) + delay)
    }
}

/// How long an entry may be served, decided when it was stored.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub lifetime: Duration,
    /// Past `lifetime`: served while one background request refreshes it.
    pub stale_while_revalidate: Duration,
    /// Past `lifetime`: served when the upstream fails.
    pub stale_if_error: Duration,
    /// `must-revalidate`, `proxy-revalidate`, `s-maxage`: never served stale.
    pub forbids_stale: bool,
    /// `no-cache`: validated with the upstream before every use.
    pub always_revalidate: bool,
}

pub struct Entry {
    /// Scheme, host, path and query, then the partition (`key::index_key`).
    pub index_key: Arc<str>,
    pub status: StatusCode,
    /// As received, less hop-by-hop fields, `Age`, `Surrogate-Key` (and `Set-Cookie` when
    /// stripped).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub vary: VaryValues,
    pub times: Times,
    pub freshness: Freshness,
    pub surrogate_keys: Box<[Box<str>]>,
    /// What the store accounts for it.
    pub weight: usize,
    /// The stored head has `Content-Length` (else answers add it).
    has_length: bool,
    /// Marked stale by a soft purge: validated before its next use.
    pub invalidated: AtomicBool,
    /// A background refresh (stale-while-revalidate) is under way.
    pub refreshing: AtomicBool,
}

impl Entry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index_key: Arc<str>,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        vary: VaryValues,
        times: Times,
        freshness: Freshness,
        surrogate_keys: Box<[Box<str>]>,
    ) -> Entry {
        let head: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        let weight = ENTRY_OVERHEAD
            + 2 * index_key.len()
            + head
            + body.len()
            + vary.weight()
            + surrogate_keys
                .iter()
                .map(|k| 2 * k.len() + 48)
                .sum::<usize>();
        let has_length = headers.contains_key(header::CONTENT_LENGTH);
        Entry {
            index_key,
            status,
            headers,
            body,
            vary,
            times,
            freshness,
            surrogate_keys,
            weight,
            has_length,
            invalidated: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        }
    }

    /// `current_age` at `now` (§4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        let resident = now
            .duration_since(self.times.response_time)
            .unwrap_or(Duration::ZERO);
        self.times.initial_age() + resident
    }

    /// Freshness left at `now`, negative once stale (seconds, as `Cache-Status: ttl`).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        self.ttl_at(self.age(now))
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.is_fresh_at(self.age(now))
    }

    /// How long past its freshness it is at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        if self.invalidated.load(Ordering::Relaxed) {
            return self.age(now);
        }
        self.age(now).saturating_sub(self.freshness.lifetime)
    }

    /// The stored response as a full answer (no body for HEAD), with its `Age`.
    pub fn response(&self, now: SystemTime, head_only: bool) -> Response<ResponseBody> {
        self.response_at(self.age(now), head_only)
    }

    /// Whether it is fresh at `age` (computed once per request by the caller).
    pub fn is_fresh_at(&self, age: Duration) -> bool {
        !self.invalidated.load(Ordering::Relaxed) && age < self.freshness.lifetime
    }

    /// `ttl` at `age`.
    pub fn ttl_at(&self, age: Duration) -> i64 {
        if self.invalidated.load(Ordering::Relaxed) {
            return -(age.as_secs() as i64);
        }
        self.freshness.lifetime.as_secs() as i64 - age.as_secs() as i64
    }

    /// `response` at `age`.
    pub fn response_at(&self, age: Duration, head_only: bool) -> Response<ResponseBody> {
        let body = if head_only {
            ResponseBody::Full(None)
        } else {
            ResponseBody::full(self.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.clone();
        if !self.has_length {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        set_age(r.headers_mut(), age);
        r
    }

    /// `304 Not Modified` for a client whose validator matches: the fields RFC 9110 §15.4.5
    /// says a 304 carries, and `Age`.
    pub fn not_modified(&self, now: SystemTime) -> Response<ResponseBody> {
        let mut r = Response::new(ResponseBody::Full(None));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for name in NOT_MODIFIED_FIELDS {
            for v in self.headers.get_all(&name) {
                r.headers_mut().append(name.clone(), v.clone());
            }
        }
        set_age(r.headers_mut(), self.age(now));
        r
    }

    /// This entry freshened by a `304` to its validation request (§4.3.4): the 304's fields
    /// replace the stored ones (all but the framing), the times are the new exchange's.
    pub fn freshened(&self, not_modified: &HeaderMap, times: Times, freshness: Freshness) -> Entry {
        let mut headers =
            HeaderMap::with_capacity(self.headers.len() + not_modified.len() + SPARE_FIELDS);
        for (n, v) in &self.headers {
            headers.append(n.clone(), v.clone());
        }
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in not_modified {
            if KEEP_ON_FRESHEN.contains(name) || super::is_never_stored(name) {
                continue;
            }
            if !replaced.contains(&name) {
                headers.remove(name);
                replaced.push(name);
            }
            headers.append(name.clone(), value.clone());
        }
        let e = Entry::new(
            Arc::clone(&self.index_key),
            self.status,
            headers,
            self.body.clone(),
            self.vary.clone(),
            times,
            freshness,
            self.surrogate_keys.clone(),
        );
        e.refreshing.store(false, Ordering::Relaxed);
        e
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }
}

/// Room left in a stored head for the fields every answer adds (`Age`, `Cache-Status`, the
/// request id, …), so answering from it never regrows the map.
pub const SPARE_FIELDS: usize = 8;

fn set_age(headers: &mut HeaderMap, age: Duration) {
    // Fresh entries are mostly young: their ages need no allocation.
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let secs = age.as_secs();
    let value = match SMALL.get(secs as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(secs),
    };
    headers.insert(header::AGE, value);
}

const NOT_MODIFIED_FIELDS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// A 304 never changes how the stored body is framed or encoded.
const KEEP_ON_FRESHEN: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn entry(times: Times, lifetime: u64) -> Entry {
        Entry::new(
            "http://h/p\0".into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"body"),
            VaryValues::default(),
            times,
            Freshness {
                lifetime: Duration::from_secs(lifetime),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                forbids_stale: false,
                always_revalidate: false,
            },
            Box::new([]),
        )
    }

    #[test]
    fn age_is_computed_as_rfc_9111_says() {
        // Upstream said Age: 10; the exchange took 2 s; Date is 1 s before receipt.
        let e = entry(
            Times {
                request_time: at(0),
                response_time: at(2),
                date: at(1),
                age_value: 10,
            },
            60,
        );
        // corrected_initial_age = max(1, 10 + 2) = 12; resident 5 s.
        assert_eq!(e.age(at(7)), Duration::from_secs(17));
        assert_eq!(e.ttl(at(7)), 43);
        assert!(e.is_fresh(at(49)));
        assert!(!e.is_fresh(at(50)));
        // A Date far in the past makes the apparent age win.
        let e = entry(
            Times {
                request_time: at(100),
                response_time: at(100),
                date: at(40),
                age_value: 0,
            },
            60,
        );
        assert_eq!(e.age(at(100)), Duration::from_secs(60));
        assert!(!e.is_fresh(at(100)));
        let r = e.response(at(103), false);
        assert_eq!(r.headers()[header::AGE], "63");
    }

    #[test]
    fn a_soft_purge_makes_an_entry_stale_at_once() {
        let t = Times {
            request_time: at(0),
            response_time: at(0),
            date: at(0),
            age_value: 0,
        };
        let e = entry(t, 60);
        assert!(e.is_fresh(at(1)));
        e.invalidated.store(true, Ordering::Relaxed);
        assert!(!e.is_fresh(at(1)));
        assert!(e.ttl(at(1)) <= 0);
    }
}
