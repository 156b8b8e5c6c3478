//! The Redis server shared by everything that keeps state across instances (rate limits, the
//! JWT revocation list): one auto-reconnecting connection, a short timeout and a breaker, so an
//! outage never adds latency to every request — while the breaker is open Redis is not called
//! at all, and one request probes it again after `breaker_open_ms`. Callers decide what an
//! unusable store means for them (their `on_store_failure`).

use crate::config::{Diag, Located, RedisConfig, Text};
use crate::ratelimit::local::now_us;
use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// KEYS[1]: a key. Returns {1} when it exists.
const EXISTS: &str = "return {redis.call('EXISTS', KEYS[1])}";
static EXISTS_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(EXISTS));

/// The `redis` section, checked; the client is made (nothing is contacted) when it is built.
#[derive(Debug, Clone)]
pub struct RedisSpec {
    /// As configured: a store is replaced when this changes.
    pub config: RedisConfig,
    client: redis::Client,
    /// With `sentinel`: the sentinels' URLs, the primary's name, and how to reach data nodes.
    sentinel: Option<SentinelSpec>,
    /// With `cluster`: the cluster client (nothing contacted yet), and a client for its first
    /// node.
    cluster: Option<redis::cluster::ClusterClient>,
    cluster_first_node: Option<redis::Client>,
}

#[derive(Debug, Clone)]
struct SentinelSpec {
    nodes: Vec<String>,
    master_name: String,
    node_info: redis::sentinel::SentinelNodeConnectionInfo,
}

impl RedisSpec {
    pub fn build(r: &Located<RedisConfig>, diag: &mut Diag) -> Option<RedisSpec> {
        let mark = diag.mark();
        let client = match client(r) {
            Ok(c) => Some(c),
            Err((key, e)) => {
                diag.err(r.url.line, key, e);
                None
            }
        };
        if !(1..=10_000).contains(&r.timeout_ms) {
            diag.err(r.line, "redis.timeout_ms", "must be between 1 and 10000");
        }
        if r.breaker_failures == 0 {
            diag.err(r.line, "redis.breaker_failures", "must be at least 1");
        }
        if !(10..=600_000).contains(&r.breaker_open_ms) {
            diag.err(
                r.line,
                "redis.breaker_open_ms",
                "must be between 10 and 600000",
            );
        }
        let sentinel = r.sentinel.as_ref().and_then(|s| {
            if s.master_name.is_empty() || s.nodes.is_empty() {
                diag.err(
                    s.line,
                    "redis.sentinel",
                    "give master_name and at least one node (host:port)",
                );
                return None;
            }
            let nodes: Vec<String> = s.nodes.iter().map(|n| format!("redis://{n}")).collect();
            if let Some(bad) = nodes
                .iter()
                .find(|n| redis::IntoConnectionInfo::into_connection_info(n.as_str()).is_err())
            {
                diag.err(
                    s.line,
                    "redis.sentinel.nodes",
                    format!("`{}` is not host:port", &bad["redis://".len()..]),
                );
                return None;
            }
            let info = client.as_ref()?.get_connection_info();
            let mut node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info.redis_settings().clone());
            if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                node_info = node_info.set_tls_mode(redis::TlsMode::Secure);
            }
            Some(SentinelSpec {
                nodes,
                master_name: s.master_name.to_string(),
                node_info,
            })
        });
        let cluster = r.cluster.as_ref().and_then(|c| {
            if r.sentinel.is_some() {
                diag.err(
                    c.line,
                    "redis.cluster",
                    "give `sentinel` or `cluster`, not both",
                );
                return None;
            }
            if c.nodes.is_empty() {
                diag.err(
                    c.line,
                    "redis.cluster.nodes",
                    "give at least one node (host:port)",
                );
                return None;
            }
            let info = client.as_ref()?.get_connection_info();
            let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
            let scheme = if tls { "rediss" } else { "redis" };
            let nodes: Vec<String> = c.nodes.iter().map(|n| format!("{scheme}://{n}")).collect();
            let timeout = Duration::from_millis(r.timeout_ms.max(1));
            let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // No retry loop inside a request: the breaker decides when to try again.
                .retries(0);
            if let Some(p) = info.redis_settings().password() {
                b = b.password(p);
            }
            if let Some(u) = info.redis_settings().username() {
                b = b.username(u);
            }
            if tls {
                b = b.tls(redis::TlsMode::Secure);
                if let Ok(certs) = tls_certificates(r) {
                    b = b.certs(certs);
                }
            }
            match b.build() {
                Ok(c) => Some(c),
                Err(e) => {
                    diag.err(c.line, "redis.cluster.nodes", format!("{e}"));
                    None
                }
            }
        });
        let cluster_first_node = r.cluster.as_ref().and_then(|c| {
            let first = c.nodes.first()?;
            let scheme = if r.url.starts_with("rediss://") {
                "rediss"
            } else {
                "redis"
            };
            let mut url_cfg = r.value.clone();
            url_cfg.url = Located::new(Text(format!("{scheme}://{first}")), r.url.line);
            self::client(&url_cfg).ok()
        });
        let spec = RedisSpec {
            config: r.value.clone(),
            client: client?,
            sentinel,
            cluster,
            cluster_first_node,
        };
        diag.ok_since(mark, spec)
    }
}

