//! Listeners: accept with a connection limit, serve HTTP/1.1 and h2c on each connection with
//! the listener's limits, close idle connections, and drain on shutdown.

pub mod listener;
pub mod upgrade;

use crate::admin;
use crate::connection::io::{Activity, ActivityIo};
use crate::connection::{idle_expired, ConnContext, ListenerRuntime};
use crate::edge::ip_rules::canonical_ip;
use crate::edge::proxy_protocol::{self, Prefixed};
use crate::gateway::Gateway;
use crate::held::Held;
use crate::pipeline;
use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Counts live connections so shutdown can wait for them to drain.
#[derive(Default)]
pub struct ConnTracker {
    live: AtomicUsize,
    drained: Notify,
}

/// One live client connection for the drain. It lives in the connection's context, so a
/// WebSocket tunnel made from the connection keeps it counted until the tunnel closes.
pub struct ConnGuard(Arc<ConnTracker>);

/// What a connection needs from shutdown: the signal, and its place in the drain count.
pub struct Drain {
    pub shutdown: watch::Receiver<bool>,
    pub live: ConnGuard,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl ConnTracker {
    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        ConnGuard(Arc::clone(self))
    }

    async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A started gateway: bound addresses and the handle to stop it.
pub struct Running {
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    /// The listening sockets (listeners by name, then `admin`), open while their accept loops
    /// run: what a binary upgrade hands to the next process.
    pub sockets: Vec<(String, std::os::fd::RawFd)>,
    /// Accept loops stop (connections go on).
    stop_accepting: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    tracker: Arc<ConnTracker>,
    gateway: Arc<Gateway>,
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits up to
    /// `drain` for them. Returns false if connections were still open at the deadline.
    pub async fn shutdown(self, drain: Duration) -> bool {
        let _ = self.stop_accepting.send(true);
        let _ = self.shutdown.send(true);
        self.gateway.stop_health_checks();
        tokio::time::timeout(drain, self.tracker.wait_drained())
            .await
            .is_ok()
    }

    /// Stops accepting (the sockets stay open in the process that took them over); the
    /// connections already accepted go on until `shutdown`.
    pub fn stop_accepting(&self) {
        let _ = self.stop_accepting.send(true);
    }
}

/// Binds every listener and the admin API of the gateway's current config and starts serving.
pub async fn start(gateway: Arc<Gateway>) -> std::io::Result<Running> {
    start_with(gateway, &mut std::collections::HashMap::new()).await
}

/// As `start`, using the sockets in `inherited` (by listener name, `admin` for the admin API)
/// where their address is the configured one, instead of binding those.
pub async fn start_with(
    gateway: Arc<Gateway>,
    inherited: &mut std::collections::HashMap<String, std::net::TcpListener>,
) -> std::io::Result<Running> {
    use std::os::fd::AsRawFd;
    let snapshot = gateway.snapshot();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tracker = Arc::new(ConnTracker::default());
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for spec in &snapshot.listeners {
        let listener = listen(inherited.remove(&spec.name), spec.address)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot bind listener {} on {}: {e}",
                        spec.name, spec.address
                    ),
                )
            })?;
        let addr = listener.local_addr()?;
        bound.push((spec.name.clone(), addr));
        sockets.push((spec.name.clone(), listener.as_raw_fd()));
        let rt = Arc::new(ListenerRuntime::new(&spec.name));
        tokio::spawn(accept_loop(
            listener,
            rt,
            Arc::clone(&gateway),
            (stop_rx.clone(), shutdown_rx.clone()),
            Arc::clone(&tracker),
        ));
    }
    let admin_listener = listen(inherited.remove("admin"), snapshot.admin_address)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind admin API on {}: {e}", snapshot.admin_address),
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;
    sockets.push(("admin".to_string(), admin_listener.as_raw_fd()));
    tokio::spawn(admin::series::run(
        Arc::clone(&gateway),
        shutdown_rx.clone(),
    ));
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&gateway), stop_rx));
    gateway.sync_health_checks();
    gateway.set_ready();
    Ok(Running {
        listeners: bound,
        admin: admin_addr,
        sockets,
        stop_accepting: stop_tx,
        shutdown: shutdown_tx,
        tracker,
        gateway,
    })
}

/// An inherited socket bound to `address` (a port-0 address takes any), else a new one.
async fn listen(
    inherited: Option<std::net::TcpListener>,
    address: SocketAddr,
) -> std::io::Result<TcpListener> {
    if let Some(l) = inherited {
        let same = l.local_addr().is_ok_and(|a| {
            a.ip() == address.ip() && (address.port() == 0 || a.port() == address.port())
        });
        if same {
            l.set_nonblocking(true)?;
            return TcpListener::from_std(l);
        }
    }
    TcpListener::bind(address).await
}

