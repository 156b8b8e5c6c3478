//! The one client address of a request. The connection's peer (or the PROXY protocol header's
//! source) is the client unless the listener trusts it as a proxy: then the chain that peer
//! sent (X-Forwarded-For or Forwarded) is read right to left, skipping trusted hops, and the
//! first untrusted address is the client. Nothing a client sends is read from an untrusted peer.

use super::ip_rules::{canonical_ip, parse_cidr, IpSet, Verdict};
use crate::config::{Diag, Located, Text};
use http::header::{HeaderMap, HeaderName};
use std::net::IpAddr;
use std::sync::Arc;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Which header a trusted peer's chain is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainHeader {
    /// X-Forwarded-For when the request has one, else Forwarded.
    Auto,
    XForwardedFor,
    Forwarded,
}

/// A listener's `trusted_proxies` and `forwarded_header`.
pub struct TrustedProxies {
    set: IpSet,
    header: ChainHeader,
}

impl std::fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustedProxies({} entries, {:?})",
            self.set.len(),
            self.header
        )
    }
}

impl TrustedProxies {
    /// `None` when the listener trusts no proxy (the peer is always the client).
    pub fn build(
        cidrs: &[Located<Text>],
        header: Option<&Located<Text>>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<TrustedProxies> {
        let header = match header.map(|h| h.as_str()) {
            None | Some("auto") => ChainHeader::Auto,
            Some("x-forwarded-for") => ChainHeader::XForwardedFor,
            Some("forwarded") => ChainHeader::Forwarded,
            Some(other) => {
                diag.err(
                    header.map_or(0, |h| h.line),
                    format!("{key}.forwarded_header"),
                    format!("`{other}` is not one of auto, x-forwarded-for, forwarded"),
                );
                ChainHeader::Auto
            }
        };
        if cidrs.is_empty() {
            return None;
        }
        let mut set = IpSet::default();
        for c in cidrs {
            match parse_cidr(c) {
                Ok(n) => set.insert(n, Verdict::Allow),
                Err(m) => diag.err(c.line, format!("{key}.trusted_proxies"), m),
            }
        }
        Some(TrustedProxies { set, header })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.set.decide(ip) == Verdict::Allow
    }
}

/// The client address a request is handled with.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// `ip` as text (shared, for keys and records).
    pub text: Arc<str>,
    /// The peer was a trusted proxy: its forwarding headers are passed on (with it appended).
    pub peer_trusted: bool,
}

impl ClientAddr {
    pub fn of_peer(ip: IpAddr, text: &Arc<str>) -> ClientAddr {
        ClientAddr {
            ip,
            text: Arc::clone(text),
            peer_trusted: false,
        }
    }
}

/// Resolves the client address of one request from its peer and headers.
pub fn resolve(
    peer: IpAddr,
    peer_text: &Arc<str>,
    trusted: Option<&TrustedProxies>,
    headers: &HeaderMap,
) -> ClientAddr {
    let Some(t) = trusted.filter(|t| t.trusts(peer)) else {
        return ClientAddr::of_peer(peer, peer_text);
    };
    let use_forwarded = match t.header {
        ChainHeader::XForwardedFor => false,
        ChainHeader::Forwarded => true,
        ChainHeader::Auto => {
            !headers.contains_key(&X_FORWARDED_FOR) && headers.contains_key(&FORWARDED)
        }
    };
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    if use_forwarded {
        for v in headers.get_all(&FORWARDED) {
            match v.to_str() {
                Ok(s) => forwarded_for_nodes(s, &mut hops),
                Err(_) => hops.push(None),
            }
        }
    } else {
        for v in headers.get_all(&X_FORWARDED_FOR) {
            match v.to_str() {
                Ok(s) => hops.extend(s.split(',').map(|h| parse_node(h.trim()))),
                Err(_) => hops.push(None),
            }
        }
    }
    // Right to left: each valid hop becomes the candidate; an untrusted one is the client; a
    // hop that is not an address ends the walk at the last trusted hop before it.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical_ip(*ip);
                if !t.trusts(client) {
                    break;
                }
            }
            None => break,
        }
    }
    ClientAddr {
        ip: client,
        text: if client == peer {
            Arc::clone(peer_text)
        } else {
            Arc::from(client.to_string())
        },
        peer_trusted: true,
    }
}

