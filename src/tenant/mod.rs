//! Tenants: the request's tenant (from a `{tenant}.suffix` host, or the credential's), how it
//! is forwarded, and its status (`authorization.tenant_status`).
//!
//! - A route whose matched host pattern is `{tenant}.api.example.com` gives the request that
//!   label as its tenant, public or authenticated. When the credential carries a tenant too and
//!   they differ (ASCII case aside: host names have no case), the request is refused with 403
//!   unless `tenants.on_mismatch: allow` (then the host's wins).
//! - The tenant is forwarded upstream in `tenants.forward_header` (default `X-Tenant-Id`); a
//!   client's own copy of that header is always removed.
//! - Statuses come from `tenants` records and, when `status_source` is set, from Redis
//!   (`<redis_key_prefix><tenant>` holds the status string), read through a short cache.
//!   Redis is asked first; a tenant it does not know falls back to the records. While Redis
//!   cannot be read, a status read before is used up to `stale_s` past `cache_s`, then the
//!   records; a tenant known to neither is refused with 503 (never admitted on a guess).

use crate::auth::Principal;
use crate::config::{Diag, Located, TenantMismatch, TenantsConfig, TenantsSection};
use crate::read_through::{CachePolicy, ReadThrough, StoreDown};
use crate::redis_store::RedisStore;
use http::HeaderName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the tenant phase refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRefusal {
    /// 403: the host's tenant is not the credential's.
    Mismatch,
    /// 403: no tenant, or one whose status the route does not accept.
    Status(String),
    /// 503: the status could not be read.
    Unavailable,
}

impl TenantRefusal {
    pub fn message(&self) -> String {
        match self {
            TenantRefusal::Mismatch => {
                "forbidden: the host's tenant is not the credential's tenant".into()
            }
            TenantRefusal::Status(m) => format!("forbidden: {m}"),
            TenantRefusal::Unavailable => "tenant status cannot be checked right now".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    key_prefix: String,
    policy: CachePolicy,
}

/// `tenants`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSpec {
    records: HashMap<String, Arc<str>>,
    forward_header: HeaderName,
    on_mismatch: TenantMismatch,
    source: Option<SourceSpec>,
}

impl TenantSpec {
    /// Builds `tenants`; `redis` says whether the top-level `redis` section exists.
    pub fn build(
        cfg: Option<&Located<TenantsConfig>>,
        redis: bool,
        diag: &mut Diag,
    ) -> Option<TenantSpec> {
        let list_form;
        let (section, records_key) = match cfg.map(|c| &c.value) {
            None => (&TenantsSection::default(), "tenants"),
            Some(TenantsConfig::Section(s)) => (s, "tenants.records"),
            Some(TenantsConfig::List(records)) => {
                list_form = TenantsSection {
                    records: records.clone(),
                    ..TenantsSection::default()
                };
                (&list_form, "tenants")
            }
        };
        Self::build_section(section, records_key, redis, diag)
    }

    fn build_section(
        section: &TenantsSection,
        records_key: &str,
        redis: bool,
        diag: &mut Diag,
    ) -> Option<TenantSpec> {
        let mark = diag.mark();
        let mut records = HashMap::new();
        for (i, r) in section.records.iter().enumerate() {
            let line = if r.id.line > 0 { r.id.line } else { r.line };
            let id = r.id.to_ascii_lowercase();
            if id.is_empty() || !id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                diag.err(
                    line,
                    format!("{records_key}[{i}].id"),
                    "must be visible ASCII without spaces",
                );
            }
            if r.status.is_empty() {
                diag.err(
                    line,
                    format!("{records_key}[{i}].status"),
                    "must not be empty",
                );
            }
            if records.insert(id, Arc::from(r.status.as_str())).is_some() {
                diag.err(
                    line,
                    format!("{records_key}[{i}].id"),
                    format!("tenant `{}` is listed twice", r.id.value),
                );
            }
        }
        let forward_header = match &section.forward_header {
            Some(h) => HeaderName::from_bytes(h.as_bytes()).unwrap_or_else(|_| {
                diag.err(
                    h.line,
                    "tenants.forward_header",
                    format!("`{}` is not a valid header name", h.value),
                );
                HeaderName::from_static("x-tenant-id")
            }),
            None => HeaderName::from_static("x-tenant-id"),
        };
        let source = section.status_source.as_ref().map(|s| {
            if !redis {
                diag.err(
                    s.line,
                    "tenants.status_source",
                    "needs the top-level `redis` section",
                );
            }
            if s.cache_s.value == 0 || s.cache_s.value > 3600 {
                diag.err(
                    s.cache_s.line.max(s.line),
                    "tenants.status_source.cache_s",
                    "must be between 1 and 3600",
                );
            }
            if s.max_entries.value == 0 {
                diag.err(
                    s.max_entries.line.max(s.line),
                    "tenants.status_source.max_entries",
                    "must be greater than 0",
                );
            }
            SourceSpec {
                key_prefix: s.redis_key_prefix.to_string(),
                policy: CachePolicy {
                    ttl: Duration::from_secs(s.cache_s.value),
                    negative_ttl: Duration::from_secs(s.cache_s.value),
                    stale_ttl: Duration::from_secs(s.stale_s.value),
                    max_entries: usize::try_from(s.max_entries.value).unwrap_or(usize::MAX),
                },
            }
        });
        diag.ok_since(
            mark,
            TenantSpec {
                records,
                forward_header,
                on_mismatch: section.on_mismatch,
                source,
            },
        )
    }

