//! WebSocket upgrades: an HTTP/1.1 `Upgrade: websocket` request runs the route's phases like
//! any other (so auth, authorization and rate limits apply to the handshake), goes upstream on a
//! connection of its own, and — when the upstream answers 101 — both connections become one
//! byte tunnel until either side closes, the listener's idle timeout passes, or the gateway
//! shuts down. Any other answer from the upstream goes back to the client as it is.

use crate::connection::io::{Activity, ActivityIo};
use crate::connection::{idle_expired, ConnContext};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// A client's pending upgrade, taken from its request before the request is forwarded.
pub struct Upgrade {
    client: OnUpgrade,
    protocol: HeaderValue,
}

impl Upgrade {
    /// The client's upgrade, if this is an HTTP/1.1 request for a WebSocket (`Connection`
    /// naming `upgrade` and `Upgrade` naming `websocket`). Other upgrade protocols are not
    /// proxied: their headers are removed like every hop-by-hop header.
    pub fn take<B>(req: &mut Request<B>) -> Option<Upgrade> {
        if req.version() != Version::HTTP_11
            || !has_token(req.headers(), header::CONNECTION, "upgrade")
            || !has_token(req.headers(), header::UPGRADE, "websocket")
        {
            return None;
        }
        let protocol = req.headers().get(header::UPGRADE)?.clone();
        Some(Upgrade {
            client: hyper::upgrade::on(req),
            protocol,
        })
    }

    /// Puts the upgrade headers back on the upstream request after hop-by-hop headers were
    /// removed. A request carrying `Upgrade` gets an upstream connection of its own.
    pub fn prepare_request(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// Completes the exchange once the upstream answered. On 101 the response keeps its
    /// upgrade headers and the tunnel starts; any other answer is passed on unchanged.
    pub fn complete<B>(self, resp: &mut Response<B>, idle: Duration, conn: Arc<ConnContext>) {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let protocol = resp
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        let upstream = hyper::upgrade::on(&mut *resp);
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        tokio::spawn(tunnel(self.client, upstream, idle, conn));
    }
}

/// True when any comma-separated token of header `name` equals `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Copies bytes both ways between the upgraded connections. Holding the connection context
/// keeps the tunnel counted against the listener's `max_connections`.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, conn: Arc<ConnContext>) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade did not complete");
            return;
        }
    };
    let activity = Arc::new(Activity::default());
    // Every byte in either direction is read from or written to the client side, so counting
    // there sees all traffic.
    let mut client = ActivityIo::new(TokioIo::new(client), Arc::clone(&activity));
    let mut upstream = TokioIo::new(upstream);
    let never_busy = AtomicU64::new(0);
    let mut shutdown = conn.shutdown.clone();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "WebSocket tunnel ended with an error");
            }
        }
        _ = idle_expired(&activity, &never_busy, idle) => {
            tracing::debug!("WebSocket tunnel closed after the idle timeout");
        }
        _ = shutdown.wait_for(|stopping| *stopping) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, connection: &str, upgrade: &str) -> Request<()> {
        let mut req = Request::get("/ws")
            .header(header::CONNECTION, connection)
            .header(header::UPGRADE, upgrade)
            .body(())
            .unwrap();
        *req.version_mut() = version;
        req
    }

    #[test]
    fn only_http11_websocket_upgrades_are_taken() {
        assert!(Upgrade::take(&mut request(Version::HTTP_11, "Upgrade", "websocket")).is_some());
        assert!(Upgrade::take(&mut request(
            Version::HTTP_11,
            "keep-alive, upgrade",
            "WebSocket"
        ))
        .is_some());
        assert!(Upgrade::take(&mut request(Version::HTTP_11, "keep-alive", "websocket")).is_none());
        assert!(Upgrade::take(&mut request(Version::HTTP_11, "upgrade", "h2c")).is_none());
        assert!(Upgrade::take(&mut request(Version::HTTP_10, "upgrade", "websocket")).is_none());
    }
}
