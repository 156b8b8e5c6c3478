//! The cache key: scheme, host, normalized path and sorted query (optionally only allowed
//! parameters), then the partition (a hash of who the principal is, on authenticated routes),
//! then — selecting among the entries of one such key — the request's values of the headers the
//! response's `Vary` names and the route's `vary` adds.

use crate::auth::Principal;
use http::header::{HeaderMap, HeaderName, VARY};
use sha2::Digest;

/// Separates the URL from the partition in an index key (never in a URL or a hex digest).
pub const PARTITION_SEPARATOR: char = '\0';

/// `scheme://host/path?sorted-query` + separator + partition.
pub fn index_key(
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    query_allow: Option<&[String]>,
    partition: &str,
) -> String {
    let mut key = url_key(scheme, host, path, query, query_allow);
    key.push(PARTITION_SEPARATOR);
    key.push_str(partition);
    key
}

/// `scheme://host/path?sorted-query`: the URL part of a key, as purges name it.
pub fn url_key(
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    query_allow: Option<&[String]>,
) -> String {
    let mut key = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    key.push_str(scheme);
    key.push_str("://");
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        key.push_str(&host.to_ascii_lowercase());
    } else {
        key.push_str(host);
    }
    key.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty() && !q.contains('&') && query_allow.is_none()) {
        // One parameter: nothing to sort.
        key.push('?');
        key.push_str(q);
    } else if let Some(q) = query.filter(|q| !q.is_empty()) {
        let mut pairs: Vec<&str> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                query_allow.is_none_or(|allow| {
                    let name = p.split_once('=').map_or(*p, |(n, _)| n);
                    allow.iter().any(|a| a == name)
                })
            })
            .collect();
        pairs.sort_unstable();
        if !pairs.is_empty() {
            key.push('?');
            key.push_str(&pairs.join("&"));
        }
    }
    key
}

/// The parts of a request's URL the key is made of.
#[derive(Debug, Clone, Copy)]
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    /// The routing host (lowercase, no port).
    pub host: &'a str,
    /// Normalized.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl UrlParts<'_> {
    pub fn index_key(&self, query_allow: Option<&[String]>, partition: &str) -> String {
        index_key(
            self.scheme,
            self.host,
            self.path,
            self.query,
            query_allow,
            partition,
        )
    }

    pub fn url_key(&self, query_allow: Option<&[String]>) -> String {
        url_key(self.scheme, self.host, self.path, self.query, query_allow)
    }

    /// A `Location` / `Content-Location` value as a URL key, when it names this host (absolute
    /// on the same host, or a path): RFC 9111 §4.4 invalidates only those.
    pub fn resolve_same_host(&self, reference: &str) -> Option<String> {
        let uri: http::Uri = reference.trim().parse().ok()?;
        if let Some(host) = uri.host() {
            if !host.eq_ignore_ascii_case(self.host) {
                return None;
            }
        } else if !uri.path().starts_with('/') {
            return None;
        }
        Some(url_key(
            self.scheme,
            self.host,
            uri.path(),
            uri.query(),
            None,
        ))
    }
}

/// The partition of an authenticated request: a hash of the provider, subject, tenant and key
/// id, never the credential itself. Empty for public routes.
pub fn partition(principal: Option<&Principal>) -> String {
    let Some(p) = principal else {
        return String::new();
    };
    let mut h = sha2::Sha256::new();
    for part in [
        Some(&*p.provider),
        p.subject.as_deref(),
        p.tenant.as_deref(),
        p.api_key.as_deref(),
    ] {
        h.update(part.unwrap_or("").as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// What a response's `Vary` says.
#[derive(Debug, PartialEq, Eq)]
pub enum Vary {
    /// `Vary: *`: no later request can be matched to it.
    Any,
    Headers(Vec<HeaderName>),
}

impl Vary {
    pub fn of(headers: &HeaderMap) -> Vary {
        let mut names = Vec::new();
        for v in headers.get_all(VARY) {
            let Ok(v) = v.to_str() else {
                return Vary::Any;
            };
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return Vary::Any;
                }
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) if !names.contains(&n) => names.push(n),
                    Ok(_) => {}
                    Err(_) => return Vary::Any,
                }
            }
        }
        Vary::Headers(names)
    }
}

/// The request's normalized values of the headers an entry varies on, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryValues(Box<[(HeaderName, Option<Box<str>>)]>);

