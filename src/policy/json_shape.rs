//! `response.json`: structural edits of JSON response bodies — members removed by JSONPath
//! (`$.internal_id`, `$.items[*].cost`, `$..password`), keys renamed (`user_id: userId` at any
//! depth, or `$.data.user_id: userId` at one place). Compiled once at load.
//!
//! The rewrite works on the bytes, not on a parsed document: what is kept is copied exactly as
//! the upstream wrote it (number precision, key order, escapes), so the only changes are the
//! ones asked for (and insignificant whitespace inside the containers a path walks through). The body is held up to `max_bytes` (the filter's declared bound); past it, or
//! when the body turns out not to be JSON, it passes unchanged — counted, never failed. A body
//! that is changed loses its `Content-Length` (the transport frames it) and a strong `ETag`
//! becomes weak (RFC 9110 §8.8.1: the bytes are no longer the upstream's).
//!
//! JSONPath subset (RFC 9535 syntax): `$`, `.name`, `['name']`, `[n]`, `.*` / `[*]`, `..name`,
//! `..*`. Filters, slices and unions are refused at load.

use crate::body::filter::{BodyFilter, Emit, FilterError};
use crate::config::{Diag, JsonShaping as JsonShapingConfig, Located};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Held at most this much unless the route says.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Deeper documents pass unchanged (bounds the rewriter's recursion).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Name(String),
    Index(usize),
    Wild,
    DescName(String),
    DescWild,
}

/// One step down: a member's key or an element's index.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Seg {
    fn matches(&self, step: Step<'_>) -> bool {
        match (self, step) {
            (Seg::Name(n) | Seg::DescName(n), Step::Key(k)) => n == k,
            (Seg::Index(i), Step::Index(j)) => *i == j,
            (Seg::Wild | Seg::DescWild, _) => true,
            _ => false,
        }
    }

    fn descends(&self) -> bool {
        matches!(self, Seg::DescName(_) | Seg::DescWild)
    }
}

#[derive(Debug)]
struct Path {
    segs: Vec<Seg>,
    /// `None`: remove what it reaches; else rename that member to this (JSON-encoded, quoted).
    rename_to: Option<String>,
}

/// What happened to response bodies, for `portcullis_response_json_total{result}`.
#[derive(Debug, Default)]
pub struct JsonShapeCounters {
    pub shaped: AtomicU64,
    pub too_large: AtomicU64,
    pub not_json: AtomicU64,
    pub encoded: AtomicU64,
}

