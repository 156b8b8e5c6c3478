//! Keep-alive HTTP/1.1 connections to upstream targets, one pool per target.
//!
//! Written on hyper's connection-level client rather than hyper-util's pooled `Client`: that
//! client spawns a task per request to watch for the connection becoming idle and hashes a pool
//! key per checkout, which together cost about a fifth of the proxy's CPU per request. Here a
//! connection goes back to its pool when the response body ends (see `PooledBody`), and a pool
//! is a short `Vec` push/pop.
//!
//! Pools are carried across config reloads (keyed by upstream, target and settings), so a
//! reload never drops warm connections.

use crate::body::UpstreamBody;
use crate::config::{PoolConfig, Protocol, UpstreamTls};
use crate::upstream::dns::ResolvedTarget;
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolSettings {
    pub connect_timeout_ms: u64,
    pub pool: PoolConfig,
    pub protocol: Protocol,
    pub tls: Option<UpstreamTls>,
    /// SHA-256 of the client certificate and key read at load: a reload with rotated files
    /// makes new pools (new connections present the new certificate).
    pub client_auth_digest: Option<String>,
}

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {target} failed: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("connect to {target} timed out")]
    ConnectTimeout { target: String },
    #[error("HTTP exchange with {target} failed: {source}")]
    Exchange {
        target: String,
        source: hyper::Error,
    },
    #[error("TLS with {target} failed: {message}")]
    Tls { target: String, message: String },
    /// An HTTP/1.1 upgrade (WebSocket) cannot be carried on an h2c connection.
    #[error(
        "upstream target {target} speaks HTTP/2 (h2c), which cannot carry a WebSocket upgrade"
    )]
    UpgradeOverH2 { target: String },
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
        )
    }
}

/// A connection's send handle and remote address (so that connections to addresses a host name
/// no longer resolves to are not reused).
pub struct Conn {
    sender: SendRequest<UpstreamBody>,
    peer: Option<std::net::SocketAddr>,
}

type H2Sender = hyper::client::conn::http2::SendRequest<UpstreamBody>;