/// The `for=` node of each Forwarded element (RFC 7239 §4), in order; elements without one are
/// skipped, nodes that are not addresses (`unknown`, `_hidden`) are `None`.
fn forwarded_for_nodes(value: &str, out: &mut Vec<Option<IpAddr>>) {
    for element in split_outside_quotes(value, ',') {
        for pair in split_outside_quotes(element, ';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if !k.trim().eq_ignore_ascii_case("for") {
                continue;
            }
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            out.push(parse_node(v));
        }
    }
}

fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// An address with an optional port: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(cidrs: &[&str], header: &str) -> TrustedProxies {
        let cidrs: Vec<Located<Text>> = cidrs
            .iter()
            .map(|c| Located::new(Text::from(*c), 1))
            .collect();
        let h = Located::new(Text::from(header), 1);
        let mut d = Diag::new("t.yaml");
        let t = TrustedProxies::build(&cidrs, Some(&h), "listeners[0]", &mut d).unwrap();
        assert!(d.is_empty());
        t
    }

    fn client(peer: &str, t: &TrustedProxies, headers: &[(&str, &str)]) -> String {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let peer: IpAddr = peer.parse().unwrap();
        resolve(peer, &Arc::from(peer.to_string()), Some(t), &h)
            .text
            .to_string()
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let t = trusted(&["10.0.0.0/8"], "auto");
        assert_eq!(
            client("192.0.2.1", &t, &[("x-forwarded-for", "1.2.3.4")]),
            "192.0.2.1"
        );
    }

    #[test]
    fn a_trusted_chain_is_read_right_to_left() {
        let t = trusted(&["10.0.0.0/8"], "auto");
        let h = [("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &t, &h), "198.51.100.7");
        // Several header lines are one list.
        let h = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.8:5000, 10.1.1.1"),
        ];
        assert_eq!(client("10.0.0.1", &t, &h), "198.51.100.8");
        // All trusted: the leftmost.
        assert_eq!(
            client("10.0.0.1", &t, &[("x-forwarded-for", "10.9.9.9, 10.0.0.3")]),
            "10.9.9.9"
        );
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client(
                "10.0.0.1",
                &t,
                &[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.4")]
            ),
            "10.0.0.4"
        );
        // Nothing sent: the peer.
        assert_eq!(client("10.0.0.1", &t, &[]), "10.0.0.1");
    }

    #[test]
    fn forwarded_nodes_with_quotes_ipv6_and_ports() {
        let t = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"], "forwarded");
        let h = [(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\";by=x, for=\"[2001:db8:ffff::1]\"",
        )];
        assert_eq!(client("10.0.0.1", &t, &h), "2001:db8:cafe::17");
        let h = [("forwarded", "for=unknown, for=10.0.0.9")];
        assert_eq!(client("10.0.0.1", &t, &h), "10.0.0.9");
        let h = [("forwarded", "for=\"198.51.100.4:8080\"")];
        assert_eq!(client("10.0.0.1", &t, &h), "198.51.100.4");
    }

    #[test]
    fn auto_prefers_x_forwarded_for_and_pinning_ignores_the_other() {
        let auto = trusted(&["10.0.0.0/8"], "auto");
        let both = [
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ];
        assert_eq!(client("10.0.0.1", &auto, &both), "198.51.100.2");
        assert_eq!(client("10.0.0.1", &auto, &both[..1]), "198.51.100.1");
        let xff = trusted(&["10.0.0.0/8"], "x-forwarded-for");
        assert_eq!(client("10.0.0.1", &xff, &both[..1]), "10.0.0.1");
    }

    #[test]
    fn mapped_ipv6_hops_are_ipv4() {
        let t = trusted(&["10.0.0.0/8"], "auto");
        assert_eq!(
            client(
                "::ffff:10.0.0.1",
                &t,
                &[("x-forwarded-for", "::ffff:198.51.100.9")]
            ),
            "198.51.100.9"
        );
    }
}
