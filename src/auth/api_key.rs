//! API keys: presented in a header (or a query parameter), stored in config only as SHA-256
//! hashes, compared in constant time against every configured hash; with `consumer_store`,
//! a key not in the file is looked up (by its SHA-256) in the consumer store.

use super::{Failure, Principal, Reason};
use crate::config::{ApiKeyProvider, ConsumerConfig, ConsumerStoreFailure, Diag, Located};
use crate::consumer::store::ConsumerStore;
use crate::consumer::Unresolved;
use crate::router::normalize::percent_decode;
use http::{HeaderMap, HeaderName, Uri};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

struct StoredKey {
    sha256: [u8; 32],
    principal: Arc<Principal>,
}

pub struct ApiKeys {
    pub name: Arc<str>,
    /// Where the key is read from.
    header: Option<HeaderName>,
    query: Option<String>,
    keys: Vec<StoredKey>,
    /// Keys not in `keys` are looked up in the consumer store.
    consumer_store: bool,
}

impl ApiKeys {
    /// Builds one provider: its header (or query parameter) and every key's hash. A key's
    /// `consumer` must be one of `consumers` (its tenant and scopes fill the key's when unset);
    /// `consumer_store: true` needs the `consumer_store` section (`store_configured`).
    pub fn build(
        a: &Located<ApiKeyProvider>,
        key: &str,
        consumers: &[Located<ConsumerConfig>],
        store_configured: bool,
        diag: &mut Diag,
    ) -> Option<ApiKeys> {
        let mark = diag.mark();
        diag.kebab_name(&a.name, format!("{key}.name"));
        if a.header.is_some() && a.query.is_some() {
            diag.err(a.name.line, key, "use either `header` or `query`, not both");
        }
        let header = match (&a.header, &a.query) {
            (Some(h), _) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    diag.err(
                        a.name.line,
                        format!("{key}.header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            },
            (None, Some(_)) => None,
            (None, None) => Some(HeaderName::from_static("x-api-key")),
        };
        if a.keys.is_empty() && !a.consumer_store {
            diag.err(
                a.name.line,
                format!("{key}.keys"),
                "at least one key (or consumer_store: true)",
            );
        }
        if a.consumer_store && !store_configured {
            diag.err(
                a.name.line,
                format!("{key}.consumer_store"),
                "consumer_store: true needs a top-level `consumer_store` section",
            );
        }
        let name: Arc<str> = a.name.value.0.as_str().into();
        let mut ids = BTreeSet::new();
        let mut keys = Vec::with_capacity(a.keys.len());
        for k in &a.keys {
            if !ids.insert(&*k.id.value.0) {
                diag.err(
                    k.id.line,
                    format!("{key}.keys"),
                    format!("duplicate key id `{}`", k.id.value),
                );
            }
            let mut sha256 = [0u8; 32];
            let h = &k.sha256.value;
            if h.len() != 64 || hex::decode_to_slice(h.as_bytes(), &mut sha256).is_err() {
                diag.err(
                    k.sha256.line,
                    format!("{key}.keys"),
                    "sha256 must be 64 hex digits (the SHA-256 of the key, never the key itself)",
                );
                continue;
            }
            let consumer = match &k.consumer {
                None => None,
                Some(c) => {
                    let found = consumers.iter().find(|d| d.id.value == c.value);
                    if found.is_none() {
                        diag.err(
                            c.line,
                            format!("{key}.keys"),
                            format!("unknown consumer `{}`", c.value),
                        );
                    }
                    found
                }
            };
            let tenant = k
                .tenant
                .as_ref()
                .or(consumer.and_then(|c| c.tenant.as_ref()));
            let scopes = match (k.scopes.is_empty(), consumer) {
                (true, Some(c)) => &c.scopes,
                _ => &k.scopes,
            };
            keys.push(StoredKey {
                sha256,
                principal: Arc::new(Principal {
                    provider: Arc::clone(&name),
                    subject: Some(k.id.value.to_string()),
                    tenant: tenant.map(|t| t.to_string()),
                    api_key: Some(k.id.value.to_string()),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    claims: None,
                    consumer_ref: consumer.map(|c| Arc::from(c.id.value.as_str())),
                    ..Principal::default()
                }),
            });
        }
        diag.ok_since(
            mark,
            ApiKeys {
                name,
                header,
                query: a.query.as_ref().map(|q| q.to_string()),
                keys,
                consumer_store: a.consumer_store,
            },
        )
    }

    /// The header carrying keys, removed before the request goes upstream.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// Whether keys not in the file are looked up in the consumer store.
    pub fn uses_store(&self) -> bool {
        self.consumer_store
    }

    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        store: Option<&ConsumerStore>,
    ) -> Result<Arc<Principal>, Failure> {
        let presented: Option<Vec<u8>> = match (&self.header, &self.query) {
            (Some(h), _) => headers.get(h).map(|v| v.as_bytes().to_vec()),
            (None, Some(q)) => uri.query().and_then(|qs| {
                qs.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == q).then(|| percent_decode(v, true))
                })
            }),
            (None, None) => None,
        };
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(Failure::missing(&self.name));
        };
        let digest: [u8; 32] = Sha256::digest(&key).into();
        // Every stored hash is compared, so timing says nothing about which one matched.
        let mut found: Option<&StoredKey> = None;
        for stored in &self.keys {
            if bool::from(stored.sha256.ct_eq(&digest)) {
                found = Some(stored);
            }
        }
        let unknown = || {
            Failure::new(
                &self.name,
                Reason::UnknownApiKey,
                "the API key is not valid",
            )
        };
        if let Some(s) = found {
            return Ok(Arc::clone(&s.principal));
        }
        let Some(store) = store else {
            return Err(unknown());
        };
        match store.api_key(&digest).await {
            Ok(Some(record)) if record.active => {
                let c = &record.consumer;
                let key_id = if record.key_id.is_empty() {
                    // Never the key itself: a short prefix of its hash.
                    hex::encode(&digest[..6])
                } else {
                    record.key_id.clone()
                };
                Ok(Arc::new(Principal {
                    provider: Arc::clone(&self.name),
                    subject: Some(c.id.clone()),
                    tenant: c.tenant.clone(),
                    api_key: Some(key_id),
                    scopes: c.scopes.clone(),
                    consumer: Some(Arc::clone(c)),
                    ..Principal::default()
                }))
            }
            Ok(Some(_)) => Err(Failure::new(
                &self.name,
                Reason::Revoked,
                "the API key was revoked",
            )),
            Ok(None) => Err(unknown()),
            Err(Unresolved::StoreDown(ConsumerStoreFailure::Unauthorized)) => Err(Failure::new(
                &self.name,
                Reason::StoreUnavailable,
                "the API key could not be checked",
            )),
            Err(_) => Err(Failure::new(
                &self.name,
                Reason::ProviderUnavailable,
                "the API key could not be checked",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKey, Text};

    fn provider(header: Option<&str>, query: Option<&str>) -> ApiKeys {
        let section = Located::new(
            ApiKeyProvider {
                name: Located::new(Text::from("p"), 1),
                header: header.map(Text::from),
                query: query.map(Text::from),
                keys: vec![Located::new(
                    ApiKey {
                        id: Located::new(Text::from("k1"), 1),
                        // sha256("s3cret key")
                        sha256: Located::new(
                            Text::from(hex::encode(Sha256::digest(b"s3cret key")).as_str()),
                            1,
                        ),
                        tenant: Some(Text::from("acme")),
                        scopes: vec![Text::from("read")],
                        consumer: None,
                    },
                    1,
                )],
                consumer_store: false,
            },
            1,
        );
        let mut diag = Diag::new("t.yaml");
        let keys = ApiKeys::build(&section, "auth.api_keys[0]", &[], false, &mut diag).unwrap();
        assert!(diag.is_empty());
        keys
    }

    #[test]
    fn bad_hashes_and_duplicate_ids_are_reported() {
        let yaml = "name: p\nheader: \"x key\"\nkeys:\n  - { id: a, sha256: abc }\n  - { id: a, sha256: zz }\n";
        let e = crate::config::diag::build_yaml(yaml, |a: &Located<ApiKeyProvider>, diag| {
            ApiKeys::build(a, "auth.api_keys[0]", &[], false, diag)
        })
        .err()
        .unwrap();
        let got: Vec<(u32, &str, &str)> = e
            .iter()
            .map(|(l, k, m)| (*l, k.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    "auth.api_keys[0].header",
                    "`x key` is not a valid header name"
                ),
                // A key's flow mapping one line below `keys:` is reported at `keys:`.
                (
                    3,
                    "auth.api_keys[0].keys",
                    "sha256 must be 64 hex digits (the SHA-256 of the key, never the key itself)"
                ),
                (3, "auth.api_keys[0].keys", "duplicate key id `a`"),
                (
                    3,
                    "auth.api_keys[0].keys",
                    "sha256 must be 64 hex digits (the SHA-256 of the key, never the key itself)"
                ),
            ]
        );
    }

    #[tokio::test]
    async fn keys_from_a_header_or_a_query_parameter() {
        let mut h = HeaderMap::new();
        let uri: Uri = "/x".parse().unwrap();
        let p = provider(None, None);
        assert_eq!(
            p.authenticate(&h, &uri, None).await.unwrap_err().reason,
            Reason::MissingCredentials
        );
        h.insert("x-api-key", "s3cret key".parse().unwrap());
        let principal = p.authenticate(&h, &uri, None).await.unwrap();
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
        assert_eq!(principal.api_key.as_deref(), Some("k1"));
        h.insert("x-api-key", "s3cret kez".parse().unwrap());
        assert_eq!(
            p.authenticate(&h, &uri, None).await.unwrap_err().reason,
            Reason::UnknownApiKey
        );

        let q = provider(None, Some("api_key"));
        let empty = HeaderMap::new();
        let with: Uri = "/x?a=1&api_key=s3cret%20key".parse().unwrap();
        assert!(q.authenticate(&empty, &with, None).await.is_ok());
        let plus: Uri = "/x?api_key=s3cret+key".parse().unwrap();
        assert!(q.authenticate(&empty, &plus, None).await.is_ok());
        let wrong: Uri = "/x?api_key=nope".parse().unwrap();
        assert!(q.authenticate(&empty, &wrong, None).await.is_err());
        assert!(q.header().is_none());
    }
}