impl VaryValues {
    /// `names` (deduplicated, sorted) with the request's values.
    pub fn of<'n>(names: impl IntoIterator<Item = &'n HeaderName>, req: &HeaderMap) -> VaryValues {
        let mut names: Vec<&HeaderName> = names.into_iter().collect();
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        VaryValues(
            names
                .into_iter()
                .map(|n| (n.clone(), normalized(req, n)))
                .collect(),
        )
    }

    /// Whether `req` has the same normalized values (RFC 9111 §4.1).
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, value)| normalized(req, name).as_deref() == value.as_deref())
    }

    /// Each name with the request's normalized value (`None`: the request had none).
    pub fn pairs(&self) -> &[(HeaderName, Option<Box<str>>)] {
        &self.0
    }

    /// Back from `pairs` (names already sorted and normalized).
    pub fn from_pairs(pairs: Vec<(HeaderName, Option<Box<str>>)>) -> VaryValues {
        VaryValues(pairs.into_boxed_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.0.iter().map(|(n, _)| n)
    }

    /// A stable text form, for the coalescing key.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (n, v) in self.0.iter() {
            s.push_str(n.as_str());
            match v {
                Some(v) => {
                    s.push('=');
                    s.push_str(v);
                }
                None => s.push('!'),
            }
            s.push('\n');
        }
        s
    }

    pub fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 40)
            .sum()
    }
}

/// All field lines of `name` combined, each list member trimmed and inner whitespace runs
/// collapsed; `Accept*` values (case-insensitive tokens) lowercased. Absent stays distinct from
/// empty.
fn normalized(req: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut values = req.get_all(name).iter().peekable();
    values.peek()?;
    let lower = name.as_str().starts_with("accept");
    let mut out = String::new();
    for v in values {
        let text = String::from_utf8_lossy(v.as_bytes());
        for member in text.split(',') {
            let member: Vec<&str> = member.split_whitespace().collect();
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            let joined = member.join(" ");
            if lower {
                out.push_str(&joined.to_ascii_lowercase());
            } else {
                out.push_str(&joined);
            }
        }
    }
    Some(out.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_sorted_and_may_be_limited_to_allowed_parameters() {
        assert_eq!(
            url_key("http", "API.example", "/p", Some("b=2&a=1&&c"), None),
            "http://api.example/p?a=1&b=2&c"
        );
        let allow = vec!["a".to_string()];
        assert_eq!(
            url_key("http", "h", "/p", Some("b=2&a=1"), Some(&allow)),
            "http://h/p?a=1"
        );
        assert_eq!(url_key("http", "h", "/p", Some(""), None), "http://h/p");
        assert_eq!(
            index_key("http", "h", "/p", None, None, "ab"),
            "http://h/p\0ab"
        );
    }

    #[test]
    fn partitions_differ_by_principal_and_hold_no_credential() {
        let p = |sub: &str| Principal {
            provider: "jwt".into(),
            subject: Some(sub.into()),
            tenant: None,
            api_key: None,
            scopes: vec![],
            claims: None,
            ..Principal::default()
        };
        assert_eq!(partition(None), "");
        assert_ne!(partition(Some(&p("alice"))), partition(Some(&p("bob"))));
        assert_eq!(partition(Some(&p("alice"))), partition(Some(&p("alice"))));
        assert!(!partition(Some(&p("alice"))).contains("alice"));
    }

    #[test]
    fn vary_values_are_normalized_and_star_matches_nothing() {
        let mut h = HeaderMap::new();
        h.insert(VARY, "Accept-Encoding, accept-language".parse().unwrap());
        let Vary::Headers(names) = Vary::of(&h) else {
            panic!()
        };
        let mut a = HeaderMap::new();
        a.insert("accept-language", "EN-us,  fr;q=0.5".parse().unwrap());
        let mut b = HeaderMap::new();
        b.append("accept-language", "en-US".parse().unwrap());
        b.append("accept-language", "fr;q=0.5".parse().unwrap());
        let v = VaryValues::of(&names, &a);
        assert!(v.matches(&b), "same list, other spacing, case and lines");
        assert!(!v.matches(&HeaderMap::new()), "absent differs");
        h.insert(VARY, "accept, *".parse().unwrap());
        assert_eq!(Vary::of(&h), Vary::Any);
    }
}
