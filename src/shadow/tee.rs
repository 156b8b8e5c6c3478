//! The two tees of a compared copy: the primary's request body (for the copy's body) and the
//! primary's response body (for the comparison). Both pass every chunk on at once and hold
//! nothing back; what they keep are refcounted chunks, within their byte bound.

use super::compare::{BodyHasher, SeenBody};
use crate::body::filter::{BodyFilter, Emit, FilterError};
use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::oneshot;

/// Keeps the request body for the copy, up to `max` bytes; past it the copy is told the body is
/// too large (and is not sent).
///
/// A body of declared length is complete when that many bytes have passed: hyper stops
/// polling a body once its `Content-Length` is written, so the end may never be seen.
pub struct RequestTee {
    kept: Vec<Bytes>,
    len: u64,
    max: u64,
    declared: Option<u64>,
    tx: Option<oneshot::Sender<Result<Bytes, ()>>>,
}

impl RequestTee {
    pub fn new(
        max: u64,
        declared: Option<u64>,
        tx: oneshot::Sender<Result<Bytes, ()>>,
    ) -> RequestTee {
        RequestTee {
            kept: Vec::new(),
            len: 0,
            max,
            declared,
            tx: Some(tx),
        }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(Bytes::from(std::mem::take(&mut self.kept).concat())));
        }
    }
}

impl BodyFilter for RequestTee {
    fn name(&self) -> &'static str {
        "mirror_request_tee"
    }

    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
        if self.tx.is_some() {
            self.len += chunk.len() as u64;
            if self.len > self.max {
                self.kept = Vec::new();
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(Err(()));
                }
            } else {
                self.kept.push(chunk.clone());
                if Some(self.len) == self.declared {
                    self.finish();
                }
            }
        }
        out.push(chunk);
        Ok(())
    }

    fn end(&mut self, _: Option<&mut HeaderMap>, _: &mut Emit) -> Result<(), FilterError> {
        self.finish();
        Ok(())
    }
}

/// Hashes the primary's response body (keeping it up to the comparison's cap) as it streams;
/// complete at its end or, with a declared length, when that many bytes have passed.
pub struct ResponseTee {
    hasher: Option<BodyHasher>,
    len: u64,
    declared: Option<u64>,
    tx: Option<oneshot::Sender<SeenBody>>,
}

impl ResponseTee {
    pub fn new(cap: usize, declared: Option<u64>, tx: oneshot::Sender<SeenBody>) -> ResponseTee {
        ResponseTee {
            hasher: Some(BodyHasher::new(cap)),
            len: 0,
            declared,
            tx: Some(tx),
        }
    }

    fn finish(&mut self) {
        if let (Some(h), Some(tx)) = (self.hasher.take(), self.tx.take()) {
            let _ = tx.send(h.finish());
        }
    }
}

impl BodyFilter for ResponseTee {
    fn name(&self) -> &'static str {
        "shadow_compare_tee"
    }

    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
        if let Some(h) = &mut self.hasher {
            h.push(&chunk);
            self.len += chunk.len() as u64;
            if Some(self.len) == self.declared {
                self.finish();
            }
        }
        out.push(chunk);
        Ok(())
    }

    fn end(&mut self, _: Option<&mut HeaderMap>, _: &mut Emit) -> Result<(), FilterError> {
        self.finish();
        Ok(())
    }
}
