//! What differs between two responses to one request: the status, the headers not ignored, and
//! the body — JSON bodies structurally, as flattened field paths (`$.items[].price`, array
//! positions folded into `[]` so a field is one path however long the list), numbers by value
//! (`1` equals `1.0`); other bodies by SHA-256 and length.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// One response as the comparison sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: SeenBody,
}

/// A body: whole when it fitted the comparison's cap, otherwise its length and SHA-256 (hashed
/// only past the cap: bodies within it are compared byte for byte, then field by field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeenBody {
    Whole(Bytes),
    Digest { len: u64, sha256: [u8; 32] },
}

impl SeenBody {
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            SeenBody::Whole(b) => Some(b),
            SeenBody::Digest { .. } => None,
        }
    }
}

/// Builds a [`SeenBody`] chunk by chunk, holding at most `cap` bytes.
pub struct BodyHasher {
    held: Vec<Bytes>,
    len: u64,
    cap: usize,
    /// Past the cap: the hash of everything so far.
    hasher: Option<Sha256>,
}

impl BodyHasher {
    pub fn new(cap: usize) -> BodyHasher {
        BodyHasher {
            held: Vec::new(),
            len: 0,
            cap,
            hasher: None,
        }
    }

    pub fn push(&mut self, chunk: &Bytes) {
        self.len += chunk.len() as u64;
        match &mut self.hasher {
            Some(h) => h.update(chunk),
            None if self.len as usize > self.cap => {
                let mut h = Sha256::new();
                for c in self.held.drain(..) {
                    h.update(&c);
                }
                h.update(chunk);
                self.hasher = Some(h);
            }
            None => self.held.push(chunk.clone()),
        }
    }

    pub fn finish(self) -> SeenBody {
        match self.hasher {
            Some(h) => SeenBody::Digest {
                len: self.len,
                sha256: h.finalize().into(),
            },
            None => SeenBody::Whole(match self.held.len() {
                0 => Bytes::new(),
                1 => self.held.into_iter().next().unwrap_or_default(),
                _ => Bytes::from(self.held.concat()),
            }),
        }
    }
}

/// What the comparison ignores.
#[derive(Debug, Clone)]
pub struct Ignore {
    /// A short list: comparing names is cheaper than hashing them.
    pub headers: Vec<HeaderName>,
    /// Field paths; a path ignores everything under it too.
    pub paths: Vec<String>,
}

/// Headers that differ between any two answers for reasons that say nothing about the service:
/// when they were made, by which process, on which connection, for which request.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "x-trace-id",
    "traceparent",
    "tracestate",
    "via",
    "age",
    "expires",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "cache-status",
    "x-powered-by",
];

impl Ignore {
    fn header(&self, name: &HeaderName) -> bool {
        self.headers.iter().any(|h| h == name)
    }

    fn path(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            path == p
                || (path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), Some(b'.' | b'[')))
        })
    }
}

/// The fields of `b` that differ from `a`: `status`, `header.NAME`, JSON paths, or `body`.
pub fn differences(a: &Seen, b: &Seen, ignore: &Ignore) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if a.status != b.status {
        out.insert("status".to_string());
    }
    // Without allocating: each of `a`'s names against `b`, then `b`'s names `a` lacks.
    for name in a.headers.keys() {
        if !ignore.header(name)
            && !a
                .headers
                .get_all(name)
                .iter()
                .eq(b.headers.get_all(name).iter())
        {
            out.insert(format!("header.{name}"));
        }
    }
    for name in b.headers.keys() {
        if !a.headers.contains_key(name) && !ignore.header(name) {
            out.insert(format!("header.{name}"));
        }
    }
    // Byte-identical bodies have no differing field: nothing to parse.
    if a.body == b.body {
        return out;
    }
    let json = |s: &Seen| {
        s.body
            .bytes()
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
    };
    match (json(a), json(b)) {
        (Some(ja), Some(jb)) => {
            let mut path = String::from("$");
            json_differences(&ja, &jb, &mut path, ignore, &mut out);
        }
        _ => {
            out.insert("body".to_string());
        }
    }
    out
}

