//! `x-request-id`: the client's value is kept when it is a sane token, otherwise one is minted.

use http::{HeaderMap, HeaderValue};

pub const HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

pub fn is_sane(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

pub fn mint() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

/// The request id for this request: the client's when sane, else a new one.
pub fn for_request(headers: &HeaderMap) -> HeaderValue {
    match headers.get(HEADER) {
        Some(v) if is_sane(v.as_bytes()) => v.clone(),
        _ => mint(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_others_minted() {
        assert!(is_sane(b"abc-123"));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(&[b'a'; 129]));
        assert!(is_sane(&[b'a'; 128]));
        assert_eq!(mint().len(), 32);
    }
}
