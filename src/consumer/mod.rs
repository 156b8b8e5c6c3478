//! Consumers: who calls, beyond one credential — an id, a tenant, a plan, scopes and metadata.
//! They come from the file (`consumers:`) and from the shared Redis server (`consumer_store`),
//! read through a bounded local cache. A credential names its consumer: a stored API key
//! directly, a configured key by `consumer`, a JWT by its `consumer_claim`, a signature key by
//! its `consumer`. The consumer's plan then decides the numbers of `{ by_plan: true }` limits.

pub mod admin;
pub mod store;

use crate::config::{ConsumerConfig, ConsumerStoreConfig, ConsumerStoreFailure, Diag, Located};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One consumer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumer {
    pub id: String,
    pub tenant: Option<String>,
    /// As recorded; a plan the config does not define falls back to `defaults.plan`.
    pub plan: Option<String>,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// `false`: the record says it is suspended (or anything but `active`): refused with 403.
    pub active: bool,
    /// `config` or `store`.
    pub source: &'static str,
}

/// `consumer_store`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSpec {
    pub key_prefix: String,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_ttl: Duration,
    pub max_entries: usize,
    pub on_failure: ConsumerStoreFailure,
}

/// `consumers` and `consumer_store`, checked.
#[derive(Debug, Clone, Default)]
pub struct ConsumerSpecs {
    pub consumers: HashMap<String, Arc<Consumer>>,
    pub store: Option<StoreSpec>,
}

/// A consumer id: visible ASCII, no spaces (it is a Redis key part and a log field).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}

impl ConsumerSpecs {
    /// Builds `consumers` (each plan must be one of `plans`) and `consumer_store` (needs the
    /// top-level `redis`).
    pub fn build(
        consumers: &[Located<ConsumerConfig>],
        store: Option<&Located<ConsumerStoreConfig>>,
        plans: &[&str],
        redis: bool,
        diag: &mut Diag,
    ) -> Option<ConsumerSpecs> {
        let mark = diag.mark();
        let mut out = HashMap::with_capacity(consumers.len());
        for (i, c) in consumers.iter().enumerate() {
            let key = format!("consumers[{i}]");
            let id = c.id.value.as_str();
            if !valid_id(id) {
                diag.err(
                    c.id.line,
                    format!("{key}.id"),
                    "a consumer id is 1 to 256 visible ASCII characters, no spaces",
                );
            }
            if let Some(p) = &c.plan {
                if !plans.contains(&p.value.as_str()) {
                    diag.err(
                        p.line,
                        format!("{key}.plan"),
                        format!("unknown plan `{}`", p.value),
                    );
                }
            }
            let consumer = Consumer {
                id: id.to_string(),
                tenant: c.tenant.as_ref().map(|t| t.to_string()),
                plan: c.plan.as_ref().map(|p| p.value.to_string()),
                scopes: c.scopes.iter().map(|s| s.to_string()).collect(),
                metadata: c
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect(),
                active: true,
                source: "config",
            };
            if out.insert(id.to_string(), Arc::new(consumer)).is_some() {
                diag.err(
                    c.id.line,
                    format!("{key}.id"),
                    format!("duplicate consumer id `{id}`"),
                );
            }
        }
        let store = store.map(|s| {
            let key = "consumer_store";
            if !redis {
                diag.err(
                    s.line,
                    key,
                    "consumer_store needs a top-level `redis` section",
                );
            }
            let range = |v: &Located<u64>, field: &str, lo: u64, hi: u64, diag: &mut Diag| {
                if !(lo..=hi).contains(&v.value) {
                    let line = if v.line == 0 { s.line } else { v.line };
                    diag.err(
                        line,
                        format!("{key}.{field}"),
                        format!("must be between {lo} and {hi}"),
                    );
                }
            };
            range(&s.cache_ttl_ms, "cache_ttl_ms", 10, 86_400_000, diag);
            range(&s.negative_ttl_ms, "negative_ttl_ms", 10, 86_400_000, diag);
            range(&s.stale_ttl_ms, "stale_ttl_ms", 0, 604_800_000, diag);
            range(&s.max_entries, "max_entries", 1, 10_000_000, diag);
            StoreSpec {
                key_prefix: s.key_prefix.to_string(),
                ttl: Duration::from_millis(s.cache_ttl_ms.value),
                negative_ttl: Duration::from_millis(s.negative_ttl_ms.value),
                stale_ttl: Duration::from_millis(s.stale_ttl_ms.value),
                max_entries: s.max_entries.value as usize,
                on_failure: s.on_store_failure,
            }
        });
        diag.ok_since(
            mark,
            ConsumerSpecs {
                consumers: out,
                store,
            },
        )
    }
}