/// `path` is the field's path; children extend it and cut it back (one buffer for the walk).
fn json_differences(
    a: &Value,
    b: &Value,
    path: &mut String,
    ignore: &Ignore,
    out: &mut BTreeSet<String>,
) {
    if !ignore.paths.is_empty() && ignore.path(path) {
        return;
    }
    let at = path.len();
    match (a, b) {
        (Value::Object(oa), Value::Object(ob)) => {
            for key in oa.keys().chain(ob.keys().filter(|k| !oa.contains_key(*k))) {
                path.push('.');
                path.push_str(key);
                match (oa.get(key), ob.get(key)) {
                    (Some(va), Some(vb)) => json_differences(va, vb, path, ignore, out),
                    _ => {
                        if !ignore.path(path) {
                            out.insert(path.clone());
                        }
                    }
                }
                path.truncate(at);
            }
        }
        (Value::Array(xa), Value::Array(xb)) => {
            path.push_str("[]");
            if xa.len() != xb.len() && !ignore.path(path) {
                out.insert(path.clone());
            }
            for (va, vb) in xa.iter().zip(xb) {
                json_differences(va, vb, path, ignore, out);
            }
            path.truncate(at);
        }
        (Value::Number(na), Value::Number(nb)) => {
            let equal = match (na.as_i64(), nb.as_i64(), na.as_u64(), nb.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => na.as_f64() == nb.as_f64(),
            };
            if !equal {
                out.insert(path.clone());
            }
        }
        _ => {
            if a != b {
                out.insert(path.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(status: u16, body: &str) -> Seen {
        let mut h = BodyHasher::new(1024);
        h.push(&Bytes::copy_from_slice(body.as_bytes()));
        Seen {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: h.finish(),
        }
    }

    fn ignore(paths: &[&str]) -> Ignore {
        Ignore {
            headers: DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn diff(a: &Seen, b: &Seen, paths: &[&str]) -> Vec<String> {
        differences(a, b, &ignore(paths)).into_iter().collect()
    }

    #[test]
    fn json_fields_are_flattened_paths_and_numbers_compare_by_value() {
        let a = seen(
            200,
            r#"{"id":1,"price":1,"items":[{"sku":"a","n":2},{"sku":"b","n":3}]}"#,
        );
        let b = seen(
            200,
            r#"{"items":[{"sku":"a","n":2.0},{"sku":"c","n":3}],"price":1.0,"id":1}"#,
        );
        assert_eq!(diff(&a, &b, &[]), vec!["$.items[].sku"]);
        let c = seen(
            200,
            r#"{"id":1,"price":2,"items":[{"sku":"a","n":2}],"new":true}"#,
        );
        assert_eq!(diff(&a, &c, &[]), vec!["$.items[]", "$.new", "$.price"]);
    }

    #[test]
    fn ignored_paths_cover_what_is_under_them_only() {
        let a = seen(200, r#"{"meta":{"ts":1,"host":"a"},"metadata":1}"#);
        let b = seen(200, r#"{"meta":{"ts":2,"host":"b"},"metadata":2}"#);
        assert_eq!(diff(&a, &b, &["$.meta"]), vec!["$.metadata"]);
        assert_eq!(
            diff(&a, &b, &["$.meta.ts"]),
            vec!["$.meta.host", "$.metadata"]
        );
    }

    #[test]
    fn status_headers_and_opaque_bodies() {
        let mut a = seen(200, "hello");
        let mut b = seen(404, "hellO");
        a.headers.insert("date", "x".parse().unwrap());
        b.headers.insert("date", "y".parse().unwrap());
        a.headers
            .insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(
            diff(&a, &b, &[]),
            vec!["body", "header.content-type", "status"]
        );
        let same = seen(200, "hello");
        assert!(diff(
            &a.clone(),
            &Seen {
                headers: a.headers.clone(),
                ..same
            },
            &[]
        )
        .is_empty());
    }

    #[test]
    fn a_body_past_the_cap_is_compared_by_hash() {
        let mut h = BodyHasher::new(4);
        h.push(&Bytes::from_static(b"{\"a\":"));
        h.push(&Bytes::from_static(b"1}"));
        assert_eq!(
            h.finish(),
            SeenBody::Digest {
                len: 7,
                sha256: Sha256::digest(b"{\"a\":1}").into()
            }
        );
    }
}
