//! The route's `request` block: body size (413), content type (415), required headers (400),
//! the JSON Schema a body must match (400, see `json_schema`).

use super::json_schema::{self, BodyProblem, JsonSchema};
use crate::config::{Diag, Located, RequestRules as RequestRulesConfig, Text};
use crate::reject::Reject;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method};
use std::path::Path;

/// Chunked bodies on routes whose limit is at most this are read fully before anything is sent
/// upstream, so an oversized body is refused without the upstream seeing any of it. Above it the
/// body streams and is cut off (413 to the client, an aborted request upstream) at the limit.
/// A chunked body on a method without body semantics is always read first, up to this.
pub const BUFFER_CHUNKED_UP_TO: u64 = 1024 * 1024;

#[derive(Debug)]
enum MediaRange {
    Exact(String),
    /// `text/*`: the type with its slash.
    AnyOf(String),
}

#[derive(Debug)]
pub struct RequestRules {
    pub max_body_bytes: u64,
    content_types: Option<Vec<MediaRange>>,
    required_headers: Vec<HeaderName>,
    /// `allowed_headers`: None when every client header may go upstream.
    allowed_headers: Option<Vec<HeaderName>>,
    denied_headers: Vec<HeaderName>,
    /// Boxed: most routes have none.
    json_schema: Option<Box<JsonSchema>>,
}

/// Client headers an allow-list never removes: the body's framing and the target host.
const ALWAYS_ALLOWED: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
];

/// How the request body will be sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    None,
    /// Stream, cutting off past `max_body_bytes`.
    Stream,
    /// Read it all first, at most this many bytes (413 beyond).
    Buffer(u64),
}

impl RequestRules {
    /// Builds a route's `request` block; `line` is the route's, `key` e.g. `routes[0]`.
    pub fn build(
        cfg: &RequestRulesConfig,
        default_max_body_bytes: u64,
        base: &Path,
        line: u32,
        key: &str,
        diag: &mut Diag,
    ) -> Option<RequestRules> {
        let mark = diag.mark();
        if cfg.max_body_bytes == Some(0) {
            diag.err(
                line,
                format!("{key}.request.max_body_bytes"),
                "must be greater than 0",
            );
        }
        let content_types = cfg.content_types.as_ref().map(|ct| {
            let mut ranges = Vec::with_capacity(ct.len());
            for t in ct.iter() {
                let ok = t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && a != "*"
                        && !t.contains(';')
                        && !t.contains(' ')
                });
                if !ok {
                    diag.err(
                        ct.line,
                        format!("{key}.request.content_types"),
                        format!("`{t}` is not a media type such as application/json or text/*"),
                    );
                    continue;
                }
                let t = t.to_ascii_lowercase();
                ranges.push(match t.strip_suffix('*') {
                    Some(prefix) => MediaRange::AnyOf(prefix.to_string()),
                    None => MediaRange::Exact(t),
                });
            }
            ranges
        });
        let mut required_headers = Vec::with_capacity(cfg.required_headers.len());
        for (j, h) in cfg.required_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => required_headers.push(n),
                Err(_) => diag.err(
                    h.line,
                    format!("{key}.request.required_headers[{j}]"),
                    format!("`{}` is not a valid header name", h.value),
                ),
            }
        }
        let names = |list: &[Located<Text>], field: &str, diag: &mut Diag| {
            let mut out = Vec::with_capacity(list.len());
            for h in list {
                match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => diag.err(
                        h.line,
                        format!("{key}.request.{field}"),
                        format!("`{}` is not a valid header name", h.value),
                    ),
                }
            }
            out
        };
        let allowed_headers = cfg.allowed_headers.as_ref().map(|list| {
            let located: Vec<Located<Text>> = list
                .iter()
                .map(|t| Located::new(t.clone(), list.line))
                .collect();
            names(&located, "allowed_headers", diag)
        });
        let denied_headers = names(&cfg.denied_headers, "denied_headers", diag);
        let json_schema = cfg.json_schema.as_ref().and_then(|s| {
            JsonSchema::build(s, cfg.json_schema_max_errors.as_ref(), base, key, diag).map(Box::new)
        });
        diag.ok_since(
            mark,
            RequestRules {
                max_body_bytes: cfg.max_body_bytes.unwrap_or(default_max_body_bytes),
                content_types,
                required_headers,
                allowed_headers,
                denied_headers,
                json_schema,
            },
        )
    }

    /// Applies `allowed_headers` then `denied_headers` to what the client sent (before the
    /// gateway adds its own headers).
    pub fn filter_client_headers(&self, headers: &mut HeaderMap) {
        if let Some(allowed) = &self.allowed_headers {
            let drop: Vec<HeaderName> = headers
                .keys()
                .filter(|k| !allowed.contains(k) && !ALWAYS_ALLOWED.contains(k))
                .cloned()
                .collect();
            for k in drop {
                headers.remove(k);
            }
        }
        for k in &self.denied_headers {
            headers.remove(k);
        }
    }

    /// Checks what can be checked before reading the body and says how to send the body.
    /// `content_length` is the declared length; `has_body` is false for bodiless requests.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        has_body: bool,
        content_length: Option<u64>,
    ) -> Result<BodyPlan, Reject> {
        if let Some(missing) = self
            .required_headers
            .iter()
            .find(|h| !headers.contains_key(*h))
        {
            return Err(Reject::MissingHeader(missing.to_string()));
        }
        if self.json_schema.is_some() {
            // The schema decides what a body must be: JSON, read whole within the limit.
            if !has_body {
                return if JsonSchema::requires_body(method) {
                    Err(Reject::BadBody(Box::new(BodyProblem::Missing)))
                } else {
                    Ok(BodyPlan::None)
                };
            }
            if !json_schema::is_json(headers) {
                return Err(Reject::UnsupportedMediaType(media_type(headers)));
            }
            return match content_length {
                Some(n) if n > self.max_body_bytes => {
                    Err(Reject::PayloadTooLarge(self.max_body_bytes))
                }
                _ => Ok(BodyPlan::Buffer(self.max_body_bytes)),
            };
        }
        if !has_body {
            return Ok(BodyPlan::None);
        }
        if let Some(ranges) = &self.content_types {
            let media = media_type(headers);
            let ok = ranges.iter().any(|r| match r {
                MediaRange::Exact(t) => *t == media,
                MediaRange::AnyOf(prefix) => media.starts_with(prefix.as_str()),
            });
            if !ok {
                return Err(Reject::UnsupportedMediaType(media));
            }
        }
        match content_length {
            Some(n) if n > self.max_body_bytes => Err(Reject::PayloadTooLarge(self.max_body_bytes)),
            Some(_) => Ok(BodyPlan::Stream),
            None if self.max_body_bytes <= BUFFER_CHUNKED_UP_TO => {
                Ok(BodyPlan::Buffer(self.max_body_bytes))
            }
            // An upstream may answer such a request from its head alone (and HTTP/1.1 clients
            // drop bodies of unknown length on GET, HEAD and CONNECT): its framing is checked,
            // and its length made known, before anything is forwarded.
            None if without_body_semantics(method) => Ok(BodyPlan::Buffer(BUFFER_CHUNKED_UP_TO)),
            None => Ok(BodyPlan::Stream),
        }
    }
}