impl JsonShapeCounters {
    pub fn all(&self) -> [(&'static str, u64); 4] {
        [
            ("shaped", self.shaped.load(Relaxed)),
            ("too_large", self.too_large.load(Relaxed)),
            ("not_json", self.not_json.load(Relaxed)),
            ("encoded", self.encoded.load(Relaxed)),
        ]
    }
}

#[derive(Debug)]
pub struct JsonShape {
    paths: Vec<Path>,
    max_bytes: usize,
}

impl JsonShape {
    /// Builds a route's `response.json`; `key` e.g. `routes[0]`.
    pub fn build(
        cfg: &Located<JsonShapingConfig>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<JsonShape> {
        let mark = diag.mark();
        let mut paths = Vec::new();
        for (i, p) in cfg.remove.iter().enumerate() {
            match parse_path(p) {
                Ok(segs) if segs.is_empty() => diag.err(
                    p.line,
                    format!("{key}.response.json.remove[{i}]"),
                    "`$` is the whole document: remove members, not the root",
                ),
                Ok(segs) => paths.push(Path {
                    segs,
                    rename_to: None,
                }),
                Err(e) => diag.err(
                    p.line,
                    format!("{key}.response.json.remove[{i}]"),
                    format!("`{}`: {e}", p.as_str()),
                ),
            }
        }
        for (from, to) in &cfg.rename {
            let field = format!("{key}.response.json.rename.{from}");
            // A plain name is renamed wherever it appears; a path names one place.
            let segs = if from.starts_with('$') {
                match parse_path(from) {
                    Ok(s) => s,
                    Err(e) => {
                        diag.err(cfg.line, field, format!("`{from}`: {e}"));
                        continue;
                    }
                }
            } else {
                vec![Seg::DescName(from.clone())]
            };
            if !matches!(segs.last(), Some(Seg::Name(_) | Seg::DescName(_))) {
                diag.err(cfg.line, field, "a rename must end in a member name");
                continue;
            }
            if to.is_empty() {
                diag.err(cfg.line, field, "the new name is empty");
                continue;
            }
            paths.push(Path {
                segs,
                rename_to: Some(serde_json::to_string(to.as_str()).expect("a string serialises")),
            });
        }
        if cfg.remove.is_empty() && cfg.rename.is_empty() {
            diag.err(
                cfg.line,
                format!("{key}.response.json"),
                "give `remove` or `rename` (or drop the section)",
            );
        }
        let max_bytes = match cfg.max_bytes {
            Some(0) => {
                diag.err(
                    cfg.line,
                    format!("{key}.response.json.max_bytes"),
                    "must be greater than 0",
                );
                0
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => DEFAULT_MAX_BYTES as usize,
        };
        diag.ok_since(mark, JsonShape { paths, max_bytes })
    }

    /// Phase 13, from the response head: a filter when the body is JSON the route may shape
    /// (the head then gets a weak ETag); otherwise counted and left alone.
    pub fn start(
        self: &Arc<Self>,
        status: StatusCode,
        head_request: bool,
        headers: &mut HeaderMap,
        counters: &Arc<JsonShapeCounters>,
    ) -> Option<Box<dyn BodyFilter>> {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return None;
        }
        if !super::json_schema::is_json(headers) {
            counters.not_json.fetch_add(1, Relaxed);
            return None;
        }
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            counters.encoded.fetch_add(1, Relaxed);
            return None;
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes as u64) {
            counters.too_large.fetch_add(1, Relaxed);
            return None;
        }
        weaken_etag(headers);
        Some(Box::new(JsonShapeFilter {
            shape: Arc::clone(self),
            held: Vec::new(),
            passing: false,
            counters: Arc::clone(counters),
        }))
    }

    /// The shaped document, or `None` when `doc` is not one JSON text (it then passes as is).
    pub fn rewrite(&self, doc: &[u8]) -> Option<Vec<u8>> {
        std::str::from_utf8(doc).ok()?;
        let mut w = Rewriter {
            src: doc,
            pos: 0,
            out: Vec::with_capacity(doc.len()),
            paths: &self.paths,
        };
        let all: Vec<(u16, u16)> = (0..self.paths.len() as u16).map(|p| (p, 0)).collect();
        w.ws();
        w.value(&all, 0)?;
        w.ws();
        (w.pos == doc.len()).then_some(w.out)
    }
}

/// `"x"` → `W/"x"`; a weak one stays.
fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(v) = headers.get(header::ETAG) {
        if v.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(v.as_bytes());
            if let Ok(w) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, w);
            }
        }
    }
}

struct JsonShapeFilter {
    shape: Arc<JsonShape>,
    held: Vec<u8>,
    /// Past the bound: everything passes unchanged.
    passing: bool,
    counters: Arc<JsonShapeCounters>,
}

