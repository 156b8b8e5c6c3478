//! What differs between two responses to one request: the status, the headers not ignored, and
//! the body — JSON bodies structurally, as flattened field paths (`$.items[].price`, array
//! positions folded into `[]` so a field is one path however long the list), numbers by value
//! (`1` equals `1.0`); other bodies by SHA-256 and length.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
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
    fn json(s: &Seen) -> Option<Json<'_>> {
        s.body
            .bytes()
            .filter(|b| !b.is_empty())
            .and_then(|b| serde_json::from_slice::<Json>(b).ok())
    }
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

/// A JSON document borrowed from its bytes, for comparing: keys and strings without escapes are
/// not copied and objects are lists of pairs (no map of owned keys per object, which made
/// parsing the larger part of a comparison's cost). Nesting is bounded by serde_json's
/// recursion limit.
#[derive(Debug, PartialEq)]
enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl Json<'_> {
    fn number_eq(&self, other: &Json) -> Option<bool> {
        let as_f64 = |j: &Json| match j {
            Json::Int(i) => Some(*i as f64),
            Json::Uint(u) => Some(*u as f64),
            Json::Float(f) => Some(*f),
            _ => None,
        };
        Some(match (self, other) {
            (Json::Int(a), Json::Int(b)) => a == b,
            (Json::Uint(a), Json::Uint(b)) => a == b,
            (Json::Int(a), Json::Uint(b)) | (Json::Uint(b), Json::Int(a)) => {
                u64::try_from(*a).is_ok_and(|a| a == *b)
            }
            _ => as_f64(self)? == as_f64(other)?,
        })
    }
}

/// A key or string: borrowed when the input has it without escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json<'de>, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
                Ok(Json::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
                Ok(Json::Uint(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
                Ok(Json::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
                Ok(Json::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
                Ok(Json::Str(Cow::Owned(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Json::Arr(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(k), v)) = map.next_entry::<Text, Json>()? {
                    out.push((k, v));
                }
                Ok(Json::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn field<'j, 'a>(obj: &'j [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'j Json<'a>> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `path` is the field's path; children extend it and cut it back (one buffer for the walk).
fn json_differences(
    a: &Json,
    b: &Json,
    path: &mut String,
    ignore: &Ignore,
    out: &mut BTreeSet<String>,
) {
    if !ignore.paths.is_empty() && ignore.path(path) {
        return;
    }
    let at = path.len();
    match (a, b) {
        (Json::Obj(oa), Json::Obj(ob)) => {
            let only_b = ob.iter().filter(|(k, _)| field(oa, k).is_none());
            for (key, va) in oa
                .iter()
                .map(|(k, v)| (k, Some(v)))
                .chain(only_b.map(|(k, _)| (k, None)))
            {
                path.push('.');
                path.push_str(key);
                match (va, field(ob, key)) {
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
        (Json::Arr(xa), Json::Arr(xb)) => {
            path.push_str("[]");
            if xa.len() != xb.len() && !ignore.path(path) {
                out.insert(path.clone());
            }
            for (va, vb) in xa.iter().zip(xb) {
                json_differences(va, vb, path, ignore, out);
            }
            path.truncate(at);
        }
        _ => {
            let equal = a.number_eq(b).unwrap_or_else(|| a == b);
            if !equal {
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
    fn escaped_text_and_numbers_of_every_kind() {
        let a = seen(
            200,
            r#"{"a\"b":"x\ny","big":18446744073709551615,"neg":-1,"f":0.5,"z":null}"#,
        );
        let b = seen(
            200,
            r#"{"z":null,"f":0.50,"neg":-1.0,"big":1.8446744073709552e19,"a\"b":"x\ny"}"#,
        );
        assert!(diff(&a, &b, &[]).is_empty(), "{:?}", diff(&a, &b, &[]));
        let c = seen(
            200,
            r#"{"a\"b":"x\nz","big":1,"neg":"-1","f":0.5,"z":false}"#,
        );
        assert_eq!(diff(&a, &c, &[]), vec!["$.a\"b", "$.big", "$.neg", "$.z"]);
        // Not JSON on one side: the bodies differ as a whole.
        assert_eq!(diff(&a, &seen(200, "{oops"), &[]), vec!["body"]);
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
