//! Weighted `split` between upstreams: the split key is hashed with MurmurHash3 (x86, 32-bit,
//! seed 0) into 10000 buckets, so a key always lands on the same side, and moving weight from
//! one side to another only moves keys into the side that grows.

use crate::config::{Diag, Located, SplitEntry, Text};
use http::HeaderMap;
use std::collections::BTreeMap;

/// Split weights are parts of this many buckets.
pub const SPLIT_BUCKETS: u32 = 10_000;

/// MurmurHash3_x86_32, written out because it is twelve lines and its output must never change
/// (hash crates with per-process seeds would move users between canary buckets on restart).
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Where the sticky split key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitKey {
    Header(http::HeaderName),
    Cookie(String),
    ClientIp,
}

impl SplitKey {
    pub fn parse(s: &str) -> Result<SplitKey, String> {
        if s == "client_ip" {
            return Ok(SplitKey::ClientIp);
        }
        if let Some(name) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map(SplitKey::Header)
                .map_err(|_| format!("`{name}` is not a valid header name"));
        }
        if let Some(name) = s.strip_prefix("cookie:") {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
            {
                return Ok(SplitKey::Cookie(name.to_string()));
            }
            return Err(format!("`{name}` is not a valid cookie name"));
        }
        Err(format!(
            "`{s}` is not a split key: use header:NAME, cookie:NAME or client_ip"
        ))
    }

    /// The key's bytes in this request, if present.
    pub fn extract<'a>(&self, headers: &'a HeaderMap, client_ip: &'a str) -> Option<&'a [u8]> {
        match self {
            SplitKey::Header(n) => headers.get(n).map(|v| v.as_bytes()),
            SplitKey::ClientIp => Some(client_ip.as_bytes()),
            SplitKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                }),
        }
    }
}

/// A compiled split: cumulative bucket ends, in file order, each with its upstream index.
#[derive(Debug)]
pub struct Split {
    bounds: Vec<(u32, usize)>,
    key: Option<SplitKey>,
}

impl Split {
    /// Builds a route's `split` and `split_key`; `upstreams` maps names to positions. `None`
    /// when either is wrong, `Some(None)` when the route has no split.
    pub fn build(
        split: Option<&Located<Vec<Located<SplitEntry>>>>,
        split_key: Option<&Located<Text>>,
        upstreams: &BTreeMap<&str, usize>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Option<Split>> {
        let mark = diag.mark();
        let mut entries = Vec::new();
        if let Some(split) = split {
            let mut sum = 0u64;
            for (j, s) in split.iter().enumerate() {
                match upstreams.get(&*s.upstream.value.0) {
                    Some(u) => entries.push((s.weight, *u)),
                    None => diag.err(
                        s.upstream.line,
                        format!("{key}.split[{j}].upstream"),
                        format!("unknown upstream `{}`", s.upstream.value),
                    ),
                }
                if s.weight == 0 {
                    diag.err(
                        s.line,
                        format!("{key}.split[{j}].weight"),
                        "must be greater than 0 (remove the entry instead)",
                    );
                }
                sum += u64::from(s.weight);
            }
            if sum != u64::from(SPLIT_BUCKETS) {
                diag.err(
                    split.line,
                    format!("{key}.split"),
                    format!(
                        "weights add up to {sum}; they must add up to {SPLIT_BUCKETS} (parts of 10000)"
                    ),
                );
            }
        }
        let mut sticky = None;
        if let Some(k) = split_key {
            if split.is_none() {
                diag.err(
                    k.line,
                    format!("{key}.split_key"),
                    "split_key needs a `split`",
                );
            }
            match SplitKey::parse(k) {
                Ok(sk) => sticky = Some(sk),
                Err(msg) => diag.err(k.line, format!("{key}.split_key"), msg),
            }
        }
        if !diag.clean_since(mark) {
            return None;
        }
        Some(split.map(|_| Split::new(&entries, sticky)))
    }

    /// `entries` are (weight, upstream index) in file order; weights add up to 10000.
    pub fn new(entries: &[(u32, usize)], key: Option<SplitKey>) -> Split {
        let mut end = 0;
        let bounds = entries
            .iter()
            .map(|(w, u)| {
                end += w;
                (end, *u)
            })
            .collect();
        Split { bounds, key }
    }

    pub fn bucket_of(key: &[u8]) -> u32 {
        murmur3_x86_32(key, 0) % SPLIT_BUCKETS
    }

    pub fn upstream_for_bucket(&self, bucket: u32) -> usize {
        // Weights add up to SPLIT_BUCKETS (checked when built), so a bucket always has an end
        // above it; the last entry takes any rounding.
        self.bounds
            .iter()
            .find(|(end, _)| bucket < *end)
            .or(self.bounds.last())
            .map_or(0, |(_, u)| *u)
    }

    /// Picks the upstream for a request: sticky by key, random when the key is absent.
    pub fn pick(&self, headers: &HeaderMap, client_ip: &str) -> usize {
        let bucket = match self
            .key
            .as_ref()
            .and_then(|k| k.extract(headers, client_ip))
        {
            Some(key) => Self::bucket_of(key),
            None => fastrand::u32(0..SPLIT_BUCKETS),
        };
        self.upstream_for_bucket(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_published_vectors() {
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_x86_32(b"", 0xffff_ffff), 0x81F1_6F39);
        assert_eq!(murmur3_x86_32(&[0xff, 0xff, 0xff, 0xff], 0), 0x7629_3B50);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65, 0x87], 0), 0xF55B_516B);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43, 0x65], 0), 0x7E4A_8634);
        assert_eq!(murmur3_x86_32(&[0x21, 0x43], 0), 0xA0F7_B07A);
        assert_eq!(murmur3_x86_32(&[0x21], 0), 0x7266_1CF4);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 1234), 0xFAF6_CDB3);
        assert_eq!(
            murmur3_x86_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2E4F_F723
        );
    }

    #[test]
    fn split_keys_parse() {
        assert!(matches!(
            SplitKey::parse("header:x-user-id"),
            Ok(SplitKey::Header(_))
        ));
        assert_eq!(
            SplitKey::parse("cookie:sid"),
            Ok(SplitKey::Cookie("sid".into()))
        );
        assert_eq!(SplitKey::parse("client_ip"), Ok(SplitKey::ClientIp));
        assert!(SplitKey::parse("query:x").is_err());
    }

    #[test]
    fn cookie_key_is_found() {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; sid=abc; b=2".parse().unwrap());
        assert_eq!(
            SplitKey::Cookie("sid".into()).extract(&h, ""),
            Some(&b"abc"[..])
        );
    }
}