impl BodyFilter for JsonShapeFilter {
    fn name(&self) -> &'static str {
        "json_shape"
    }

    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
        if self.passing {
            out.push(chunk);
        } else {
            self.held.extend_from_slice(&chunk);
        }
        Ok(())
    }

    fn end(&mut self, _t: Option<&mut HeaderMap>, out: &mut Emit) -> Result<(), FilterError> {
        if self.passing {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        match self.shape.rewrite(&held) {
            Some(shaped) => {
                self.counters.shaped.fetch_add(1, Relaxed);
                out.push(Bytes::from(shaped));
            }
            None => {
                self.counters.not_json.fetch_add(1, Relaxed);
                out.push(Bytes::from(held));
            }
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.held.len()
    }

    fn max_held(&self) -> usize {
        self.shape.max_bytes
    }

    fn overflow(&mut self, out: &mut Emit) -> Result<(), FilterError> {
        self.counters.too_large.fetch_add(1, Relaxed);
        self.passing = true;
        out.push(Bytes::from(std::mem::take(&mut self.held)));
        Ok(())
    }

    fn changes_length(&self) -> bool {
        true
    }
}

/// Parses `$…` into segments (the root itself is implied).
fn parse_path(p: &str) -> Result<Vec<Seg>, String> {
    let b = p.as_bytes();
    if b.first() != Some(&b'$') {
        return Err("a JSONPath starts with `$`".into());
    }
    let mut i = 1;
    let mut segs = Vec::new();
    let name_end = |i: usize| {
        b[i..]
            .iter()
            .position(|c| matches!(c, b'.' | b'['))
            .map_or(b.len(), |n| i + n)
    };
    while i < b.len() {
        match b[i] {
            b'.' if b.get(i + 1) == Some(&b'.') => {
                i += 2;
                if b.get(i) == Some(&b'*') {
                    segs.push(Seg::DescWild);
                    i += 1;
                } else if b.get(i) == Some(&b'[') {
                    return Err("`..[` is not supported: write `..name` or `..*`".into());
                } else {
                    let end = name_end(i);
                    if end == i {
                        return Err("`..` needs a name or `*`".into());
                    }
                    segs.push(Seg::DescName(p[i..end].to_string()));
                    i = end;
                }
            }
            b'.' => {
                i += 1;
                if b.get(i) == Some(&b'*') {
                    segs.push(Seg::Wild);
                    i += 1;
                } else {
                    let end = name_end(i);
                    if end == i {
                        return Err("`.` needs a name".into());
                    }
                    segs.push(Seg::Name(p[i..end].to_string()));
                    i = end;
                }
            }
            b'[' => {
                let close = p[i..].find(']').map(|n| i + n).ok_or("an unclosed `[`")?;
                let inner = p[i + 1..close].trim();
                let seg = if inner == "*" {
                    Seg::Wild
                } else if let Some(q) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    if q.contains(['\'', '"', '\\']) {
                        return Err(
                            "quotes and escapes inside a quoted name are not supported".into()
                        );
                    }
                    Seg::Name(q.to_string())
                } else if let Ok(n) = inner.parse::<usize>() {
                    Seg::Index(n)
                } else {
                    return Err(format!(
                        "`[{inner}]` is not supported (only [n], [*] and ['name']: no filters, slices or unions)"
                    ));
                };
                segs.push(seg);
                i = close + 1;
            }
            _ => return Err(format!("unexpected `{}`", &p[i..])),
        }
    }
    Ok(segs)
}

struct Rewriter<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    paths: &'a [Path],
}

/// What the paths say about one member or element.
enum Verdict<'p> {
    Keep,
    Remove,
    Rename(&'p str),
}