/// How connections to a target are made.
enum Transport {
    Plain,
    /// `protocol: https`: the client config and the name verified.
    Tls(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    ),
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections to one target.
pub struct TargetPool {
    authority: Authority,
    /// `host:port`, shared into access-log records and spans without a copy.
    label: Arc<str>,
    settings: PoolSettings,
    /// Set for targets given by host name.
    resolved: Option<Arc<ResolvedTarget>>,
    /// Oldest at the front, newest at the back (HTTP/1.1).
    idle: Mutex<VecDeque<Idle>>,
    transport: Transport,
    /// `protocol: http2`: one multiplexed connection, shared by every request.
    h2: Mutex<Option<H2Sender>>,
    /// Connections opened over the pool's life.
    pub created: std::sync::atomic::AtomicU64,
}

impl TargetPool {
    /// A pool for one target; `tls` is set for `protocol: https` (built with the upstream's spec).
    pub fn new(
        authority: Authority,
        settings: PoolSettings,
        tls: Option<&super::spec::TargetTls>,
        resolved: Option<Arc<ResolvedTarget>>,
    ) -> Arc<TargetPool> {
        let transport = match tls {
            Some(t) => Transport::Tls(Arc::clone(&t.config), t.server_name.clone()),
            None => Transport::Plain,
        };
        Arc::new(TargetPool {
            label: authority.as_str().into(),
            authority,
            settings,
            resolved,
            transport,
            h2: Mutex::new(None),
            idle: Mutex::new(VecDeque::new()),
            created: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// Idle connections currently held.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The newest usable idle connection, and how long it has been idle.
    fn take_idle(&self) -> Option<(Conn, Duration)> {
        let max_age = Duration::from_millis(self.settings.pool.idle_timeout_ms);
        // For host names: only connections to addresses the name still resolves to.
        let current = self.resolved.as_ref().map(|r| r.current());
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: it is the least likely to have been closed by the upstream.
        while let Some(c) = idle.pop_back() {
            let still_resolved = match (&current, c.conn.peer) {
                (Some(addrs), Some(peer)) => addrs.contains(&peer),
                _ => true,
            };
            let idle_for = c.since.elapsed();
            if idle_for < max_age && !c.conn.sender.is_closed() && still_resolved {
                return Some((c.conn, idle_for));
            }
        }
        None
    }

    fn put_back(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let max_idle = self.settings.pool.max_idle_per_target;
        if max_idle == 0 {
            return;
        }
        let max_age = Duration::from_millis(self.settings.pool.idle_timeout_ms);
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Evict the oldest: past their idle timeout, or to stay within max_idle_per_target.
        while idle
            .front()
            .is_some_and(|c| idle.len() >= max_idle || now.duration_since(c.since) >= max_age)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    /// A new connection over the target's transport (plain or TLS), not counted. With
    /// `upgrades` the connection can be taken over by an upgraded protocol (WebSocket).
    async fn open(&self, upgrades: bool) -> Result<Conn, UpstreamError> {
        let stream = self.tcp_connect().await?;
        let peer = stream.peer_addr().ok();
        let sender = match &self.transport {
            Transport::Plain => handshake_h1(TokioIo::new(stream), upgrades)
                .await
                .map_err(|e| self.exchange_error(e))?,
            Transport::Tls(config, name) => {
                let tls = self.tls_connect(stream, config, name).await?;
                handshake_h1(TokioIo::new(tls), upgrades)
                    .await
                    .map_err(|e| self.exchange_error(e))?
            }
        };
        Ok(Conn { sender, peer })
    }

    /// The TLS handshake on a new connection, within `connect_timeout_ms`.
    async fn tls_connect(
        &self,
        stream: TcpStream,
        config: &Arc<rustls::ClientConfig>,
        name: &rustls_pki_types::ServerName<'static>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
        let target = self.authority.as_str();
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name.clone(), stream),
        )
        .await
        .map_err(|_| UpstreamError::ConnectTimeout {
            target: target.to_string(),
        })?
        .map_err(|e| UpstreamError::Tls {
            target: target.to_string(),
            message: e.to_string(),
        })
    }

    /// A TCP connection to the target within `connect_timeout_ms`: for host names, to the
    /// addresses the DNS refresher keeps, tried in order.
    async fn tcp_connect(&self) -> Result<TcpStream, UpstreamError> {
        let target = self.authority.as_str();
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let connect = async {
            match &self.resolved {
                // Host names: the addresses kept fresh by the DNS refresher, tried in order.
                Some(r) => {
                    let addrs = r
                        .addresses()
                        .await
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e))?;
                    TcpStream::connect(&addrs[..]).await
                }
                None => TcpStream::connect(target).await,
            }
        };
        let stream = match tokio::time::timeout(timeout, connect).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    target: target.to_string(),
                })
            }
            Ok(Err(source)) => {
                tracing::debug!(target = %target, error = %source, "upstream connect failed");
                return Err(UpstreamError::Connect {
                    target: target.to_string(),
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn exchange_error(&self, source: hyper::Error) -> UpstreamError {
        UpstreamError::Exchange {
            target: self.authority.as_str().to_string(),
            source,
        }
    }

    /// A new connection for proxied traffic (counted in `created`).
    async fn connect(&self, upgrades: bool) -> Result<Conn, UpstreamError> {
        let conn = self.open(upgrades).await?;
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(conn)
    }

    /// The shared HTTP/2 connection, opened (again) when there is none or it closed.
    async fn h2_sender(&self) -> Result<H2Sender, UpstreamError> {
        if let Some(s) = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        let stream = self.tcp_connect().await?;
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let builder = || {
            let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30));
            b
        };
        let sender = match &self.transport {
            Transport::Plain => {
                let (sender, conn) = builder()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| self.exchange_error(e))?;
                tokio::spawn(drive_h2(conn));
                sender
            }
            Transport::Tls(config, name) => {
                let tls = self.tls_connect(stream, config, name).await?;
                // `protocol: h2` means HTTP/2: a server that did not agree to it is refused
                // rather than spoken to in a protocol it did not choose.
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(UpstreamError::Tls {
                        target: self.authority.as_str().to_string(),
                        message: "the server did not negotiate HTTP/2 (ALPN h2)".into(),
                    });
                }
                let (sender, conn) = builder()
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| self.exchange_error(e))?;
                tokio::spawn(drive_h2(conn));
                sender
            }
        };
        *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Sends over the shared HTTP/2 connection: the request becomes an h2 request whose
    /// `:authority` is its Host header (or the target).
    async fn send_h2(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let authority = req
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|h| h.to_str().ok().and_then(|h| h.parse::<Authority>().ok()))
            .unwrap_or_else(|| self.authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.settings.protocol.tls() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = Some(authority);
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
        let mut sender = self.h2_sender().await?;
        sender.ready().await.map_err(|e| self.exchange_error(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))?;
        Ok(resp.map(PooledBody::unpooled))
    }

    /// One health-check GET with this target's transport: a connection of its own for HTTP/1.1
    /// and https (so a check never waits behind, or disturbs, proxied traffic), a stream on the
    /// shared connection for h2c. True for a 2xx or 3xx answer.
    pub async fn probe(self: &Arc<Self>, path: &str) -> bool {
        let Ok(req) = Request::get(path)
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(UpstreamBody::empty())
        else {
            return false;
        };
        let status = if self.settings.protocol.http2() {
            match Box::pin(self.send_h2(req)).await {
                Ok(r) => r.status(),
                Err(_) => return false,
            }
        } else {
            let Ok(mut conn) = Box::pin(self.open(false)).await else {
                return false;
            };
            match conn.sender.send_request(req).await {
                Ok(r) => r.status(),
                Err(_) => return false,
            }
        };
        status.is_success() || status.is_redirection()
    }

    /// Sends `req` (its URI already in origin-form) on a pooled or new connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if req.headers().contains_key(http::header::UPGRADE) {
            return Box::pin(self.send_upgrade(req)).await;
        }
        if self.settings.protocol.http2() {
            return Box::pin(self.send_h2(req)).await;
        }
        // A pooled connection may have been closed by the upstream a moment ago; hyper hands
        // the request back unsent in that case and it goes out on a fresh connection.
        let (mut conn, mut fresh, idle_for) = match self.take_idle() {
            // Wait for the connection task to finish with the previous exchange.
            Some((mut c, idle_for)) => match c.sender.ready().await {
                Ok(()) => (c, false, idle_for),
                Err(_) => (Box::pin(self.connect(false)).await?, true, Duration::ZERO),
            },
            // Boxed: connecting is the rare path, and its future is large.
            None => (Box::pin(self.connect(false)).await?, true, Duration::ZERO),
        };
        // If the upstream's keep-alive timer closes a reused connection just as the request
        // goes out, the request is gone. When it cannot have changed anything (an idempotent
        // method, no body) and no byte of an answer came back, it is sent once more on a new
        // connection, as a client would (RFC 9110 §9.2.2). Keep-alive timers fire after a
        // second or more of quiet, so only connections idle that long keep the copy this
        // needs: copying every request's head cost 3.9% of the plain path's instructions
        // (bench/RESULTS.md). Other failures stand, and the route's retry policy decides.
        let mut resend = (!fresh && idle_for >= RESEND_AFTER_IDLE && resendable(&req))
            .then(|| copy_head(req.method(), req.uri(), req.version(), req.headers()));
        loop {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let pool = Arc::clone(self);
                    return Ok(resp.map(|inner| PooledBody::new(inner, conn, pool)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        conn = Box::pin(self.connect(false)).await?;
                        fresh = true;
                    }
                    _ => {
                        let error = e.into_error();
                        match resend.take() {
                            Some(parts) if closed_before_answer(&error) => {
                                req = Request::from_parts(parts, UpstreamBody::empty());
                                conn = Box::pin(self.connect(false)).await?;
                                fresh = true;
                            }
                            _ => return Err(self.exchange_error(error)),
                        }
                    }
                },
            }
        }
    }

    /// An upgrade request (WebSocket) on a new HTTP/1.1 connection of its own that is never
    /// pooled: after a 101 it belongs to the tunnel.
    async fn send_upgrade(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if self.settings.protocol.http2() {
            return Err(UpstreamError::UpgradeOverH2 {
                target: self.authority.as_str().to_string(),
            });
        }
        let mut conn = self.connect(true).await?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| self.exchange_error(e))?;
        Ok(resp.map(|inner| PooledBody {
            inner,
            owner: Owner::Dedicated { _conn: conn },
        }))
    }
}

