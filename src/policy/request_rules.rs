//! The route's `request` block: body size (413), content type (415), required headers (400).

use crate::config::RequestRules as RequestRulesConfig;
use crate::reject::Reject;
use http::{header, HeaderMap, HeaderName};

/// Chunked bodies on routes whose limit is at most this are read fully before anything is sent
/// upstream, so an oversized body is refused without the upstream seeing any of it. Above it the
/// body streams and is cut off (413 to the client, an aborted request upstream) at the limit.
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
}

/// How the request body will be sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    None,
    /// Stream, cutting off past `max_body_bytes`.
    Stream,
    /// Read it all first (it is at most `max_body_bytes`, which is small).
    Buffer,
}

impl RequestRules {
    pub fn compile(cfg: &RequestRulesConfig, default_max_body_bytes: u64) -> RequestRules {
        RequestRules {
            max_body_bytes: cfg.max_body_bytes.unwrap_or(default_max_body_bytes),
            content_types: cfg.content_types.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| {
                        let t = t.to_ascii_lowercase();
                        match t.strip_suffix('*') {
                            Some(prefix) => MediaRange::AnyOf(prefix.to_string()),
                            None => MediaRange::Exact(t),
                        }
                    })
                    .collect()
            }),
            required_headers: cfg
                .required_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("validated header name"))
                .collect(),
        }
    }

    /// Checks what can be checked before reading the body and says how to send the body.
    /// `content_length` is the declared length; `has_body` is false for bodiless requests.
    pub fn check(
        &self,
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
        if !has_body {
            return Ok(BodyPlan::None);
        }
        if let Some(ranges) = &self.content_types {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let ok = !media.is_empty()
                && ranges.iter().any(|r| match r {
                    MediaRange::Exact(t) => *t == media,
                    MediaRange::AnyOf(prefix) => media.starts_with(prefix.as_str()),
                });
            if !ok {
                let shown = if media.is_empty() {
                    "(none)".to_string()
                } else {
                    media
                };
                return Err(Reject::UnsupportedMediaType(shown));
            }
        }
        match content_length {
            Some(n) if n > self.max_body_bytes => Err(Reject::PayloadTooLarge(self.max_body_bytes)),
            Some(_) => Ok(BodyPlan::Stream),
            None if self.max_body_bytes <= BUFFER_CHUNKED_UP_TO => Ok(BodyPlan::Buffer),
            None => Ok(BodyPlan::Stream),
        }
    }
}
