//! JSON access log, one line per request, written by a background thread through a bounded
//! queue: the request path only does a non-blocking `try_send`; when the queue is full the line
//! is dropped and counted, never waited for. Serialization happens on the writer thread.

use super::record::Record;
use crate::config::AccessLogConfig;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

enum Message {
    Line(Arc<Record>),
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
    pub fn submit(&self, record: Arc<Record>) {
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

/// Buffered output is flushed when this much is waiting, or at the latest every `FLUSH_AFTER`.
const FLUSH_BYTES: usize = 32 * 1024;
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// The writer drains the queue on this period instead of blocking on it: a blocked receiver
/// would make every request's send a futex wake-up and a context switch.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

fn writer(
    rx: Receiver<Message>,
    destination: Destination,
    out: Box<dyn Write + Send>,
    written: Arc<AtomicU64>,
) {
    let mut out = BufWriter::with_capacity(2 * FLUSH_BYTES, out);
    let mut line = Vec::with_capacity(512);
    let mut clock = Clock::default();
    let mut last_flush = std::time::Instant::now();
    loop {
        loop {
            let msg = match rx.try_recv() {
                Ok(m) => m,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                // Every sender (every snapshot using this log) is gone.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            };
            match msg {
                Message::Line(r) => {
                    line.clear();
                    write_json(&mut line, &mut clock, &r);
                    if out.write_all(&line).is_ok() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    if out.buffer().len() >= FLUSH_BYTES {
                        let _ = out.flush();
                        last_flush = std::time::Instant::now();
                    }
                }
                Message::Reopen => {
                    let _ = out.flush();
                    match open(&destination) {
                        Ok(f) => out = BufWriter::with_capacity(2 * FLUSH_BYTES, f),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reopen the access log; keeping the old file")
                        }
                    }
                }
            }
        }
        if !out.buffer().is_empty() && last_flush.elapsed() >= FLUSH_AFTER {
            let _ = out.flush();
            last_flush = std::time::Instant::now();
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// For values that cannot contain a character JSON needs escaped: config names (kebab-case),
/// hex ids, methods, addresses.
fn json_plain(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            debug_assert!(!s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'));
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Decimal digits of `n`, without the formatting machinery.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Milliseconds with three decimals, from microseconds.
fn push_ms(out: &mut Vec<u8>, micros: u64) {
    push_u64(out, micros / 1000);
    let frac = micros % 1000;
    out.push(b'.');
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// RFC 3339 timestamps with milliseconds; the part up to the seconds is formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    prefix: Vec<u8>,
}

impl Clock {
    fn push(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs());
            self.prefix = humantime::format_rfc3339_seconds(whole)
                .to_string()
                .trim_end_matches('Z')
                .as_bytes()
                .to_vec();
        }
        out.extend_from_slice(&self.prefix);
        let ms = since.subsec_millis();
        out.push(b'.');
        out.push(b'0' + (ms / 100) as u8);
        out.push(b'0' + (ms / 10 % 10) as u8);
        out.push(b'0' + (ms % 10) as u8);
        out.push(b'Z');
    }
}

/// One line, written field by field (building a serde_json `Value` per line cost about four
/// times as much).
fn write_json(out: &mut Vec<u8>, clock: &mut Clock, r: &Record) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    clock.push(out, r.timestamp);
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(out, &String::from_utf8_lossy(r.request_id.as_bytes()));
    out.extend_from_slice(b",\"trace_id\":");
    match &r.trace {
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(&t.trace_id_hex_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"instance\":");
    json_str(out, super::instance::id());
    out.extend_from_slice(b",\"route\":");
    json_plain(out, r.route.as_deref());
    out.extend_from_slice(b",\"config_version\":");
    push_u64(out, r.config_version);
    out.extend_from_slice(b",\"method\":");
    json_plain(out, Some(r.method.as_str()));
    out.extend_from_slice(b",\"path\":");
    match r.path_and_query() {
        (path, None) => json_str(out, path),
        (path, Some(q)) => json_str(out, &format!("{path}?{q}")),
    }
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"upstream\":");
    json_plain(out, r.upstream.as_deref());
    out.extend_from_slice(b",\"target\":");
    json_plain(out, r.target.as_deref());
    out.extend_from_slice(b",\"latency_ms\":");
    push_ms(out, r.latency_us);
    out.extend_from_slice(b",\"upstream_latency_ms\":");
    match r.upstream_latency_us {
        Some(l) => push_ms(out, l),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, r.bytes_out);
    out.extend_from_slice(b",\"client_ip\":");
    json_plain(out, Some(&r.client_ip));
    let p = r.principal.as_deref();
    out.extend_from_slice(b",\"tenant\":");
    match r.tenant.as_deref().or(p.and_then(|p| p.tenant.as_deref())) {
        Some(t) => json_str(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"subject\":");
    match p.and_then(|p| p.subject.as_deref()) {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(c) = &r.consumer {
        out.extend_from_slice(b",\"consumer\":");
        json_str(out, &c.id);
    }
    if let Some(plan) = &r.plan {
        out.extend_from_slice(b",\"plan\":");
        json_str(out, plan);
    }
    out.extend_from_slice(b",\"auth_result\":");
    json_plain(out, Some(r.auth_result));
    if let Some(reason) = r.auth_reason {
        out.extend_from_slice(b",\"auth_reason\":");
        json_plain(out, Some(reason));
    }
    out.extend_from_slice(if r.rate_limit == crate::ratelimit::RateResult::Limited {
        b",\"rate_limited\":true,\"retries\":"
    } else {
        b",\"rate_limited\":false,\"retries\":"
    });
    push_u64(out, u64::from(r.retries));
    if let Some(rule) = &r.rule {
        out.extend_from_slice(b",\"rule\":");
        json_plain(out, Some(rule));
    }
    if let Some(c) = r.cors {
        out.extend_from_slice(b",\"cors\":");
        json_plain(out, Some(c));
    }
    if let Some(c) = r.cache {
        out.extend_from_slice(b",\"cache\":");
        json_plain(out, Some(c));
    }
    if let Some(m) = r.mirror {
        out.extend_from_slice(b",\"mirror\":");
        json_plain(out, Some(m));
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_with_escapes() {
        let r = Record {
            // Header values may carry quotes, backslashes and tabs: all must be escaped.
            request_id: http::HeaderValue::from_static("a\"b\\c\td"),
            uri: "/x?token=s&b=1".parse().unwrap(),
            include_query: true,
            status: 200,
            latency_us: 1235,
            upstream_latency_us: Some(500),
            ..Record::default()
        };
        let mut out = Vec::new();
        write_json(&mut out, &mut Clock::default(), &r);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "a\"b\\c\td");
        assert_eq!(v["path"], "/x?token=***&b=1");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["latency_ms"], 1.235);
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["retries"], 0);
        assert!(v.get("consumer").is_none() && v.get("plan").is_none());
    }

    #[test]
    fn the_consumer_and_its_plan_are_logged() {
        let r = Record {
            consumer: Some(std::sync::Arc::new(crate::consumer::Consumer {
                id: "acme \"app\"".into(),
                ..Default::default()
            })),
            plan: Some("pro".into()),
            ..Record::default()
        };
        let mut out = Vec::new();
        write_json(&mut out, &mut Clock::default(), &r);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["consumer"], "acme \"app\"");
        assert_eq!(v["plan"], "pro");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask_query("a=1&access_token=abc&API_KEY=x&b"),
            "a=1&access_token=***&API_KEY=***&b"
        );
    }
}