impl RequestRules {
    /// Checks a body read whole against the route's JSON Schema, if it has one.
    pub fn check_body(&self, method: &Method, body: Option<&Bytes>) -> Result<(), Reject> {
        match &self.json_schema {
            Some(s) if body.is_some() || JsonSchema::requires_body(method) => {
                s.check(body).map_err(|p| Reject::BadBody(Box::new(p)))
            }
            _ => Ok(()),
        }
    }
}

/// The request's media type, lower-case without parameters; `(none)` when it sent none.
fn media_type(headers: &HeaderMap) -> String {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media.is_empty() {
        "(none)".to_string()
    } else {
        media.to_ascii_lowercase()
    }
}

/// Methods whose content has no generally defined meaning (RFC 9110 §9.3).
fn without_body_semantics(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<RequestRules, Vec<(u32, String, String)>> {
        crate::config::diag::build_yaml(yaml, |cfg: &RequestRulesConfig, diag| {
            RequestRules::build(cfg, 1000, Path::new("."), 7, "routes[0]", diag)
        })
    }

    #[test]
    fn media_types_and_headers_are_checked() {
        let e = build("max_body_bytes: 0\ncontent_types: [\"*/*\", application/json]\nrequired_headers: [\"x ok\"]\n").unwrap_err();
        assert_eq!(
            e,
            vec![
                (
                    2,
                    "routes[0].request.content_types".into(),
                    "`*/*` is not a media type such as application/json or text/*".into()
                ),
                (
                    3,
                    "routes[0].request.required_headers[0]".into(),
                    "`x ok` is not a valid header name".into()
                ),
                (
                    7,
                    "routes[0].request.max_body_bytes".into(),
                    "must be greater than 0".into()
                ),
            ]
        );
    }

    #[test]
    fn checks_before_the_body() {
        let r = build("content_types: [application/json, text/*]\nrequired_headers: [x-tenant]\n")
            .unwrap();
        assert_eq!(r.max_body_bytes, 1000, "the default applies");
        let mut h = HeaderMap::new();
        assert!(matches!(
            r.check(&Method::POST, &h, false, None),
            Err(Reject::MissingHeader(_))
        ));
        h.insert("x-tenant", "a".parse().unwrap());
        assert_eq!(
            r.check(&Method::POST, &h, false, None).unwrap(),
            BodyPlan::None
        );
        h.insert(
            header::CONTENT_TYPE,
            "Text/Plain; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            r.check(&Method::POST, &h, true, Some(10)).unwrap(),
            BodyPlan::Stream
        );
        assert!(matches!(
            r.check(&Method::POST, &h, true, Some(1001)),
            Err(Reject::PayloadTooLarge(1000))
        ));
        assert_eq!(
            r.check(&Method::POST, &h, true, None).unwrap(),
            BodyPlan::Buffer(1000)
        );
        h.insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
        assert!(matches!(
            r.check(&Method::POST, &h, true, Some(1)),
            Err(Reject::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn chunked_bodies_without_body_semantics_are_read_first() {
        let big = crate::config::diag::build_yaml("{}", |cfg: &RequestRulesConfig, diag| {
            RequestRules::build(cfg, 10 << 20, Path::new("."), 1, "routes[0]", diag)
        })
        .unwrap();
        let h = HeaderMap::new();
        for m in [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS] {
            assert_eq!(
                big.check(&m, &h, true, None).unwrap(),
                BodyPlan::Buffer(BUFFER_CHUNKED_UP_TO),
                "{m}"
            );
        }
        assert_eq!(
            big.check(&Method::POST, &h, true, None).unwrap(),
            BodyPlan::Stream
        );
        assert_eq!(
            big.check(&Method::GET, &h, true, Some(5)).unwrap(),
            BodyPlan::Stream
        );
    }
}
