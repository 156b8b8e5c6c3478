//! `Cache-Control` (RFC 9111 §5.2), `Pragma` and `Expires` as a shared cache reads them.
//!
//! Directive names are case-insensitive; arguments are tokens or quoted strings. Where the
//! RFC leaves a choice, the more restrictive reading is taken: a directive given twice with
//! different values, or an argument that is not a valid delta-seconds, makes the response
//! stale (§4.2.1), and a qualified `private="..."` or `no-cache="..."` is treated as the
//! unqualified directive (the whole response, not only the named fields).

use http::header::{self, HeaderMap};
use std::time::{Duration, SystemTime};

/// delta-seconds larger than this are read as this (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 2_147_483_648;

/// A delta-seconds argument as read: absent, a value, or present but unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delta {
    #[default]
    Absent,
    Secs(u64),
    /// Given twice with different values, or not a number: treated as 0.
    Invalid,
}

impl Delta {
    pub fn is_present(self) -> bool {
        self != Delta::Absent
    }

    /// The value, 0 for an invalid one.
    pub fn secs(self) -> Option<u64> {
        match self {
            Delta::Absent => None,
            Delta::Secs(s) => Some(s),
            Delta::Invalid => Some(0),
        }
    }

    fn merge(&mut self, next: Delta) {
        *self = match (*self, next) {
            (Delta::Absent, n) => n,
            (Delta::Secs(a), Delta::Secs(b)) if a == b => Delta::Secs(a),
            _ => Delta::Invalid,
        };
    }
}

/// The directives a shared cache acts on, from requests and responses alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub only_if_cached: bool,
    pub max_age: Delta,
    pub s_maxage: Delta,
    pub min_fresh: Delta,
    /// `max-stale` without a value accepts any staleness.
    pub max_stale: Option<Delta>,
    pub stale_while_revalidate: Delta,
    pub stale_if_error: Delta,
}

impl Directives {
    /// Every `Cache-Control` field line of `headers`, as one list. A request's `Pragma:
    /// no-cache` counts as `no-cache` when it has no `Cache-Control` (RFC 9111 §5.4).
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            any = true;
            if let Ok(v) = value.to_str() {
                d.read(v);
            } else {
                // Not visible ASCII: nothing in it can be trusted, so nothing is stored.
                d.no_store = true;
            }
        }
        if !any {
            d.no_cache = headers
                .get_all(header::PRAGMA)
                .iter()
                .any(|p| p.to_str().is_ok_and(|p| list_has(p, "no-cache")));
        }
        d
    }

    fn read(&mut self, value: &str) {
        for (name, arg) in split_directives(value) {
            let delta = || parse_delta(arg);
            match name.to_ascii_lowercase().as_str() {
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "must-understand" => self.must_understand = true,
                "only-if-cached" => self.only_if_cached = true,
                "max-age" => self.max_age.merge(delta()),
                "s-maxage" => self.s_maxage.merge(delta()),
                "min-fresh" => self.min_fresh.merge(delta()),
                "stale-while-revalidate" => self.stale_while_revalidate.merge(delta()),
                "stale-if-error" => self.stale_if_error.merge(delta()),
                "max-stale" => {
                    let next = if arg.is_none() {
                        Delta::Secs(u64::MAX)
                    } else {
                        delta()
                    };
                    self.max_stale.get_or_insert(Delta::Absent).merge(next);
                }
                _ => {}
            }
        }
    }

    /// No stale serving at all: `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which
    /// implies proxy-revalidate for a shared cache, §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_present()
    }
}

