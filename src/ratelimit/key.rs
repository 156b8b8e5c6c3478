//! Which bucket a request counts against: the limit's key parts, read from the request.

use http::{HeaderMap, HeaderName};
use std::hash::{BuildHasher, Hash, Hasher};

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Tenant,
    Subject,
    ApiKey,
    ClientIp,
    Route,
    /// The consumer's id (requests without a consumer do not count against the limit).
    Consumer,
    Header(HeaderName),
}

impl KeyPart {
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        Ok(match s {
            "tenant" => KeyPart::Tenant,
            "subject" => KeyPart::Subject,
            "api_key" => KeyPart::ApiKey,
            "client_ip" => KeyPart::ClientIp,
            "route" => KeyPart::Route,
            "consumer" => KeyPart::Consumer,
            other => match other.strip_prefix("header:") {
                Some(name) => KeyPart::Header(
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("`{name}` is not a valid header name"))?,
                ),
                None => {
                    return Err(format!(
                        "unknown key part `{other}` (tenant, subject, api_key, consumer, client_ip, route, header:NAME)"
                    ))
                }
            },
        })
    }

    /// Parts that need an authenticated principal.
    pub fn needs_principal(&self) -> bool {
        matches!(
            self,
            KeyPart::Tenant | KeyPart::Subject | KeyPart::ApiKey | KeyPart::Consumer
        )
    }
}

pub use crate::auth::Principal;

/// What a key is built from.
pub struct KeyInput<'a> {
    pub route: &'a str,
    pub client_ip: &'a str,
    pub headers: &'a HeaderMap,
    pub principal: Option<&'a Principal>,
    pub consumer: Option<&'a crate::consumer::Consumer>,
    /// The request's tenant (a `{tenant}` host's, else the credential's).
    pub tenant: Option<&'a str>,
}

/// The value of one part, or None when the request has no such value (a part that needs a
/// principal on an unauthenticated request): the limit then does not apply.
fn part_value<'a>(part: &KeyPart, input: &'a KeyInput<'a>) -> Option<&'a [u8]> {
    Some(match part {
        KeyPart::Tenant => input.tenant?.as_bytes(),
        KeyPart::Subject => input.principal?.subject.as_deref()?.as_bytes(),
        KeyPart::ApiKey => input.principal?.api_key.as_deref()?.as_bytes(),
        KeyPart::ClientIp => input.client_ip.as_bytes(),
        KeyPart::Route => input.route.as_bytes(),
        KeyPart::Consumer => input.consumer?.id.as_bytes(),
        // A missing header is a value of its own (the empty one): omitting the header must
        // not be a way around the limit.
        KeyPart::Header(h) => input.headers.get(h).map_or(&b""[..], |v| v.as_bytes()),
    })
}

/// A limit's compiled key: its parts, and the seed that makes local hashes unpredictable from
/// outside (so nobody can aim requests at one bucket with crafted values).
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub parts: Vec<KeyPart>,
    hasher: std::collections::hash_map::RandomState,
}

impl KeySpec {
    pub fn new(parts: Vec<KeyPart>) -> KeySpec {
        KeySpec {
            parts,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The 64-bit bucket id for the local store, without building a string. None: the limit
    /// does not apply to this request.
    pub fn local(&self, input: &KeyInput<'_>) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        for part in &self.parts {
            // Length-prefixed so that ("ab","c") and ("a","bc") differ.
            let v = part_value(part, input)?;
            v.len().hash(&mut h);
            h.write(v);
        }
        Some(h.finish())
    }

    /// The Redis key: `prefix` then each part's value, escaped so parts cannot run together.
    pub fn redis(&self, prefix: &str, input: &KeyInput<'_>) -> Option<String> {
        let mut key = String::with_capacity(prefix.len() + 48);
        key.push_str(prefix);
        for part in &self.parts {
            let v = part_value(part, input)?;
            key.push(':');
            for &b in v {
                // `:` and `%` are escaped; header values are visible ASCII or opaque bytes.
                if b == b':' || b == b'%' || !(0x21..0x7f).contains(&b) {
                    key.push_str(&format!("%{b:02X}"));
                } else {
                    key.push(b as char);
                }
            }
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_and_keys_separate_values() {
        assert_eq!(KeyPart::parse("client_ip"), Ok(KeyPart::ClientIp));
        assert!(KeyPart::parse("header:x tenant").is_err());
        assert!(KeyPart::parse("ip").is_err());
        let spec = KeySpec::new(vec![
            KeyPart::parse("header:x-a").unwrap(),
            KeyPart::parse("header:x-b").unwrap(),
        ]);
        let mut h1 = HeaderMap::new();
        h1.insert("x-a", "ab".parse().unwrap());
        h1.insert("x-b", "c".parse().unwrap());
        let mut h2 = HeaderMap::new();
        h2.insert("x-a", "a".parse().unwrap());
        h2.insert("x-b", "bc".parse().unwrap());
        fn input(h: &HeaderMap) -> KeyInput<'_> {
            KeyInput {
                route: "r",
                client_ip: "127.0.0.1",
                headers: h,
                principal: None,
                consumer: None,
                tenant: None,
            }
        }
        assert_ne!(spec.local(&input(&h1)), spec.local(&input(&h2)));
        assert_eq!(spec.redis("p", &input(&h1)).unwrap(), "p:ab:c");
        h1.insert("x-a", "a:b".parse().unwrap());
        assert_eq!(spec.redis("p", &input(&h1)).unwrap(), "p:a%3Ab:c");
        // A part that needs a principal: no key on an anonymous request.
        let tenant = KeySpec::new(vec![KeyPart::Tenant]);
        assert_eq!(tenant.local(&input(&h1)), None);
        let p = Principal {
            tenant: Some("acme".into()),
            ..Principal::default()
        };
        let with = KeyInput {
            principal: Some(&p),
            tenant: p.tenant.as_deref(),
            ..input(&h1)
        };
        assert_eq!(tenant.redis("p", &with).as_deref(), Some("p:acme"));
    }
}
