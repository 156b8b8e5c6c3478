//! Header hygiene between client and upstream: hop-by-hop headers never cross the gateway, and
//! the upstream learns who the client was through X-Forwarded-*.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes Connection and every header it names, Keep-Alive, Transfer-Encoding, Upgrade and all
/// Proxy-* headers (RFC 9110 §7.6.1). `TE` is reduced to `trailers` when it offered trailers
/// (hop-by-hop in form, end to end in meaning: the client can take trailers, e.g. gRPC) and
/// removed otherwise; `Trailer` stays (it declares end-to-end trailer fields).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds what is present, so only those are hashed and removed:
    // most requests carry none, most upstream responses only `Connection: keep-alive`.
    const FIXED: [HeaderName; 5] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    let mut fixed = [false; 5];
    let mut proxy: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if let Some(i) = FIXED.iter().position(|f| f == name) {
            fixed[i] = true;
        } else if name.as_str().starts_with("proxy-") {
            proxy.push(name.clone());
        }
    }
    if fixed[0] {
        // Headers named by Connection are hop-by-hop too; `close` and `keep-alive` are the
        // usual values and name nothing else.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let te_trailers = fixed[2]
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for (name, present) in FIXED.into_iter().zip(fixed) {
        if present {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    for name in proxy {
        headers.remove(name);
    }
}

/// Appends the client to X-Forwarded-For and sets X-Forwarded-Proto / X-Forwarded-Host.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &str,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let xff = if !headers.contains_key(&X_FORWARDED_FOR) {
        HeaderValue::from_str(client_ip)
    } else {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        HeaderValue::from_str(&format!("{}, {client_ip}", previous.join(", ")))
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        set_forwarded(
            &mut h,
            "127.0.0.1",
            "http",
            Some(&"a.example".parse().unwrap()),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }
}