/// `name[=arg]` pairs of a comma-separated directive list; quoted arguments unquoted, commas
/// inside quotes kept.
fn split_directives(value: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut quoted = false;
    let mut i = 0;
    while i <= bytes.len() {
        let end = i == bytes.len();
        if !end && bytes[i] == b'"' {
            quoted = !quoted;
        } else if !end && quoted && bytes[i] == b'\\' {
            i += 1;
        } else if end || (!quoted && bytes[i] == b',') {
            let item = value[start..i.min(value.len())].trim();
            if !item.is_empty() {
                out.push(match item.split_once('=') {
                    Some((n, a)) => {
                        let a = a.trim();
                        let a = a
                            .strip_prefix('"')
                            .and_then(|a| a.strip_suffix('"'))
                            .unwrap_or(a);
                        (n.trim(), Some(a))
                    }
                    None => (item, None),
                });
            }
            start = i + 1;
        }
        i += 1;
    }
    out
}

/// delta-seconds: 1*DIGIT, capped at 2^31.
fn parse_delta(arg: Option<&str>) -> Delta {
    match arg {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            Delta::Secs(a.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
        }
        _ => Delta::Invalid,
    }
}

fn list_has(list: &str, item: &str) -> bool {
    list.split(',').any(|t| t.trim().eq_ignore_ascii_case(item))
}

/// An HTTP-date header (`Date`, `Expires`, `Last-Modified`, `If-Modified-Since`).
pub fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

/// `Expires` as a freshness lifetime from `date`: `None` when absent; an invalid value
/// (notably `0`) means already expired (RFC 9111 §5.3).
pub fn expires_lifetime(headers: &HeaderMap, date_value: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(header::EXPIRES).iter();
    let first = values.next()?;
    if values.next().is_some() {
        // More than one: the response is treated as stale (§4.2.1).
        return Some(Duration::ZERO);
    }
    let Some(at) = first
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return Some(Duration::ZERO);
    };
    Some(at.duration_since(date_value).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[&str]) -> Directives {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CACHE_CONTROL, v.parse().unwrap());
        }
        Directives::of(&h)
    }

    #[test]
    fn directives_are_case_insensitive_and_span_field_lines() {
        let d = of(&["Public, MAX-AGE=60", "s-maxage=\"30\", must-revalidate"]);
        assert!(d.public && d.must_revalidate);
        assert_eq!(d.max_age, Delta::Secs(60));
        assert_eq!(d.s_maxage, Delta::Secs(30));
        assert!(d.forbids_stale());
    }

    #[test]
    fn conflicting_or_invalid_values_make_the_response_stale() {
        assert_eq!(of(&["max-age=60, max-age=10"]).max_age.secs(), Some(0));
        assert_eq!(of(&["max-age=60", "max-age=60"]).max_age.secs(), Some(60));
        assert_eq!(of(&["max-age=abc"]).max_age.secs(), Some(0));
        assert_eq!(of(&["max-age=-1"]).max_age.secs(), Some(0));
        assert_eq!(
            of(&["max-age=99999999999999"]).max_age.secs(),
            Some(MAX_DELTA)
        );
    }

    #[test]
    fn qualified_forms_and_quoted_commas() {
        let d = of(&["private=\"set-cookie, x-a\", max-age=5"]);
        assert!(d.private, "a qualified private is treated as private");
        assert_eq!(d.max_age, Delta::Secs(5));
        assert!(of(&["no-cache=\"set-cookie\""]).no_cache);
        assert_eq!(of(&["max-stale"]).max_stale, Some(Delta::Secs(u64::MAX)));
        assert_eq!(of(&["max-stale=7"]).max_stale, Some(Delta::Secs(7)));
    }

    #[test]
    fn pragma_counts_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(header::PRAGMA, "no-cache".parse().unwrap());
        assert!(Directives::of(&h).no_cache);
        h.insert(header::CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert!(!Directives::of(&h).no_cache);
    }

    #[test]
    fn expires_invalid_or_repeated_means_expired() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(expires_lifetime(&h, now), None);
        h.insert(header::EXPIRES, "0".parse().unwrap());
        assert_eq!(expires_lifetime(&h, now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert(header::EXPIRES, later.parse().unwrap());
        assert_eq!(expires_lifetime(&h, now), Some(Duration::from_secs(90)));
        h.append(header::EXPIRES, later.parse().unwrap());
        assert_eq!(expires_lifetime(&h, now), Some(Duration::ZERO));
    }
}