/// Why a consumer could not be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// The store could not be read and nothing usable was cached: 503 or 401 by
    /// `on_store_failure`.
    StoreDown(ConsumerStoreFailure),
    /// The record says the consumer is not active: 403.
    Inactive,
}

/// The consumers a snapshot knows: the file's, and the store (kept across reloads).
#[derive(Default)]
pub struct Consumers {
    config: HashMap<String, Arc<Consumer>>,
    pub store: Option<Arc<store::ConsumerStore>>,
}

impl Consumers {
    pub fn new(specs: &ConsumerSpecs, store: Option<Arc<store::ConsumerStore>>) -> Consumers {
        Consumers {
            config: specs.consumers.clone(),
            store,
        }
    }

    /// The consumer `id`: from the file, else from the store. `Ok(None)`: nobody has that id.
    pub async fn resolve(&self, id: &str) -> Result<Option<Arc<Consumer>>, Unresolved> {
        let found = match self.config.get(id) {
            Some(c) => Some(Arc::clone(c)),
            None => match &self.store {
                Some(s) => s.consumer(id).await?,
                None => None,
            },
        };
        match found {
            Some(c) if !c.active => Err(Unresolved::Inactive),
            other => Ok(other),
        }
    }

    /// The file's consumer `id` (no store lookup).
    pub fn configured(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.config.get(id)
    }
}

/// Store state carried across reloads while `consumer_store` and `redis` do not change (the
/// cache survives a reload).
#[derive(Default)]
pub struct ConsumerRegistry {
    current: Option<(StoreSpec, Arc<store::ConsumerStore>)>,
}

impl ConsumerRegistry {
    pub fn compile(
        &mut self,
        specs: &ConsumerSpecs,
        redis: Option<&Arc<crate::redis_store::RedisStore>>,
        redis_changed: bool,
    ) -> Consumers {
        let store = match (&specs.store, redis) {
            (Some(spec), Some(redis)) => {
                let keep = self
                    .current
                    .as_ref()
                    .filter(|(old, _)| old == spec && !redis_changed)
                    .map(|(_, s)| Arc::clone(s));
                let s = keep.unwrap_or_else(|| {
                    Arc::new(store::ConsumerStore::new(spec.clone(), Arc::clone(redis)))
                });
                self.current = Some((spec.clone(), Arc::clone(&s)));
                Some(s)
            }
            _ => {
                self.current = None;
                None
            }
        };
        Consumers::new(specs, store)
    }
}

/// The consumer of an authenticated request: the one its credential's record carries, or the
/// one it names (looked up). A suspended consumer is refused (403); a store that cannot be read
/// answers per `on_store_failure`. `Ok(None)`: the principal has no consumer (the default plan
/// applies).
pub async fn of_principal(
    p: &crate::auth::Principal,
    consumers: &Consumers,
) -> Result<Option<Arc<Consumer>>, crate::reject::Reject> {
    use crate::reject::Reject;
    use http::StatusCode;
    let found = match (&p.consumer, &p.consumer_ref) {
        (Some(c), _) => Ok(Some(Arc::clone(c))),
        (None, Some(id)) => consumers.resolve(id).await,
        (None, None) => Ok(None),
    };
    match found {
        Ok(Some(c)) if !c.active => Err(Unresolved::Inactive),
        other => other,
    }
    .map_err(|e| match e {
        Unresolved::Inactive => {
            Reject::Status(StatusCode::FORBIDDEN, "the consumer is not active".into())
        }
        Unresolved::StoreDown(ConsumerStoreFailure::Unavailable) => Reject::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            "the consumer store is unavailable".into(),
        ),
        Unresolved::StoreDown(ConsumerStoreFailure::Unauthorized) => {
            Reject::Unauthorized(crate::auth::Failure::new(
                &p.provider,
                crate::auth::Reason::StoreUnavailable,
                "the credential's consumer could not be checked",
            ))
        }
    })
}