/// The client for `redis.url`: over TLS for `rediss://` (the server name verified, against
/// `ca_file` when given, with a client certificate when given), files read now.
fn client(r: &RedisConfig) -> Result<redis::Client, (&'static str, String)> {
    let url = &*r.url.value.0;
    let files = r.ca_file.is_some() || r.client_cert_file.is_some() || r.client_key_file.is_some();
    if !url.starts_with("rediss://") {
        if files {
            return Err((
                "redis.ca_file",
                "ca_file, client_cert_file and client_key_file need a rediss:// url".into(),
            ));
        }
        return redis::Client::open(url)
            .map_err(|e| ("redis.url", format!("invalid redis url: {e}")));
    }
    redis::Client::build_with_tls(url, tls_certificates(r)?)
        .map_err(|e| ("redis.url", format!("invalid redis url or TLS files: {e}")))
}

/// `ca_file` and the client certificate, read now.
fn tls_certificates(r: &RedisConfig) -> Result<redis::TlsCertificates, (&'static str, String)> {
    crate::tls::install_provider();
    let read = |key: &'static str, path: &Text| {
        std::fs::read(path.as_str()).map_err(|e| (key, format!("cannot read {path}: {e}")))
    };
    let root_cert = r
        .ca_file
        .as_ref()
        .map(|f| read("redis.ca_file", f))
        .transpose()?;
    let client_tls = match (&r.client_cert_file, &r.client_key_file) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read("redis.client_cert_file", c)?,
            client_key: read("redis.client_key_file", k)?,
        }),
        (None, None) => None,
        _ => {
            return Err((
                "redis.client_cert_file",
                "give both client_cert_file and client_key_file, or neither".into(),
            ))
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The Redis Cluster slot of `key` (CRC16-XMODEM mod 16384, of its hash tag when it has one).
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis breaker open")]
    BreakerOpen,
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The shared connection: one server (or the primary Sentinel names), or a cluster (commands
/// routed by their key's slot; every script here touches one key, or keys of one slot).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// One Redis server's connection and breaker; shared by every limit and provider using it and
/// kept across reloads while `redis` does not change.
pub struct RedisStore {
    client: redis::Client,
    cluster: Option<redis::cluster::ClusterClient>,
    /// With a cluster: a client for its first configured node (for pub/sub).
    cluster_first_node: Option<redis::Client>,
    /// With `redis.sentinel`: asked for the current primary whenever a connection is made
    /// (after the breaker dropped the last one), so a failover is followed.
    sentinel: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    conn: ArcSwapOption<RedisConn>,
    /// Prefix of every rate-limit key the gateway writes.
    pub key_prefix: String,
    timeout: Duration,
    breaker: Breaker,
    pub errors: AtomicU64,
}

/// Consecutive failures open it; while open, calls fail at once; after the open period one
/// call (the probe) goes through, and its success closes it.
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    threshold: u32,
    open_for_us: u64,
    /// 0 when closed; else when the next probe may go.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    /// Whether a call may go to Redis now (true for the probe, which must then report back).
    fn admit(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        now >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis is reachable again");
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Returns true when this failure opened (or re-opened) the breaker.
    fn failure(&self, now: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= self.threshold || was_probe {
            let before = self
                .open_until
                .swap(now + self.open_for_us, Ordering::AcqRel);
            return before == 0;
        }
        false
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

impl RedisStore {
    pub fn new(spec: &RedisSpec) -> RedisStore {
        let config = &spec.config;
        let sentinel = spec.sentinel.as_ref().and_then(|s| {
            redis::sentinel::SentinelClient::build(
                s.nodes.clone(),
                s.master_name.clone(),
                Some(s.node_info.clone()),
                redis::sentinel::SentinelServerType::Master,
            )
            .inspect_err(|e| tracing::warn!(error = %e, "redis sentinel client"))
            .ok()
            .map(tokio::sync::Mutex::new)
        });
        RedisStore {
            client: spec.client.clone(),
            cluster: spec.cluster.clone(),
            cluster_first_node: spec.cluster_first_node.clone(),
            sentinel,
            conn: ArcSwapOption::empty(),
            key_prefix: config.key_prefix.to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
            breaker: Breaker {
                threshold: config.breaker_failures.max(1),
                open_for_us: config.breaker_open_ms * 1000,
                ..Breaker::default()
            },
            errors: AtomicU64::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        !self.breaker.is_open()
    }

    /// Whether this is a Redis Cluster (features whose commands span keys adapt).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// One `SCAN` step (`cursor`, `MATCH pattern`, `COUNT count`) over the keys of the node that
    /// holds `slot_key`'s slot — on a single server, over all of them. Keys that share a hash tag
    /// share a slot, so this finds all of them on a cluster.
    pub async fn scan_step(
        &self,
        slot_key: &str,
        cursor: u64,
        pattern: &str,
        count: u32,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        let slot = hash_slot(slot_key);
        self.guarded(|conn| async move {
            match conn {
                RedisConn::Single(mut c) => cmd.query_async(&mut c).await,
                RedisConn::Cluster(mut c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    let v = c.route_command(cmd, routing).await?;
                    redis::FromRedisValue::from_redis_value(v).map_err(Into::into)
                }
            }
        })
        .await
    }

    async fn connection(&self) -> Result<RedisConn, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        if let Some(cluster) = &self.cluster {
            // Boxed: the rare path (a new connection) stays out of every call's future.
            let connect = Box::pin(cluster.get_async_connection());
            let conn =
                match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), connect)
                    .await
                {
                    Ok(c) => RedisConn::Cluster(c?),
                    Err(_) => return Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
                };
            self.conn.store(Some(Arc::new(conn.clone())));
            return Ok(conn);
        }
        // Boxed: the rare path (a new connection) stays out of every call's future.
        let client = Box::pin(self.current_client()).await?;
        // Lazy: it connects on its first command (inside our timeout), and reconnects by
        // itself after a connection is lost.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // No retry loop inside a request: the breaker decides when to try again.
            .set_number_of_retries(0);
        let manager = RedisConn::Single(ConnectionManager::new_lazy_with_config(client, config)?);
        self.conn.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }

    /// Runs one script invocation under the breaker and the timeout.
    pub async fn call(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Vec<i64>, StoreError> {
        self.guarded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// A client for the primary, for connections of their own (pub/sub): with Sentinel, the
    /// one the sentinels name now.
    pub async fn current_client(&self) -> Result<redis::Client, StoreError> {
        // A cluster propagates PUBLISH to every node: any node's client subscribes.
        if let Some(first) = &self.cluster_first_node {
            return Ok(first.clone());
        }
        let Some(sentinel) = &self.sentinel else {
            return Ok(self.client.clone());
        };
        let ask = async { sentinel.lock().await.async_get_client().await };
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), ask).await {
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
        }
    }

    /// Runs `f` on the shared connection under the breaker and the timeout; failures count
    /// toward the breaker.
    pub async fn guarded<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = now_us();
        if !self.breaker.admit(now) {
            return Err(StoreError::BreakerOpen);
        }
        let result = match self.connection().await {
            Ok(conn) => match tokio::time::timeout(self.timeout, f(conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::Redis(e)),
                Err(_) => Err(StoreError::Timeout(self.timeout.as_millis() as u64)),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if self.breaker.failure(now_us()) {
                    tracing::warn!(error = %e, "redis unavailable; rate limits, revocation checks and nonces use their on_store_failure mode, the cache misses, until it is back");
                    // Start over with a fresh connection on the next probe.
                    self.conn.store(None);
                }
            }
        }
        result
    }

    /// Whether `key` exists (under the same timeout and breaker as limits).
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let v = self.call(EXISTS_SCRIPT.key(key)).await?;
        Ok(v.first() == Some(&1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_follow_the_redis_spec() {
        // CRC16-XMODEM("123456789") = 0x31C3 (the spec's check value).
        assert_eq!(hash_slot("123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        // Only the first `{…}` with something inside counts.
        assert_eq!(
            hash_slot("{user1000}.following"),
            hash_slot("{user1000}.followers")
        );
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), hash_slot("foo{}{bar}"));
        assert_ne!(hash_slot("foo{}{bar}"), hash_slot("bar"));
    }

    #[test]
    fn the_redis_section_is_checked_without_contacting_anything() {
        let yaml = "url: http://127.0.0.1:6379\ntimeout_ms: 0\nbreaker_open_ms: 1\n";
        let build = |yaml: &str| {
            crate::config::diag::build_yaml(yaml, |r: &Located<RedisConfig>, diag| {
                RedisSpec::build(r, diag)
            })
        };
        let e = build(yaml).err().unwrap();
        let keys: Vec<&str> = e.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["redis.url", "redis.timeout_ms", "redis.breaker_open_ms"]
        );
        assert!(e[0].2.starts_with("invalid redis url"), "{e:?}");
        let spec = build("url: redis://127.0.0.1:1/0\n").unwrap();
        assert_eq!(spec.config.timeout_ms, 50);
        assert_eq!(RedisStore::new(&spec).key_prefix, "portcullis:rl:");
    }
}
