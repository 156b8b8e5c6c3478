//! Request path normalization, run before routing so that every spelling of a path reaches the
//! route that its canonical form reaches (`/v1/orders/../admin`, `//v1//admin` and
//! `/v1/%61dmin` all become `/v1/admin` or are refused).

use crate::config::Diag;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    /// `%2F` or `%5C`: a separator that the gateway and the upstream might read differently.
    EncodedSeparator,
    Backslash,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path must start with /",
            PathError::BadPercentEncoding => "malformed percent-encoding in request path",
            PathError::EncodedSeparator => "encoded slash or backslash (%2F, %5C) in request path",
            PathError::Backslash => "backslash in request path",
        })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Returns the normalized form of `path` (the part of the request target before `?`):
/// percent-encoded unreserved characters decoded, other escapes upper-cased, repeated slashes
/// merged, `.` and `..` segments removed (`..` never climbs above the root). A trailing slash is
/// kept. `allow_encoded_slashes` keeps `%2F` / `%5C` encoded instead of refusing them.
pub fn normalize_path(path: &str, allow_encoded_slashes: bool) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode and no segment to remove.
    let clean = !bytes.iter().any(|b| matches!(b, b'%' | b'\\'))
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if clean {
        return Ok(Cow::Borrowed(path));
    }

    // 1. Decode unreserved escapes; refuse separators in any spelling.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (hi, lo) = match (
                    bytes.get(i + 1).and_then(|b| hex_val(*b)),
                    bytes.get(i + 2).and_then(|b| hex_val(*b)),
                ) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadPercentEncoding),
                };
                let v = hi * 16 + lo;
                if is_unreserved(v) {
                    decoded.push(v);
                } else if (v == b'/' || v == b'\\') && !allow_encoded_slashes {
                    return Err(PathError::EncodedSeparator);
                } else {
                    decoded.extend_from_slice(format!("%{v:02X}").as_bytes());
                }
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Decoding only ever produced ASCII from ASCII escapes; other bytes are copied unchanged.
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::BadPercentEncoding)?;

    // 2. Remove dot segments and empty segments.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split('/') {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A path written in the config (a match, a rewrite) must start with `/` and already be in
/// normalized form: it is compared with normalized request paths. Returns whether it is.
pub fn path_literal(p: &str, line: u32, key: &str, diag: &mut Diag) -> bool {
    if !p.starts_with('/') {
        diag.err(line, key, format!("`{p}` must start with `/`"));
        false
    } else if normalize_path(p, false).as_deref() != Ok(p) {
        diag.err(
            line,
            key,
            format!("`{p}` is not in normalized form (no `//`, `.` or `..` segments, no encoded unreserved characters)"),
        );
        false
    } else {
        true
    }
}

/// The host a request is routed by: lower-case, without port or trailing dot, IPv6 without
/// brackets. `None` when the value is not a valid host (nothing to route by). The one
/// normalization both live routing and `explain` use.
pub fn routing_host(value: &str) -> Cow<'_, str> {
    let without_port = if let Some(rest) = value.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => value,
        }
    };
    let host = without_port.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Decodes `%XX` escapes; `plus_as_space` for query strings (`+` is a space there).
pub fn percent_decode(v: &str, plus_as_space: bool) -> Vec<u8> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(h)) if h.iter().all(u8::is_ascii_hexdigit) => {
                let s = std::str::from_utf8(h).unwrap_or("00");
                out.push(u8::from_str_radix(s, 16).unwrap_or(0));
                i += 3;
            }
            (b'+', _) if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let cases = [
            ("/", "/"),
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/", "/v1/orders/"),
            ("//v1//admin", "/v1/admin"),
            ("/v1/orders/../admin/x", "/v1/admin/x"),
            ("/v1/./orders", "/v1/orders"),
            ("/v1/%61dmin", "/v1/admin"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2E/%2e/admin", "/admin"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%7Euser", "/~user"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input, false).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_separators_and_bad_escapes() {
        assert_eq!(
            normalize_path("/a%2Fb", false),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/a%2fb", false),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/a%5Cb", false),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(normalize_path("/a\\b", false), Err(PathError::Backslash));
        assert_eq!(
            normalize_path("/a%zz", false),
            Err(PathError::BadPercentEncoding)
        );
        assert_eq!(
            normalize_path("/a%2", false),
            Err(PathError::BadPercentEncoding)
        );
        assert_eq!(normalize_path("a", false), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("/a%2fb", true).as_deref(), Ok("/a%2Fb"));
    }

    #[test]
    fn routing_host_strips_port_and_case() {
        assert_eq!(routing_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(routing_host("api.example.com."), "api.example.com");
        assert_eq!(routing_host("[::1]:8080"), "::1");
        assert_eq!(routing_host("[::1]"), "::1");
        assert_eq!(routing_host("localhost"), "localhost");
        assert_eq!(routing_host("host:notaport"), "host:notaport");
    }

    #[test]
    fn config_paths_must_be_normal() {
        let mut d = Diag::new("t.yaml");
        assert!(path_literal("/v1/orders", 1, "k", &mut d));
        assert!(!path_literal("v1", 2, "k", &mut d));
        assert!(!path_literal("/a//b", 3, "k", &mut d));
        let e = d.finish("").unwrap_err().0;
        assert_eq!(e[0].message, "`v1` must start with `/`");
        assert!(e[1].message.contains("not in normalized form"), "{e:?}");
    }
}
