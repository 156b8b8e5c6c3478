//! `Cache-Status` (RFC 9211): how the cache handled one request, as a structured-field list
//! member named after the cache (`portcullis; hit; ttl=42`, `portcullis; fwd=uri-miss;
//! fwd-status=200; stored`).

use http::HeaderValue;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Served from the cache without going upstream.
    pub hit: bool,
    /// Why the request went upstream: `bypass`, `method`, `uri-miss`, `vary-miss`, `miss`,
    /// `request`, `stale`.
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    /// Freshness left (negative: stale by that much).
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    pub fn header_value(&self, cache_name: &str) -> HeaderValue {
        let mut s = String::with_capacity(64);
        s.push_str(cache_name);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd.filter(|_| !self.hit) {
            let _ = write!(s, "; fwd={f}");
        }
        if let Some(st) = self.fwd_status.filter(|_| !self.hit) {
            let _ = write!(s, "; fwd-status={st}");
        }
        if let Some(t) = self.ttl {
            s.push_str("; ttl=");
            push_int(&mut s, t);
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            let _ = write!(s, "; detail={d}");
        }
        // Owned bytes become the value without another copy.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
            .unwrap_or(HeaderValue::from_static("portcullis"))
    }

    /// The access log's `cache` field.
    pub fn log_value(&self) -> &'static str {
        match (self.hit, self.fwd, self.detail) {
            (true, _, Some(_)) => "stale",
            (true, _, None) => "hit",
            (false, _, Some("stale-if-error")) => "stale",
            (false, _, _) if self.collapsed => "collapsed",
            (false, Some("stale" | "request"), _) if self.fwd_status == Some(304) => "revalidated",
            (false, Some("method" | "bypass"), _) => "bypass",
            (false, _, Some("uncacheable")) => "bypass",
            (false, _, _) => "miss",
        }
    }
}

/// Decimal digits of `v` (the formatting machinery is the costlier part of a hit's header).
fn push_int(s: &mut String, v: i64) {
    if v < 0 {
        s.push('-');
    }
    let mut n = v.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_follow_rfc_9211() {
        assert_eq!(
            CacheStatus::hit(42).header_value("portcullis"),
            "portcullis; hit; ttl=42"
        );
        let s = CacheStatus {
            fwd: Some("uri-miss"),
            fwd_status: Some(200),
            stored: true,
            collapsed: true,
            ..CacheStatus::default()
        };
        assert_eq!(
            s.header_value("edge-1"),
            "edge-1; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );
        assert_eq!(s.log_value(), "collapsed");
        for t in [0, 7, -5, 3600, i64::MIN + 1, i64::MAX] {
            let mut out = String::new();
            push_int(&mut out, t);
            assert_eq!(out, t.to_string());
        }
        let mut stale = CacheStatus::hit(-5);
        stale.detail = Some("stale-while-revalidate");
        assert_eq!(
            stale.header_value("p"),
            "p; hit; ttl=-5; detail=stale-while-revalidate"
        );
    }
}