async fn accept_loop(
    listener: TcpListener,
    rt: Arc<ListenerRuntime>,
    gateway: Arc<Gateway>,
    (mut stop, shutdown): (watch::Receiver<bool>, watch::Receiver<bool>),
    tracker: Arc<ConnTracker>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(listener = %rt.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let snapshot = gateway.snapshot();
        let Some(spec) = snapshot.listener(&rt.name) else {
            return;
        };
        let limits = spec.limits.clone();
        let tls = spec.tls.clone();
        let proxy_protocol = spec.proxy_protocol;
        drop(snapshot);
        if rt.connections.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            rt.connections.fetch_sub(1, Ordering::AcqRel);
            // Over max_connections: close at once rather than queue.
            drop(stream);
            continue;
        }
        let guard = tracker.enter();
        let gateway = Arc::clone(&gateway);
        let rt = Arc::clone(&rt);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            // The PROXY header comes first, before TLS; its source is the connection's peer.
            let (stream, peer_ip) = match proxy_protocol {
                None => (Prefixed::new(BytesMut::new(), stream), peer.ip()),
                Some(accept) => {
                    let mut stream = stream;
                    let timeout = Duration::from_millis(limits.header_read_timeout_ms);
                    match proxy_protocol::read_header(&mut stream, accept, timeout).await {
                        Ok((header, rest)) => (
                            Prefixed::new(rest, stream),
                            header.source.map_or(peer.ip(), |s| s.ip()),
                        ),
                        Err(e) => {
                            tracing::debug!(listener = %rt.name, peer = %peer, error = %e, "PROXY protocol header refused; connection closed");
                            rt.connections.fetch_sub(1, Ordering::AcqRel);
                            drop(guard);
                            return;
                        }
                    }
                }
            };
            let peer_ip = canonical_ip(peer_ip);
            let ctx = |client_cert, hsts, scheme| {
                Arc::new(ConnContext::new(
                    gateway,
                    Arc::clone(&rt),
                    peer_ip,
                    scheme,
                    hsts,
                    client_cert,
                    Drain {
                        shutdown: shutdown.clone(),
                        live: guard,
                    },
                ))
            };
            match tls {
                None => {
                    let ctx = ctx(None, None, "http");
                    serve_connection(stream, ctx, &limits, shutdown, Protocols::Sniffed).await
                }
                Some(tls) => {
                    // The handshake is bounded like a request head: a client that stalls it
                    // does not hold the connection.
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
                    let handshake = tokio::time::timeout(
                        Duration::from_millis(limits.header_read_timeout_ms),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(crate::tls::client_cert);
                            let ctx = ctx(cert, tls.hsts.clone(), "https");
                            // ALPN decided the protocol: after `h2`, only an HTTP/2 preface is
                            // valid (RFC 9113 §3.4), anything else is a connection error.
                            let protocols = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Protocols::Http2,
                                _ => Protocols::Sniffed,
                            };
                            serve_connection(stream, ctx, &limits, shutdown, protocols).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            rt.connections.fetch_sub(1, Ordering::AcqRel);
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            rt.connections.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                }
            }
        });
    }
}

/// Which HTTP versions a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c prior knowledge).
    Sniffed,
    /// HTTP/2 only (TLS with ALPN `h2`).
    Http2,
}

/// Serves `conn` until it ends, or until `close` fires (idle or shutdown): then it finishes its
/// in-flight requests and stops. A macro because hyper's connection types share no trait.
macro_rules! drive {
    ($conn:expr, $close:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            Ok(()) = &mut $close => {
                conn.as_mut().graceful_shutdown();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
        }
    }};
}

/// Serves one accepted connection with the listener's limits until it ends, idles out or the
/// gateway shuts down. Public so that harnesses (the fuzz target) drive the same code as the
/// accept loop.
pub async fn serve_connection<S>(
    stream: S,
    ctx: Arc<ConnContext>,
    limits: &crate::config::ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    protocols: Protocols,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(ActivityIo::new(stream, Arc::clone(&activity)));
    // hyper's own buffer is a little larger than the limit so that the pipeline can answer an
    // oversized head with a JSON 431; heads beyond it get hyper's bare 431.
    let head_buffer = (limits.max_header_bytes as usize + 4096).max(8192);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(head_buffer)
        .max_headers(256);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(head_buffer as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256));

    let svc_ctx = Arc::clone(&ctx);
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&svc_ctx);
        // Boxed once here so hyper moves a pointer, not the multi-kilobyte request future.
        Box::pin(async move {
            let _busy = Held::take(&ctx.inflight);
            let _counted = Held::take(&ctx.gateway.metrics.in_flight);
            Ok::<_, Infallible>(pipeline::handle(req, &ctx).await)
        })
    });
    // The idle timer and the shutdown signal live in a watcher task, so the connection's own
    // task polls only a oneshot receiver besides the connection on each wake-up.
    let (close_tx, mut close_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        async move {
            tokio::select! {
                _ = idle_expired(&activity, &ctx.inflight, idle) => {}
                _ = shutdown.changed() => {}
            }
            let _ = close_tx.send(());
        }
    });
    match protocols {
        Protocols::Sniffed => drive!(
            builder.serve_connection_with_upgrades(io, service),
            close_rx
        ),
        Protocols::Http2 => {
            let builder = builder.http2_only();
            drive!(builder.serve_connection(io, service), close_rx)
        }
    }
    watcher.abort();
}
