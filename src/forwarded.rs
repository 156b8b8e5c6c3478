//! Header hygiene between client and upstream: hop-by-hop headers never cross the gateway, and
//! the upstream learns who the client was through X-Forwarded-*.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::edge::client_addr::{ClientAddr, FORWARDED, X_FORWARDED_FOR};
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

/// Tells the upstream who the client was. From a trusted proxy (`client.peer_trusted`) the chain
/// it sent goes on with the peer appended (X-Forwarded-For, and Forwarded when it sent one), and
/// its X-Forwarded-Proto / -Host stand (it terminated the client's connection). From anyone
/// else, what the client sent is replaced: X-Forwarded-For is the client address alone and a
/// client's Forwarded is removed.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientAddr,
    peer: &str,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    if !client.peer_trusted {
        if let Ok(v) = HeaderValue::from_str(&client.text) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.remove(FORWARDED);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST, h.clone()),
            None => headers.remove(X_FORWARDED_HOST),
        };
        return;
    }
    let xff = append_element(headers, &X_FORWARDED_FOR, peer);
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if headers.contains_key(FORWARDED) {
        let node = if peer.contains(':') {
            format!("for=\"[{peer}]\"")
        } else {
            format!("for={peer}")
        };
        if let Some(v) = append_element(headers, &FORWARDED, &node) {
            headers.insert(FORWARDED, v);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
}

/// Every line of `name` joined into one list, with `element` appended.
fn append_element(headers: &HeaderMap, name: &HeaderName, element: &str) -> Option<HeaderValue> {
    let mut joined = String::new();
    for v in headers.get_all(name) {
        if let Ok(s) = v.to_str() {
            joined.push_str(s);
            joined.push_str(", ");
        }
    }
    joined.push_str(element);
    HeaderValue::from_str(&joined).ok()
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

    fn addr(text: &str, trusted: bool) -> ClientAddr {
        ClientAddr {
            ip: text.parse().unwrap(),
            text: text.into(),
            peer_trusted: trusted,
        }
    }

    #[test]
    fn a_trusted_peer_s_chain_goes_on_with_the_peer_appended() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("forwarded", "for=1.1.1.1".parse().unwrap());
        let host = "a.example".parse().unwrap();
        set_forwarded(
            &mut h,
            &addr("2.2.2.2", true),
            "10.0.0.1",
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https", "the proxy terminated TLS");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn an_untrusted_peer_s_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "evil".parse().unwrap());
        h.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        set_forwarded(&mut h, &addr("127.0.0.1", false), "127.0.0.1", "http", None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));
        assert!(!h.contains_key("forwarded"));
    }
}
