//! gRPC awareness: gRPC requests are recognised by content type; errors the gateway produces
//! for them are gRPC errors (HTTP 200 with `grpc-status` / `grpc-message`, a Trailers-Only
//! response) rather than JSON bodies, which gRPC clients could not read; and a client's
//! `grpc-timeout` shortens the route's timeout.

use crate::body::ResponseBody;
use crate::reject::Reject;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::time::Duration;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status codes the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// True for `application/grpc` and its `+proto` / `+json` / `;…` variants.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The client's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if present and well formed.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code for a gateway refusal.
pub fn code(reject: &Reject) -> Code {
    match reject {
        Reject::Unauthorized(f) if f.reason == crate::auth::Reason::ProviderUnavailable => {
            Code::Unavailable
        }
        Reject::Unauthorized(_) => Code::Unauthenticated,
        Reject::Forbidden(_) | Reject::IpDenied(_) => Code::PermissionDenied,
        Reject::Tenant(crate::tenant::TenantRefusal::Unavailable) => Code::Unavailable,
        Reject::Tenant(_) => Code::PermissionDenied,
        Reject::EdgeRule(hit) if hit.status == http::StatusCode::FORBIDDEN => {
            Code::PermissionDenied
        }
        Reject::EdgeRule(_) => Code::InvalidArgument,
        Reject::RateLimited(..) => Code::ResourceExhausted,
        Reject::PayloadTooLarge(_) | Reject::HeadersTooLarge(_) => Code::ResourceExhausted,
        Reject::UpstreamTimeout(_) => Code::DeadlineExceeded,
        Reject::NoRoute | Reject::NotImplemented(_) => Code::Unimplemented,
        Reject::BadPath(_)
        | Reject::BadRequest(_)
        | Reject::BadFraming(_)
        | Reject::MissingHeader(_)
        | Reject::UnsupportedMediaType(_)
        | Reject::BadBody(_)
        | Reject::ClientBody(_) => Code::InvalidArgument,
        Reject::Overloaded
        | Reject::UpstreamBusy(_)
        | Reject::NoTargetAvailable(_)
        | Reject::UpstreamConnect(_)
        | Reject::UpstreamFailed(_)
        | Reject::RateLimitStoreDown(_) => Code::Unavailable,
        Reject::Status(s, _) if *s == StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        Reject::Status(s, _) if s.is_server_error() => Code::Unavailable,
        Reject::Status(..) => Code::Internal,
    }
}

/// A refusal as a gRPC Trailers-Only response. The HTTP-level headers of the JSON form
/// (`Retry-After`, `WWW-Authenticate`, rate-limit headers) are kept: they are harmless to gRPC
/// clients and useful to people reading traces.
pub fn error_response(reject: Reject, request_id: &HeaderValue) -> Response<ResponseBody> {
    let code = code(&reject);
    let message = reject.message();
    let mut resp = reject.into_response(request_id);
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = ResponseBody::Full(None);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX` (UTF-8).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn recognises_grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&headers("content-type", ct)), "{ct}");
        }
        for ct in ["application/grpcx", "application/json", "application/grp"] {
            assert!(!is_grpc(&headers("content-type", ct)), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn parses_grpc_timeout() {
        let d = |v: &str| deadline(&headers("grpc-timeout", v));
        assert_eq!(d("100m"), Some(Duration::from_millis(100)));
        assert_eq!(d("2S"), Some(Duration::from_secs(2)));
        assert_eq!(d("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(d("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(d("123456789m"), None, "at most 8 digits");
        assert_eq!(d("m"), None);
        assert_eq!(d("10x"), None);
        assert_eq!(d("-1S"), None);
    }

    #[test]
    fn percent_encodes_messages() {
        assert_eq!(percent_encode("plain text"), "plain text");
        assert_eq!(percent_encode("100%"), "100%25");
        assert_eq!(percent_encode("naïve\n"), "na%C3%AFve%0A");
    }
}
