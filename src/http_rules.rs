//! What RFC 9110 / 9112 / 9113 require a server to refuse, checked on every request head before
//! anything else looks at it (phase 1). An upstream behind the gateway trusts that what arrives
//! was parsed strictly; hyper's parser already refuses malformed syntax (bad header names,
//! invalid chunk sizes, a Transfer-Encoding that does not end in chunked), and these are the
//! rules it leaves to the server. (A request with both `Transfer-Encoding` and `Content-Length`
//! is framed by hyper by the former alone, its `Content-Length` removed, and the connection
//! closed after the response, as RFC 9112 §6.3 allows.)
//!
//! | refusal | rule |
//! |---|---|
//! | 400 | HTTP/1.1 request without `Host` (RFC 9112 §3.2) |
//! | 400 | more than one `Host` line, or a `Host` value that is not `uri-host [":" port]` (RFC 9112 §3.2, RFC 9110 §7.2) |
//! | 400 | HTTP/2 `:authority` and `Host` naming different origins (RFC 9113 §8.3.1) |
//! | 400, close | `Transfer-Encoding` naming `chunked` more than once (RFC 9112 §6.1, §7.1) |
//! | 501, close | a transfer coding other than `chunked` (RFC 9112 §6.1) |
//! | 400 | more than one `Authorization` line (a singleton field, RFC 9110 §11.6.2, §5.3) |

use crate::reject::Reject;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};

/// Checks a request head; the refusal names the rule broken. Returns the `Host` header, checked,
/// for routing. One pass over the headers: a handful of name comparisons instead of a hash
/// lookup per rule (this runs on every request).
pub fn check_request<B>(req: &Request<B>) -> Result<Option<&HeaderValue>, Reject> {
    let mut host = None;
    let mut hosts = 0u32;
    let mut chunked_framing = false;
    let mut authorizations = 0u32;
    for (name, value) in req.headers() {
        if *name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if *name == header::TRANSFER_ENCODING {
            chunked_framing = true;
        } else if *name == header::AUTHORIZATION {
            authorizations += 1;
        }
    }
    if hosts > 1 {
        return Err(Reject::BadRequest("more than one Host header".into()));
    }
    check_host(req.version(), req.uri(), host)?;
    if chunked_framing && req.version() < Version::HTTP_2 {
        check_transfer_encoding(req.headers())?;
    }
    if authorizations > 1 {
        return Err(Reject::BadRequest(
            "more than one Authorization header".into(),
        ));
    }
    Ok(host)
}

