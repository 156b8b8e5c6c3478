//! The gateway's own HTTP calls to services it depends on (JWKS, token introspection, the OTLP
//! collector): plain HTTP/1.1 over TCP, with the target parsed once from a URL.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};

/// Where a dependency lives.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path and query of the request.
    pub path: String,
    /// `host:port` for the Host header.
    pub authority: String,
}

impl Endpoint {
    /// Parses an `http://` URL; `default_path` replaces an empty or `/` path.
    pub fn parse(url: &str, default_path: Option<&str>) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "`{url}`: https is not supported yet (TLS issue); use http"
                ))
            }
            _ => return Err(format!("`{url}` must be an http:// URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        let host = authority.host().trim_matches(|c| c == '[' || c == ']');
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let path = match (uri.path_and_query().map(|p| p.as_str()), default_path) {
            (None | Some("") | Some("/"), Some(d)) => d.to_string(),
            (None | Some(""), None) => "/".to_string(),
            (Some(p), _) => p.to_string(),
        };
        Ok(Endpoint {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            path,
            authority: authority.as_str().to_string(),
        })
    }

    /// Opens a connection; the returned sender sends requests on it.
    pub async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A request to this endpoint's path with its Host header.
    pub fn request(&self, method: http::Method) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(&self.path)
            .header(http::header::HOST, &self.authority)
    }

    /// Sends one request on a new connection and reads the answer (at most `max_body` bytes).
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response<Bytes>, String> {
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {}: {e}", self.authority))?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}
