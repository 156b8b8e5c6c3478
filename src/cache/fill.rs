//! Request coalescing. The first miss for a key leads a fill; misses for the same key that
//! arrive meanwhile wait on it instead of going upstream. Waiters are woken when the response
//! head arrives and then stream the body as it fills — every reader, the leader included,
//! reads the same chunks from the fill, so the leader's client going away does not stop it.
//! The upstream body is driven by a task of its own (`pump`), which stores the entry when the
//! body is complete.
//!
//! A fill that ends without a storable response tells its waiters to go upstream themselves
//! (`Outcome::GoUpstream`); a fill whose leader is dropped before the head says the same.

use crate::body::filter::BoxError;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::watch;

/// What waiters learn when the head is decided.
#[derive(Clone)]
pub enum Outcome {
    Pending,
    /// A storable response is filling: stream it.
    Streaming(Arc<FillHead>),
    /// Not storable, failed, or abandoned: each waiter goes upstream on its own.
    GoUpstream,
}

/// The response head being filled, and what a waiter must match to use it.
pub struct FillHead {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub vary: super::key::VaryValues,
    /// The body's length when the upstream declared it.
    pub length: Option<u64>,
}

pub struct Fill {
    outcome: watch::Sender<Outcome>,
    body: Mutex<BodyState>,
}

#[derive(Default)]
struct BodyState {
    chunks: Vec<Bytes>,
    bytes: usize,
    ended: bool,
    failed: bool,
    wakers: Vec<Waker>,
}

impl Fill {
    pub fn new() -> Arc<Fill> {
        Arc::new(Fill {
            outcome: watch::Sender::new(Outcome::Pending),
            body: Mutex::new(BodyState::default()),
        })
    }

    fn body(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (at most `limit`) for the head; `GoUpstream` when it does not come in time.
    pub async fn wait(&self, limit: Duration) -> Outcome {
        let mut rx = self.outcome.subscribe();
        let decided =
            tokio::time::timeout(limit, rx.wait_for(|o| !matches!(o, Outcome::Pending))).await;
        match decided {
            Ok(Ok(o)) => o.clone(),
            _ => Outcome::GoUpstream,
        }
    }

    pub fn decide(&self, outcome: Outcome) {
        self.outcome.send_replace(outcome);
    }

    /// Ends the wait of a fill that never got a head (its leader failed or went away).
    pub fn abandon(&self) {
        self.outcome.send_if_modified(|o| {
            if matches!(o, Outcome::Pending) {
                *o = Outcome::GoUpstream;
                true
            } else {
                false
            }
        });
    }

    /// Adds a chunk; returns the bytes held so far.
    pub fn push(&self, chunk: Bytes) -> usize {
        let mut b = self.body();
        b.bytes += chunk.len();
        b.chunks.push(chunk);
        for w in b.wakers.drain(..) {
            w.wake();
        }
        b.bytes
    }

    /// The body ended (`failed`: cut off); returns the whole body when it ended well.
    pub fn end(&self, failed: bool) -> Option<Bytes> {
        let mut b = self.body();
        b.ended = true;
        b.failed = failed;
        for w in b.wakers.drain(..) {
            w.wake();
        }
        if failed {
            return None;
        }
        let mut whole = bytes::BytesMut::with_capacity(b.bytes);
        for c in &b.chunks {
            whole.extend_from_slice(c);
        }
        Some(whole.freeze())
    }

    /// A reader of the body from its first byte.
    pub fn reader(self: &Arc<Self>, length: Option<u64>, head_only: bool) -> FillReader {
        FillReader {
            fill: Arc::clone(self),
            next: 0,
            length,
            head_only,
        }
    }
}

/// The body of one response served from a fill.
pub struct FillReader {
    fill: Arc<Fill>,
    next: usize,
    length: Option<u64>,
    head_only: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream response being cached was cut off")]
pub struct FillFailed;

impl Body for FillReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.head_only {
            return Poll::Ready(None);
        }
        let fill = Arc::clone(&self.fill);
        let mut b = fill.body();
        if let Some(chunk) = b.chunks.get(self.next) {
            let chunk = chunk.clone();
            drop(b);
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if b.ended {
            return Poll::Ready(if b.failed {
                Some(Err(Box::new(FillFailed)))
            } else {
                None
            });
        }
        if !b.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            b.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.head_only || self.length == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.head_only, self.length) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(n)) => SizeHint::with_exact(n),
            (false, None) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_reader_gets_the_whole_body_as_it_fills() {
        let fill = Fill::new();
        let r1 = fill.reader(None, false);
        let f = Arc::clone(&fill);
        let late = tokio::spawn(async move {
            let r = f.reader(None, false);
            r.collect().await.unwrap().to_bytes()
        });
        fill.push(Bytes::from_static(b"ab"));
        tokio::task::yield_now().await;
        fill.push(Bytes::from_static(b"cd"));
        assert_eq!(fill.end(false).unwrap(), "abcd");
        assert_eq!(r1.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(late.await.unwrap(), "abcd");
    }

    #[tokio::test]
    async fn waiters_are_told_to_go_upstream_when_the_leader_goes_away_or_is_late() {
        let fill = Fill::new();
        assert!(matches!(
            fill.wait(Duration::from_millis(20)).await,
            Outcome::GoUpstream
        ));
        let f = Arc::clone(&fill);
        let waiter = tokio::spawn(async move { f.wait(Duration::from_secs(5)).await });
        fill.abandon();
        assert!(matches!(waiter.await.unwrap(), Outcome::GoUpstream));
    }

    #[tokio::test]
    async fn a_cut_off_fill_fails_its_readers() {
        let fill = Fill::new();
        fill.push(Bytes::from_static(b"ab"));
        assert!(fill.end(true).is_none());
        assert!(fill.reader(None, false).collect().await.is_err());
    }
}