/// Runs an HTTP/2 client connection until it ends.
async fn drive_h2<C: std::future::Future<Output = Result<(), hyper::Error>>>(conn: C) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream h2 connection ended with an error");
    }
}

async fn handshake_h1<I>(io: I, upgrades: bool) -> Result<SendRequest<UpstreamBody>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// How long a pooled connection must have been idle before a request on it keeps a copy of
/// its head, to be sent again if the upstream's keep-alive timer closes the connection under it.
const RESEND_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Whether a request may go out again after its connection was closed under it: idempotent
/// (RFC 9110 §9.2.2) and without a body.
fn resendable(req: &Request<UpstreamBody>) -> bool {
    super::retry::is_idempotent(req.method()) && req.body().is_end_stream()
}

/// The connection ended before any part of the response arrived (closed or reset), as opposed
/// to a malformed answer or a body error.
fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// A copy of a request's head (method, target, version, headers) for sending it again; the
/// body is the caller's to supply.
pub fn copy_head(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = method.clone();
    *copy.uri_mut() = uri.clone();
    *copy.version_mut() = version;
    *copy.headers_mut() = headers.clone();
    copy.into_parts().0
}

/// A response body from a pooled connection: the connection goes back to its pool once the body
/// has been read to the end, and is closed if the body is abandoned halfway.
pub struct PooledBody {
    inner: Incoming,
    owner: Owner,
}

