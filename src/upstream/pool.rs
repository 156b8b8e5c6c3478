//! Upstream HTTP/1.1 clients with keep-alive pools, one per upstream. Pools are carried across
//! config reloads (keyed by upstream name and pool settings), so a reload never drops warm
//! connections.

use crate::body::UpstreamBody;
use crate::config::PoolConfig;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::time::Duration;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub connect_timeout_ms: u64,
    pub pool: PoolConfig,
}

pub fn build_client(key: &PoolKey) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(key.connect_timeout_ms)));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(key.pool.idle_timeout_ms))
        .pool_max_idle_per_host(key.pool.max_idle_per_target)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The gateway sets Host itself (the client's original host).
        .set_host(false)
        .build(connector)
}

/// Clients by upstream name; only the config loader touches it.
#[derive(Default)]
pub struct PoolRegistry {
    clients: HashMap<String, (PoolKey, UpstreamClient)>,
}

impl PoolRegistry {
    /// The client for `name`, reused when its settings did not change.
    pub fn client_for(&mut self, name: &str, key: PoolKey) -> UpstreamClient {
        if let Some((k, c)) = self.clients.get(name) {
            if *k == key {
                return c.clone();
            }
        }
        let c = build_client(&key);
        self.clients.insert(name.to_string(), (key, c.clone()));
        c
    }

    /// Forgets clients whose upstream is gone (snapshots still using them keep them alive).
    pub fn retain(&mut self, names: &[&str]) {
        self.clients.retain(|n, _| names.contains(&n.as_str()));
    }
}
