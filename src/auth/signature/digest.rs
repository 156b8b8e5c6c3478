//! RFC 9530 `Content-Digest`: the digest a signed request declares for its body, and the
//! request-body filter that checks it as the body streams to the upstream. The filter holds
//! back the latest chunk until the end, so on a mismatch the upstream never receives the
//! whole body (the exchange is aborted and the client gets 401).

use crate::auth::{AuthCounters, Failure, Reason};
use crate::body::filter::{BodyFilter, Emit, FilterError};
use bytes::Bytes;
use sha2::{Digest, Sha256, Sha512};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

/// The digest a request must match: the strongest supported one its header lists.
#[derive(Debug, Clone)]
pub struct Expected {
    pub alg: DigestAlg,
    pub value: Vec<u8>,
}

/// Reads `Content-Digest`: `Ok(None)` when absent; an error when it is malformed or lists no
/// algorithm this gateway computes.
pub fn parse(headers: &http::HeaderMap) -> Result<Option<Expected>, &'static str> {
    let lines: Vec<&str> = headers
        .get_all("content-digest")
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| "content-digest is not visible ASCII")
        })
        .collect::<Result<_, _>>()?;
    if lines.is_empty() {
        return Ok(None);
    }
    let dict: sfv::Dictionary = sfv::Parser::new(&lines.join(", "))
        .parse()
        .map_err(|_| "content-digest is not a structured dictionary")?;
    let mut best: Option<Expected> = None;
    for (k, v) in &dict {
        let alg = match k.as_str() {
            "sha-512" => DigestAlg::Sha512,
            "sha-256" => DigestAlg::Sha256,
            _ => continue,
        };
        let sfv::ListEntry::Item(item) = v else {
            return Err("content-digest values are byte sequences");
        };
        let value = item
            .bare_item
            .as_byte_sequence()
            .ok_or("content-digest values are byte sequences")?;
        let want = match alg {
            DigestAlg::Sha256 => 32,
            DigestAlg::Sha512 => 64,
        };
        if value.len() != want {
            return Err("content-digest value has the wrong length");
        }
        if best.as_ref().is_none_or(|b| b.alg == DigestAlg::Sha256) {
            best = Some(Expected {
                alg,
                value: value.to_vec(),
            });
        }
    }
    best.map(Some)
        .ok_or("content-digest lists no supported algorithm (sha-256, sha-512)")
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(alg: DigestAlg) -> Hasher {
        match alg {
            DigestAlg::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlg::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// Whether `body` (whole) matches.
pub fn matches(expected: &Expected, body: &[u8]) -> bool {
    let mut h = Hasher::new(expected.alg);
    h.update(body);
    constant_eq(&h.finish(), &expected.value)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Checks a streaming request body against its declared digest.
pub struct DigestFilter {
    expected: Arc<Expected>,
    hasher: Option<Hasher>,
    held: Option<Bytes>,
    bound: usize,
    provider: Arc<str>,
    counters: Arc<AuthCounters>,
}

impl DigestFilter {
    pub fn new(
        expected: Arc<Expected>,
        bound: u64,
        provider: Arc<str>,
        counters: Arc<AuthCounters>,
    ) -> DigestFilter {
        DigestFilter {
            hasher: Some(Hasher::new(expected.alg)),
            expected,
            held: None,
            bound: usize::try_from(bound).unwrap_or(usize::MAX),
            provider,
            counters,
        }
    }
}

/// The 401 a body that does not match its digest gets.
pub fn mismatch(provider: &Arc<str>, counters: &AuthCounters) -> Failure {
    counters.fail(Reason::DigestMismatch);
    Failure::signature(
        provider,
        Reason::DigestMismatch,
        "the body does not match its content-digest",
    )
}

impl BodyFilter for DigestFilter {
    fn name(&self) -> &'static str {
        "content-digest"
    }

    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
        if let Some(h) = &mut self.hasher {
            h.update(&chunk);
        }
        if let Some(prev) = self.held.replace(chunk) {
            out.push(prev);
        }
        Ok(())
    }

    fn end(
        &mut self,
        _trailers: Option<&mut http::HeaderMap>,
        out: &mut Emit,
    ) -> Result<(), FilterError> {
        let digest = self.hasher.take().map(Hasher::finish).unwrap_or_default();
        if !constant_eq(&digest, &self.expected.value) {
            self.held = None;
            return Err(FilterError::Unauthorized(mismatch(
                &self.provider,
                &self.counters,
            )));
        }
        if let Some(last) = self.held.take() {
            out.push(last);
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.held.as_ref().map_or(0, Bytes::len)
    }

    fn max_held(&self) -> usize {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9530_example_digests_match() {
        // RFC 9530 appendix B.1 / RFC 9421 test-request body.
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
                .parse()
                .unwrap(),
        );
        let e = parse(&h).unwrap().unwrap();
        assert_eq!(e.alg, DigestAlg::Sha512);
        assert!(!matches(&e, b"{\"hello\": \"world\"}\n"));
        assert!(matches(&e, b"{\"hello\": \"world\"}"));
        h.insert("content-digest", "md5=:AAAA:".parse().unwrap());
        assert!(parse(&h).is_err());
        h.insert("content-digest", "sha-256=abc".parse().unwrap());
        assert!(parse(&h).is_err());
    }

    #[test]
    fn the_filter_holds_the_last_chunk_until_the_digest_is_checked() {
        let body = b"{\"hello\": \"world\"}";
        let mut h = Hasher::new(DigestAlg::Sha256);
        h.update(body);
        let expected = Arc::new(Expected {
            alg: DigestAlg::Sha256,
            value: h.finish(),
        });
        let counters = Arc::new(AuthCounters::default());
        let mut f = DigestFilter::new(
            Arc::clone(&expected),
            1024,
            Arc::from("p"),
            Arc::clone(&counters),
        );
        let mut out = Emit::default();
        f.data(Bytes::from_static(b"{\"hello\""), &mut out).unwrap();
        f.data(Bytes::from_static(b": \"world\"}"), &mut out)
            .unwrap();
        assert_eq!(out.into_chunks().len(), 1, "the last chunk is held");
        let mut out = Emit::default();
        f.end(None, &mut out).unwrap();
        assert_eq!(out.into_chunks(), vec![Bytes::from_static(b": \"world\"}")]);

        let mut f = DigestFilter::new(expected, 1024, Arc::from("p"), Arc::clone(&counters));
        let mut out = Emit::default();
        f.data(Bytes::from_static(b"{\"hello\": \"WORLD\"}"), &mut out)
            .unwrap();
        let e = f.end(None, &mut out).unwrap_err();
        assert!(
            matches!(e, FilterError::Unauthorized(ref f) if f.reason == Reason::DigestMismatch)
        );
        assert!(
            out.into_chunks().is_empty(),
            "nothing of a mismatched body's end is sent"
        );
        assert_eq!(counters.failures(Reason::DigestMismatch), 1);
    }
}