/// Where a response's connection goes when its body ends.
enum Owner {
    /// Back to its pool.
    Pool(Conn, Arc<TargetPool>),
    /// Nowhere: held (never read) while the body lives, then closed (upgrade requests).
    Dedicated { _conn: Conn },
    /// Nothing to give back (multiplexed HTTP/2), or already given back.
    None,
}

impl PooledBody {
    fn new(inner: Incoming, conn: Conn, pool: Arc<TargetPool>) -> PooledBody {
        PooledBody {
            inner,
            owner: Owner::Pool(conn, pool),
        }
    }

    /// A body from a multiplexed connection: nothing to give back.
    fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody {
            inner,
            owner: Owner::None,
        }
    }

    fn release(&mut self) {
        if let Owner::Pool(conn, pool) = std::mem::replace(&mut self.owner, Owner::None) {
            pool.put_back(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.release();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (204, HEAD, fully read) leaves a reusable connection; one
        // dropped halfway does not, and the connection closes with its sender.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, body: UpstreamBody) -> Request<UpstreamBody> {
        Request::builder()
            .method(method)
            .uri("/orders?id=7")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(body)
            .unwrap()
    }

    #[test]
    fn only_idempotent_requests_without_a_body_are_sent_again() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(resendable(&req(m, UpstreamBody::empty())), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!resendable(&req(m, UpstreamBody::empty())), "{m}");
        }
        let with_body = UpstreamBody::Full(Some(Bytes::from_static(b"x")));
        assert!(!resendable(&req("PUT", with_body)));
    }

    #[test]
    fn a_copied_head_keeps_method_target_version_and_every_header_value() {
        let r = req("DELETE", UpstreamBody::empty());
        let copy = copy_head(r.method(), r.uri(), r.version(), r.headers());
        assert_eq!(copy.method, http::Method::DELETE);
        assert_eq!(copy.uri, "/orders?id=7");
        assert_eq!(copy.version, r.version());
        let values: Vec<_> = copy.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
    }
}