fn check_host(version: Version, uri: &http::Uri, host: Option<&HeaderValue>) -> Result<(), Reject> {
    match host {
        None if version == Version::HTTP_11 => Err(Reject::BadRequest(
            "an HTTP/1.1 request needs a Host header".into(),
        )),
        None => Ok(()),
        Some(h) => {
            if !valid_host(h.as_bytes()) {
                return Err(Reject::BadRequest("invalid Host header".into()));
            }
            // HTTP/2 carries the authority in `:authority`; a Host beside it must agree. (An
            // HTTP/1.1 absolute-form target overrides Host, RFC 9112 §3.2.2.)
            if version == Version::HTTP_2 {
                if let Some(authority) = uri.authority() {
                    let scheme = uri.scheme_str().unwrap_or("https");
                    if !same_origin(authority.as_str(), h, scheme) {
                        return Err(Reject::BadRequest(
                            ":authority and Host name different hosts".into(),
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

/// Bytes of a reg-name (RFC 3986 §3.2.2): unreserved and sub-delims; `%` starts an escape.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// `uri-host [":" port]` (RFC 3986 §3.2.2): an IP literal in brackets, or a reg-name of
/// unreserved, percent-encoded and sub-delim characters; the port is digits. Empty is valid
/// (RFC 9112 §3.2: a target without authority is sent with an empty Host). One pass.
pub fn valid_host(v: &[u8]) -> bool {
    if v.first() == Some(&b'[') {
        return valid_ip_literal(&v[1..]);
    }
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b':' {
            return v[i + 1..].iter().all(u8::is_ascii_digit);
        } else if b == b'%'
            && v.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && v.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// After `[`: an IPv6 address, `]`, and an optional `:port`.
fn valid_ip_literal(rest: &[u8]) -> bool {
    let Some(end) = rest.iter().position(|b| *b == b']') else {
        return false;
    };
    let address = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
    address.is_some()
        && match &rest[end + 1..] {
            [] => true,
            [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// Whether two authorities name the same origin (RFC 3986 §6.2: case-insensitive host, the
/// scheme's default port the same as none).
fn same_origin(a: &str, b: &HeaderValue, scheme: &str) -> bool {
    let Ok(b) = b.to_str() else { return false };
    let default = if scheme.eq_ignore_ascii_case("http") {
        "80"
    } else {
        "443"
    };
    let split = |s: &str| -> (String, String) {
        // `[v6]:port`, `name:port`, or no port.
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p))
                if (h.ends_with(']') || !h.contains(':'))
                    && p.bytes().all(|c| c.is_ascii_digit()) =>
            {
                (h, p)
            }
            _ => (s, ""),
        };
        let port = if port.is_empty() { default } else { port };
        (host.to_ascii_lowercase(), port.to_string())
    };
    split(a) == split(b)
}

fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Reject> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    let mut chunked = 0;
    for value in codings {
        for coding in value.to_str().unwrap_or("\u{0}").split(',') {
            let coding = coding.trim();
            if coding.is_empty() {
                continue;
            }
            let name = coding.split(';').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(Reject::NotImplemented(format!(
                    "transfer coding `{name}` is not supported (only chunked)"
                )));
            }
        }
    }
    if chunked > 1 {
        return Err(Reject::BadFraming("chunked applied more than once".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri).version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn refusal(r: &Request<()>) -> Option<(u16, String)> {
        check_request(r)
            .err()
            .map(|e| (e.status().as_u16(), e.message()))
    }

    #[test]
    fn host_values() {
        for ok in [
            "a",
            "api.example.com:8443",
            "[::1]",
            "[::1]:8080",
            "127.0.0.1:80",
            "a%20b",
            "x_y~z",
            "",
            "h:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is valid");
        }
        for bad in [
            "a b", "u@a", "a:b", "a/b", "[::1", "[zz]:80", "[::1]x", "a%2", "a%zz", "a:80:90",
            "a\"b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is invalid");
        }
    }

    #[test]
    fn host_presence_and_count() {
        let h11 = |h: &[(&str, &str)]| refusal(&req(Version::HTTP_11, "/", h));
        assert_eq!(h11(&[("host", "a")]), None);
        assert_eq!(h11(&[]).unwrap().0, 400);
        assert_eq!(
            h11(&[("host", "a"), ("host", "a")]).unwrap().1,
            "more than one Host header"
        );
        assert_eq!(h11(&[("host", "a b")]).unwrap().1, "invalid Host header");
        assert_eq!(
            refusal(&req(Version::HTTP_10, "/", &[])),
            None,
            "HTTP/1.0 may omit Host"
        );
    }

    #[test]
    fn h2_authority_and_host_must_agree() {
        let h2 = |uri: &str, host: &str| refusal(&req(Version::HTTP_2, uri, &[("host", host)]));
        assert_eq!(h2("https://a.example/x", "A.example"), None);
        assert_eq!(h2("https://a.example/x", "a.example:443"), None);
        assert_eq!(h2("http://a.example:80/x", "a.example"), None);
        assert_eq!(h2("https://[::1]:8443/x", "[::1]:8443"), None);
        assert_eq!(h2("https://a.example/x", "b.example").unwrap().0, 400);
        assert_eq!(h2("https://a.example:8443/x", "a.example").unwrap().0, 400);
        assert_eq!(
            refusal(&req(Version::HTTP_2, "https://a.example/x", &[])),
            None
        );
    }

    #[test]
    fn transfer_codings() {
        let te = |h: &[(&str, &str)]| {
            let mut all = vec![("host", "a")];
            all.extend_from_slice(h);
            refusal(&req(Version::HTTP_11, "/", &all))
        };
        assert_eq!(te(&[("transfer-encoding", "chunked")]), None);
        assert_eq!(te(&[("transfer-encoding", "Chunked")]), None);
        assert_eq!(
            te(&[("transfer-encoding", "chunked, chunked")]).unwrap().0,
            400
        );
        assert_eq!(
            te(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])
            .unwrap()
            .0,
            400
        );
        assert_eq!(
            te(&[("transfer-encoding", "gzip, chunked")]).unwrap().0,
            501
        );
        assert_eq!(
            te(&[("authorization", "Bearer a"), ("authorization", "Bearer a")])
                .unwrap()
                .1,
            "more than one Authorization header"
        );
    }
}