    pub fn forward_header(&self) -> &HeaderName {
        &self.forward_header
    }
}

/// Statuses read from Redis, by tenant id.
type StatusCache = ReadThrough<Box<str>, Arc<str>>;

/// The tenants of one snapshot: the records, and the Redis status source when configured.
pub struct Tenants {
    spec: TenantSpec,
    store: Option<(Arc<RedisStore>, StatusCache)>,
    /// Requests by tenant, for the tenants the records list (bounded by the file); every
    /// other tenant is counted under `other`.
    requests: HashMap<String, AtomicU64>,
    other_requests: AtomicU64,
}

impl Tenants {
    pub fn new(spec: TenantSpec, redis: Option<&Arc<RedisStore>>) -> Tenants {
        let store = spec
            .source
            .as_ref()
            .zip(redis)
            .map(|(s, r)| (Arc::clone(r), ReadThrough::new(s.policy.clone())));
        let requests = spec
            .records
            .keys()
            .map(|k| (k.clone(), AtomicU64::new(0)))
            .collect();
        Tenants {
            spec,
            store,
            requests,
            other_requests: AtomicU64::new(0),
        }
    }

    /// Counts one request of `tenant`.
    pub fn count(&self, tenant: &str) {
        let counter = match self.requests.get(tenant) {
            Some(c) => c,
            None if tenant.bytes().any(|b| b.is_ascii_uppercase()) => self
                .requests
                .get(&tenant.to_ascii_lowercase())
                .unwrap_or(&self.other_requests),
            None => &self.other_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(tenant, requests)` for `/metrics`, the listed tenants by name, then `other`.
    pub fn request_counts(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .requests
            .iter()
            .map(|(k, c)| (k.as_str(), c.load(Ordering::Relaxed)))
            .collect();
        v.sort_unstable();
        v.push(("other", self.other_requests.load(Ordering::Relaxed)));
        v
    }

    pub fn spec(&self) -> &TenantSpec {
        &self.spec
    }

    /// The request's tenant: the host's (when the route captured one), else the credential's.
    pub fn of_request<'a>(
        &self,
        host_tenant: Option<&'a str>,
        principal: Option<&'a Principal>,
    ) -> Result<Option<&'a str>, TenantRefusal> {
        let credential = principal.and_then(|p| p.tenant.as_deref());
        match (host_tenant, credential) {
            (Some(h), Some(c))
                if !h.eq_ignore_ascii_case(c) && self.spec.on_mismatch == TenantMismatch::Deny =>
            {
                Err(TenantRefusal::Mismatch)
            }
            (Some(h), _) => Ok(Some(h)),
            (None, c) => Ok(c),
        }
    }

    /// Refuses a request whose tenant has none of the `allowed` statuses.
    pub async fn check_status(
        &self,
        tenant: Option<&str>,
        allowed: &[String],
    ) -> Result<(), TenantRefusal> {
        let Some(tenant) = tenant else {
            return Err(TenantRefusal::Status("the request has no tenant".into()));
        };
        let status = self.status(tenant).await?;
        match status {
            Some(s) if allowed.iter().any(|a| a == &*s) => Ok(()),
            Some(s) => Err(TenantRefusal::Status(format!("tenant {tenant} is {s}"))),
            None => Err(TenantRefusal::Status(format!(
                "tenant {tenant} is not known"
            ))),
        }
    }

    /// A tenant's status: Redis first (when configured), then the records.
    pub async fn status(&self, tenant: &str) -> Result<Option<Arc<str>>, TenantRefusal> {
        let id = tenant.to_ascii_lowercase();
        let from_file = || self.spec.records.get(&id).cloned();
        let Some((redis, cache)) = &self.store else {
            return Ok(from_file());
        };
        let prefix = &self
            .spec
            .source
            .as_ref()
            .expect("a store has a source")
            .key_prefix;
        let key: Box<str> = id.as_str().into();
        let fetched = cache
            .get(&key, || async {
                let redis_key = format!("{prefix}{id}");
                redis
                    .guarded(|mut conn| async move {
                        redis::cmd("GET")
                            .arg(redis_key)
                            .query_async::<Option<String>>(&mut conn)
                            .await
                    })
                    .await
                    .map(|v| v.filter(|s| !s.is_empty()).map(|s| Arc::from(s.as_str())))
                    .map_err(|e| {
                        tracing::debug!(error = %e, "tenant status lookup failed");
                        StoreDown
                    })
            })
            .await;
        match fetched {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) => Ok(from_file()),
            Err(StoreDown) => from_file().map(Some).ok_or(TenantRefusal::Unavailable),
        }
    }

    /// Lookups and cache use of the status source, for `/metrics`.
    pub fn counters(&self) -> Option<&crate::read_through::CacheCounters> {
        self.store.as_ref().map(|(_, c)| &c.counters)
    }
}

/// Requests by tenant, and the status source's lookups and cache use.
pub fn render_metrics(tenants: &Tenants, out: &mut String) {
    use crate::observe::metrics::{by_result, family, label};
    let rows: Vec<(String, f64)> = tenants
        .request_counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| (label("tenant", t), n as f64))
        .collect();
    if !rows.is_empty() {
        family(
            out,
            "portcullis_tenant_requests_total",
            "counter",
            "Requests with a tenant, by tenant (the tenants listed in `tenants`; any other as `other`).",
            &rows,
        );
    }
    if let Some(c) = tenants.counters() {
        family(
            out,
            "portcullis_tenant_status_lookups_total",
            "counter",
            "Redis reads of tenant statuses by result (found, unknown, error), and cache answers (hit, negative_hit, stale).",
            &by_result(&[
                ("found", &c.found),
                ("unknown", &c.unknown),
                ("error", &c.failed),
                ("hit", &c.hits),
                ("negative_hit", &c.negative_hits),
                ("stale", &c.stale),
            ]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<TenantSpec, Vec<(u32, String, String)>> {
        crate::config::diag::build_yaml(yaml, |cfg: &Located<TenantsConfig>, diag| {
            TenantSpec::build(Some(cfg), false, diag)
        })
    }

    fn principal(tenant: Option<&str>) -> Principal {
        Principal {
            tenant: tenant.map(str::to_string),
            ..Principal::default()
        }
    }

    #[tokio::test]
    async fn host_and_credential_tenants_and_statuses_from_the_records() {
        let t = Tenants::new(
            spec("- { id: acme, status: ACTIVE }\n- { id: Globex, status: SUSPENDED }\n").unwrap(),
            None,
        );
        assert_eq!(t.of_request(Some("acme"), None).unwrap(), Some("acme"));
        let p = principal(Some("ACME"));
        assert_eq!(t.of_request(Some("acme"), Some(&p)).unwrap(), Some("acme"));
        assert_eq!(
            t.of_request(Some("globex"), Some(&p)),
            Err(TenantRefusal::Mismatch)
        );
        assert_eq!(t.of_request(None, Some(&p)).unwrap(), Some("ACME"));
        assert_eq!(t.of_request(None, None).unwrap(), None);

        let active = ["ACTIVE".to_string()];
        assert_eq!(t.check_status(Some("acme"), &active).await, Ok(()));
        assert_eq!(
            t.check_status(Some("globex"), &active).await,
            Err(TenantRefusal::Status("tenant globex is SUSPENDED".into()))
        );
        assert!(matches!(
            t.check_status(Some("initech"), &active).await,
            Err(TenantRefusal::Status(m)) if m.contains("not known")
        ));
        assert!(t.check_status(None, &active).await.is_err());
    }

    #[test]
    fn the_section_form_and_what_it_refuses() {
        let s = spec(
            "records: [{ id: a, status: ACTIVE }]\nforward_header: X-Org\non_mismatch: allow\n",
        )
        .unwrap();
        assert_eq!(s.forward_header().as_str(), "x-org");
        let t = Tenants::new(s, None);
        let p = principal(Some("b"));
        assert_eq!(
            t.of_request(Some("a"), Some(&p)).unwrap(),
            Some("a"),
            "on_mismatch: allow, the host's wins"
        );
        let e = spec("records: [{ id: a, status: ACTIVE }, { id: A, status: X }, { id: \"b c\", status: \"\" }]\nforward_header: \"bad name\"\nstatus_source: { cache_s: 0 }\n")
            .unwrap_err();
        let keys: Vec<&str> = e.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tenants.records[1].id",
                "tenants.records[2].id",
                "tenants.records[2].status",
                "tenants.forward_header",
                "tenants.status_source",
                "tenants.status_source.cache_s"
            ]
        );
    }
}
