//! JSON access log, one line per request, written by a background thread through a bounded
//! queue: the request path only does a non-blocking `try_send`; when the queue is full the line
//! is dropped and counted, never waited for. Serialization happens on the writer thread.

use crate::config::AccessLogConfig;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

/// Everything one line says about a request.
#[derive(Debug, Default)]
pub struct Record {
    pub timestamp: Option<SystemTime>,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub route: Option<String>,
    pub config_version: u64,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub upstream: Option<String>,
    pub target: Option<String>,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub client_ip: String,
    pub retries: u32,
}

enum Message {
    Line(Box<Record>),
    Reopen,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// Query parameters whose values are never logged.
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "session",
    "code",
];

/// The query with secret parameter values replaced by `***`.
pub fn mask_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub struct AccessLog {
    pub config: AccessLogConfig,
    tx: SyncSender<Message>,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
    pub sampled_out: AtomicU64,
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn start(config: &AccessLogConfig) -> io::Result<AccessLog> {
        let destination = match &*config.destination {
            "stdout" => Destination::Stdout,
            "stderr" => Destination::Stderr,
            path => Destination::File(PathBuf::from(path)),
        };
        let out = open(&destination)?;
        let (tx, rx) = sync_channel(config.queue_size);
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, destination, out, counter))?;
        Ok(AccessLog {
            config: config.clone(),
            tx,
            written,
            dropped: AtomicU64::new(0),
            sampled_out: AtomicU64::new(0),
        })
    }

    /// Whether a request with this status is logged (errors always; 2xx by `sample_2xx`).
    pub fn wants(&self, status: u16) -> bool {
        if (200..300).contains(&status)
            && self.config.sample_2xx < 1.0
            && fastrand::f64() >= self.config.sample_2xx
        {
            self.sampled_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a line; never blocks.
    pub fn submit(&self, record: Box<Record>) {
        match self.tx.try_send(Message::Line(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to reopen its file (after log rotation).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Message::Reopen);
    }
}

fn open(d: &Destination) -> io::Result<Box<dyn Write + Send>> {
    Ok(match d {
        Destination::Stdout => Box::new(io::stdout()),
        Destination::Stderr => Box::new(io::stderr()),
        Destination::File(p) => {
            Box::new(OpenOptions::new().create(true).append(true).open(p)?) as Box<File>
        }
    })
}

fn writer(
    rx: Receiver<Message>,
    destination: Destination,
    out: Box<dyn Write + Send>,
    written: Arc<AtomicU64>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    // Ends when every sender (every snapshot using this log) is gone.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Message::Line(r) => {
                    line.clear();
                    write_json(&mut line, &r);
                    if out.write_all(&line).is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Message::Reopen => {
                    let _ = out.flush();
                    match open(&destination) {
                        Ok(f) => out = BufWriter::with_capacity(64 * 1024, f),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reopen the access log; keeping the old file")
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        // The queue is empty: flush what was written.
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn write_json(out: &mut Vec<u8>, r: &Record) {
    let ts = r.timestamp.unwrap_or_else(SystemTime::now);
    let value = serde_json::json!({
        "timestamp": humantime::format_rfc3339_millis(ts).to_string(),
        "request_id": r.request_id,
        "trace_id": r.trace_id,
        "route": r.route,
        "config_version": r.config_version,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "upstream": r.upstream,
        "target": r.target,
        "latency_ms": (r.latency_ms * 1000.0).round() / 1000.0,
        "upstream_latency_ms": r.upstream_latency_ms.map(|l| (l * 1000.0).round() / 1000.0),
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "client_ip": r.client_ip,
        "tenant": null,
        "subject": null,
        "auth_result": "none",
        "rate_limited": false,
        "retries": r.retries,
    });
    let _ = serde_json::to_writer(&mut *out, &value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_query("a=1&access_token=abc&API_KEY=x&b"),
            "a=1&access_token=***&API_KEY=***&b"
        );
    }
}

/// What the pipeline learns about a request along the way, for its log line. Plain fields set
/// by the phases that know them; turned into a `Record` only when a line will be written.
#[derive(Debug, Default)]
pub struct Trail {
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    /// Index of the last target tried, in the upstream's target list.
    pub target: Option<usize>,
    pub upstream_latency: Option<std::time::Duration>,
    pub retries: u32,
    pub bytes_in: u64,
    /// Counts a streamed request body of unknown length (only when logging).
    pub bytes_in_counter: Option<Arc<AtomicU64>>,
}
