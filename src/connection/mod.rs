//! What a request handler knows about its connection, and the per-listener counters it
//! shares: used by the server (which creates them), the pipeline and WebSocket tunnels (which
//! outlive their request), so none of those import each other for it.

pub mod io;

use crate::gateway::Gateway;
use crate::held::Held;
use io::Activity;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Per-listener counters shared by its connections.
pub struct ListenerRuntime {
    pub name: String,
    /// Open connections (and WebSocket tunnels made from them).
    pub connections: AtomicU64,
    requests: AtomicU64,
}

impl ListenerRuntime {
    pub fn new(name: &str) -> ListenerRuntime {
        ListenerRuntime {
            name: name.to_string(),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// Takes a concurrent-request slot, or `None` when the listener is at `limit`.
    pub fn begin_request(&self, limit: u64) -> Option<Held<'_>> {
        Held::take_within(&self.requests, limit)
    }
}

/// What a request handler knows about its connection.
pub struct ConnContext {
    pub gateway: Arc<Gateway>,
    pub listener: Arc<ListenerRuntime>,
    /// The connection's peer (or the PROXY header's source), IPv4-mapped addresses as IPv4.
    pub peer_ip: std::net::IpAddr,
    /// `peer_ip` as text.
    pub client_ip: Arc<str>,
    pub scheme: &'static str,
    /// TLS listeners: the HSTS header for every response.
    pub hsts: Option<http::HeaderValue>,
    /// A client certificate the listener's CA verified (mTLS).
    pub client_cert: Option<crate::tls::ClientCert>,
    /// Requests in flight on this connection (the idle timer never closes a busy connection).
    pub inflight: AtomicU64,
    /// Becomes true when the gateway shuts down (WebSocket tunnels close then).
    pub shutdown: watch::Receiver<bool>,
    /// Counts this connection, and any tunnel made from it, until shutdown's drain.
    _live: crate::server::ConnGuard,
}

impl ConnContext {
    pub fn new(
        gateway: Arc<Gateway>,
        listener: Arc<ListenerRuntime>,
        peer_ip: std::net::IpAddr,
        scheme: &'static str,
        hsts: Option<http::HeaderValue>,
        client_cert: Option<crate::tls::ClientCert>,
        drain: crate::server::Drain,
    ) -> ConnContext {
        ConnContext {
            gateway,
            listener,
            peer_ip,
            client_ip: peer_ip.to_string().into(),
            scheme,
            hsts,
            client_cert,
            inflight: AtomicU64::new(0),
            shutdown: drain.shutdown,
            _live: drain.live,
        }
    }
}

impl Drop for ConnContext {
    // The connection stops counting against `max_connections` once nothing uses it: its
    // HTTP connection has ended and no WebSocket tunnel made from it is still open.
    fn drop(&mut self) {
        self.listener.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the connection has moved no bytes for `idle` and has no request in flight.
/// Checked in quarter steps, so a connection closes between `idle` and `1.25 × idle`.
pub async fn idle_expired(activity: &Activity, inflight: &AtomicU64, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut last = activity.count();
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.count();
        if now != last || inflight.load(Ordering::Acquire) > 0 {
            last = now;
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        }
    }
}