impl<'a> Rewriter<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    /// States after one step, and what they say about the member stepped to.
    fn step(&self, states: &[(u16, u16)], step: Step<'_>) -> (Vec<(u16, u16)>, Verdict<'a>) {
        let mut next: Vec<(u16, u16)> = Vec::new();
        let mut verdict = Verdict::Keep;
        let add = |s: (u16, u16), next: &mut Vec<(u16, u16)>| {
            if !next.contains(&s) {
                next.push(s);
            }
        };
        for &(p, i) in states {
            let path = &self.paths[p as usize];
            let seg = &path.segs[i as usize];
            if seg.descends() {
                add((p, i), &mut next);
            }
            if seg.matches(step) {
                if i as usize + 1 == path.segs.len() {
                    match &path.rename_to {
                        None => verdict = Verdict::Remove,
                        Some(to) if !matches!(verdict, Verdict::Remove) => {
                            verdict = Verdict::Rename(to)
                        }
                        Some(_) => {}
                    }
                } else {
                    add((p, i + 1), &mut next);
                }
            }
        }
        (next, verdict)
    }

    fn value(&mut self, states: &[(u16, u16)], depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.src.get(self.pos)? {
            b'{' if !states.is_empty() => self.object(states, depth),
            b'[' if !states.is_empty() => self.array(states, depth),
            _ => {
                let start = self.pos;
                self.skip_value(depth)?;
                self.out.extend_from_slice(&self.src[start..self.pos]);
                Some(())
            }
        }
    }

    fn object(&mut self, states: &[(u16, u16)], depth: usize) -> Option<()> {
        self.pos += 1;
        self.out.push(b'{');
        self.ws();
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            self.out.push(b'}');
            return Some(());
        }
        let mut wrote = false;
        loop {
            self.ws();
            let key_start = self.pos;
            let key = self.string()?;
            let key_raw = &self.src[key_start..self.pos];
            self.ws();
            (self.src.get(self.pos)? == &b':').then_some(())?;
            self.pos += 1;
            self.ws();
            let (next, verdict) = self.step(states, Step::Key(&key));
            match verdict {
                Verdict::Remove => self.skip_value(depth + 1)?,
                keep_or_rename => {
                    if wrote {
                        self.out.push(b',');
                    }
                    wrote = true;
                    match keep_or_rename {
                        Verdict::Rename(to) => self.out.extend_from_slice(to.as_bytes()),
                        _ => self.out.extend_from_slice(key_raw),
                    }
                    self.out.push(b':');
                    self.value(&next, depth + 1)?;
                }
            }
            self.ws();
            match self.src.get(self.pos)? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    self.out.push(b'}');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, states: &[(u16, u16)], depth: usize) -> Option<()> {
        self.pos += 1;
        self.out.push(b'[');
        self.ws();
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            self.out.push(b']');
            return Some(());
        }
        let mut wrote = false;
        let mut index = 0;
        loop {
            self.ws();
            let (next, verdict) = self.step(states, Step::Index(index));
            index += 1;
            if matches!(verdict, Verdict::Remove) {
                self.skip_value(depth + 1)?;
            } else {
                if wrote {
                    self.out.push(b',');
                }
                wrote = true;
                self.value(&next, depth + 1)?;
            }
            self.ws();
            match self.src.get(self.pos)? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string token at `pos` (checked), decoded only when it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        (self.src.get(self.pos)? == &b'"').then_some(())?;
        let start = self.pos;
        self.pos += 1;
        let mut escaped = false;
        loop {
            match *self.src.get(self.pos)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *self.src.get(self.pos + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 2,
                        b'u' => {
                            let hex = self.src.get(self.pos + 2..self.pos + 6)?;
                            hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                            self.pos += 6;
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        // Checked as UTF-8 before the walk began.
        let raw = std::str::from_utf8(&self.src[start..self.pos]).ok()?;
        if escaped {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// Moves past one value, checking its syntax.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.src.get(self.pos)? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let close = if self.src[self.pos] == b'{' {
                    b'}'
                } else {
                    b']'
                };
                let object = close == b'}';
                self.pos += 1;
                self.ws();
                if self.src.get(self.pos) == Some(&close) {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    if object {
                        self.string()?;
                        self.ws();
                        (self.src.get(self.pos)? == &b':').then_some(())?;
                        self.pos += 1;
                        self.ws();
                    }
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match *self.src.get(self.pos)? {
                        b',' => self.pos += 1,
                        c if c == close => {
                            self.pos += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.src[self.pos..].starts_with(word).then_some(())?;
        self.pos += word.len();
        Some(())
    }

    /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let start = s.pos;
            while s.src.get(s.pos).is_some_and(u8::is_ascii_digit) {
                s.pos += 1;
            }
            s.pos > start
        };
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.src.get(self.pos)? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            digits(self).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.src.get(self.pos) {
                self.pos += 1;
            }
            digits(self).then_some(())?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(remove: &[&str], rename: &[(&str, &str)]) -> JsonShape {
        let cfg = JsonShapingConfig {
            remove: remove
                .iter()
                .map(|s| Located::new(s.to_string(), 3))
                .collect(),
            rename: rename
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            max_bytes: None,
        };
        let mut diag = Diag::new("t.yaml");
        JsonShape::build(&Located::new(cfg, 3), "routes[0]", &mut diag)
            .unwrap_or_else(|| panic!("{:?}", diag.into_errors()))
    }

    fn run(s: &JsonShape, doc: &str) -> Option<String> {
        s.rewrite(doc.as_bytes())
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn removes_by_path_and_keeps_every_other_byte() {
        let s = shape(
            &[
                "$.internal_id",
                "$.items[*].cost",
                "$..password",
                "$.list[1]",
            ],
            &[],
        );
        let doc = r#"{"internal_id": 7, "name": "a\"b", "big": 12345678901234567890, "f": 1.10,
            "items": [{"id": 1, "cost": 3}, {"cost": 4}, {"id": 3}],
            "deep": {"x": {"password": "p", "keep": [true, false, null]}},
            "list": [10, 20, 30], "password": "top", "e": {}, "ea": []}"#;
        let out = run(&s, doc).unwrap();
        assert_eq!(
            out,
            r#"{"name":"a\"b","big":12345678901234567890,"f":1.10,"items":[{"id":1},{},{"id":3}],"deep":{"x":{"keep":[true,false,null]}},"list":[10,30],"e":{},"ea":[]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v.get("password").is_none());
    }

    #[test]
    fn renames_plain_names_everywhere_and_paths_in_one_place() {
        let s = shape(
            &[],
            &[("user_id", "userId"), ("$.meta['created at']", "createdAt")],
        );
        let out = run(
            &s,
            r#"{"user_id":1,"meta":{"created at":"t","user_id":2},"list":[{"user_id":3}],"created at":"kept"}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"userId":1,"meta":{"createdAt":"t","userId":2},"list":[{"userId":3}],"created at":"kept"}"#
        );
        // Escaped keys are compared decoded.
        assert_eq!(run(&s, r#"{"user\u005fid":1}"#).unwrap(), r#"{"userId":1}"#);
    }

    #[test]
    fn anything_not_one_json_text_is_left_alone() {
        let s = shape(&["$.a"], &[]);
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":1} x"#,
            r#"{"a":"\x"}"#,
            "[1 2]",
            r#"{"a":tru}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
        ] {
            assert_eq!(run(&s, bad), None, "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(run(&s, &deep), None);
        // `$.a` on a root array reaches nothing: the array is copied as it was.
        assert_eq!(run(&s, " [1, {\"a\": 2}] ").unwrap(), "[1,{\"a\": 2}]");
        assert_eq!(run(&s, " {\"a\": [1], \"b\" : 2 } ").unwrap(), "{\"b\":2}");
        assert_eq!(run(&s, "\"just a string\"").unwrap(), "\"just a string\"");
        assert!(s.rewrite(&[0x7b, 0xff, 0x7d]).is_none(), "not UTF-8");
    }

    #[test]
    fn paths_that_are_refused_at_load() {
        let bad = |p: &str| {
            let cfg = JsonShapingConfig {
                remove: vec![Located::new(p.to_string(), 3)],
                rename: Default::default(),
                max_bytes: None,
            };
            let mut diag = Diag::new("t.yaml");
            assert!(JsonShape::build(&Located::new(cfg, 3), "routes[0]", &mut diag).is_none());
            diag.into_errors()
        };
        for p in [
            "a.b",
            "$",
            "$.a[?(@.x)]",
            "$[0:2]",
            "$['a','b']",
            "$.",
            "$..",
            "$[",
            "$x",
        ] {
            let e = bad(p);
            assert_eq!(e.len(), 1, "{p}: {e:?}");
            assert_eq!(e[0].0, 3);
            assert_eq!(e[0].1, "routes[0].response.json.remove[0]");
        }
    }

    #[test]
    fn the_head_decides_and_strong_etags_weaken() {
        let s = Arc::new(shape(&["$.a"], &[]));
        let counters = Arc::new(JsonShapeCounters::default());
        let head = |ct: &str, extra: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            for (k, v) in extra {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let mut h = head("application/json", &[("etag", "\"v1\"")]);
        assert!(s.start(StatusCode::OK, false, &mut h, &counters).is_some());
        assert_eq!(h["etag"], "W/\"v1\"");
        let mut h = head("text/html", &[]);
        assert!(s.start(StatusCode::OK, false, &mut h, &counters).is_none());
        let mut h = head("application/json", &[("content-encoding", "gzip")]);
        assert!(s.start(StatusCode::OK, false, &mut h, &counters).is_none());
        let mut h = head("application/json", &[("content-length", "2000000")]);
        assert!(s.start(StatusCode::OK, false, &mut h, &counters).is_none());
        let mut h = head("application/json", &[]);
        assert!(s.start(StatusCode::OK, true, &mut h, &counters).is_none());
        assert_eq!(
            counters.all(),
            [
                ("shaped", 0),
                ("too_large", 1),
                ("not_json", 1),
                ("encoded", 1)
            ]
        );
    }
}
