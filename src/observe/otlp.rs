//! OpenTelemetry span export over OTLP/HTTP (protobuf). The request path only does a
//! non-blocking `try_send` of the request's shared `Record`; a background thread batches,
//! encodes and posts. A slow or unreachable collector fills the bounded queue and spans are
//! dropped and counted — requests never wait for it.

use super::otlp_wire::{Encoder, Preamble};
use super::record::Record;
use crate::config::OtlpConfig;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::outbound::Endpoint;

/// The collector URL: a bare `http://host:port` gets `/v1/traces`.
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    Endpoint::parse(url, Some("/v1/traces"))
}

/// Export counters, shown at `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
}

pub struct SpanExporter {
    tx: SyncSender<Arc<Record>>,
    pub stats: Arc<ExportStats>,
}

impl SpanExporter {
    /// Starts the exporter thread. It ends by itself, after sending what is queued, once every
    /// snapshot holding this exporter is gone.
    pub fn start(config: &OtlpConfig, endpoint: Endpoint) -> io::Result<SpanExporter> {
        let (tx, rx) = sync_channel(config.queue_size);
        let stats = Arc::new(ExportStats::default());
        let exporter = Exporter {
            rx,
            batch_size: config.batch_size,
            interval: Duration::from_millis(config.export_interval_ms),
            preamble: Preamble::new(&resource(config)),
            encoder: Encoder::default(),
            client: Client {
                endpoint,
                headers: config
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
                timeout: Duration::from_millis(config.timeout_ms),
                conn: None,
            },
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || exporter.run())?;
        Ok(SpanExporter { tx, stats })
    }

    /// Queues a finished request's span; never blocks.
    pub fn submit(&self, record: Arc<Record>) {
        if self.tx.try_send(record).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The queue is drained on this period rather than by blocking on it, so a request's send is
/// never a thread wake-up.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Largest collector answer read (its body is only drained to keep the connection).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

struct Exporter {
    rx: Receiver<Arc<Record>>,
    batch_size: usize,
    interval: Duration,
    preamble: Preamble,
    encoder: Encoder,
    client: Client,
    stats: Arc<ExportStats>,
}

impl Exporter {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the OTLP exporter; spans will be dropped");
                return;
            }
        };
        let mut batch: Vec<Arc<Record>> = Vec::with_capacity(self.batch_size);
        let mut oldest = Instant::now();
        let mut failing = false;
        loop {
            let mut closed = false;
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(r) => {
                        if batch.is_empty() {
                            oldest = Instant::now();
                        }
                        batch.push(r);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let due = batch.len() >= self.batch_size
                || (!batch.is_empty() && (closed || oldest.elapsed() >= self.interval));
            if due {
                let body = Bytes::from(
                    self.encoder
                        .encode(&self.preamble, batch.iter().map(|r| &**r)),
                );
                let result = runtime.block_on(self.client.post(body));
                let n = batch.len() as u64;
                match result {
                    Ok(()) => {
                        self.stats.exported.fetch_add(n, Ordering::Relaxed);
                        self.stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                        if failing {
                            tracing::info!("OTLP export recovered");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        self.stats
                            .dropped_export_failed
                            .fetch_add(n, Ordering::Relaxed);
                        self.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                        // One line per change of state, not one per failed batch.
                        if !failing {
                            tracing::warn!(error = %e, endpoint = %self.client.endpoint.authority,
                                "OTLP export failing; spans are dropped until it recovers");
                            failing = true;
                        }
                    }
                }
                batch.clear();
            }
            if closed {
                return;
            }
            if !due {
                std::thread::sleep(DRAIN_EVERY);
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A single kept-alive HTTP/1.1 connection to the collector.
struct Client {
    endpoint: Endpoint,
    headers: HeaderMap,
    timeout: Duration,
    conn: Option<Sender>,
}

impl Client {
    async fn post(&mut self, body: Bytes) -> Result<(), String> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.post_inner(body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(format!("no answer within {} ms", timeout.as_millis()))
            }
        }
    }

    async fn post_inner(&mut self, body: Bytes) -> Result<(), String> {
        // A kept-alive connection the collector closed meanwhile gets one retry on a new one.
        for _ in 0..2 {
            let reused = self.conn.is_some();
            let mut sender = match self.conn.take() {
                Some(s) => s,
                None => self.endpoint.connect().await?,
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err("connection closed".into());
            }
            let mut req = self
                .endpoint
                .request(http::Method::POST)
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            for (k, v) in &self.headers {
                req.headers_mut().insert(k, v.clone());
            }
            let resp = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if reused => {
                    tracing::debug!(error = %e, "OTLP connection went stale; reconnecting");
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            };
            let status = resp.status();
            let drained = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .is_ok();
            if drained {
                self.conn = Some(sender);
            }
            return if status.is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {status}"))
            };
        }
        Err("connection closed".into())
    }
}

/// Resource attributes: service name and version, then the configured ones (which win).
fn resource(config: &OtlpConfig) -> Vec<(String, String)> {
    let mut attributes = vec![
        ("service.name".to_string(), config.service_name.to_string()),
        (
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "service.instance.id".to_string(),
            super::instance::id().to_string(),
        ),
        ("telemetry.sdk.name".to_string(), "portcullis".to_string()),
        ("telemetry.sdk.language".to_string(), "rust".to_string()),
    ];
    for (k, v) in &config.resource {
        attributes.retain(|(key, _)| key != k);
        attributes.push((k.clone(), v.to_string()));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = endpoint("http://collector:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let e = endpoint("http://127.0.0.1/custom/traces?x=1").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/custom/traces?x=1"));
        assert!(endpoint("https://c:4318").unwrap_err().contains("TLS"));
        assert!(endpoint("ftp://c").is_err());
        assert!(endpoint("collector:4318").is_err());
    }
}
