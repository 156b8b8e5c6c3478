//! The body types that cross the gateway. Both stream: nothing is buffered whole except a
//! chunked request body on a route whose size limit is small enough to hold (see `pipeline`),
//! or what a body filter holds within its declared bound (see `filter`).

pub mod filter;
pub mod read;

use bytes::Bytes;
use filter::{BoxError, FilterError, Filtered};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body is larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("client request body failed: {0}")]
    Client(#[from] hyper::Error),
    /// A request-body filter stopped the body.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

impl RequestBodyError {
    /// What the client is told when its own body was the problem.
    pub fn to_reject(&self) -> crate::reject::Reject {
        use crate::reject::Reject;
        match self {
            RequestBodyError::TooLarge(n) => Reject::PayloadTooLarge(*n),
            RequestBodyError::Client(e) => {
                Reject::ClientBody(format!("client request body failed: {e}"))
            }
            RequestBodyError::Filter(FilterError::Refused { status, message }) => {
                Reject::Status(*status, message.clone())
            }
            RequestBodyError::Filter(FilterError::Unauthorized(f)) => {
                Reject::Unauthorized(f.clone())
            }
            RequestBodyError::Filter(FilterError::Overflow { bound, .. }) => {
                Reject::PayloadTooLarge(*bound as u64)
            }
        }
    }

    /// Back from the boxed error a filtered body reports.
    fn from_boxed(e: BoxError) -> RequestBodyError {
        match e.downcast::<RequestBodyError>() {
            Ok(e) => *e,
            Err(e) => match e.downcast::<FilterError>() {
                Ok(f) => RequestBodyError::Filter(*f),
                Err(e) => RequestBodyError::Filter(FilterError::Refused {
                    status: http::StatusCode::BAD_REQUEST,
                    message: format!("request body failed: {e}"),
                }),
            },
        }
    }
}

/// The request body sent upstream.
pub enum UpstreamBody {
    /// Already read in full (or empty).
    Full(Option<Bytes>),
    /// Streamed from the client, cut off with `TooLarge` once it passes `limit` bytes.
    Streaming {
        inner: Incoming,
        limit: u64,
        seen: u64,
        /// Mirrors `seen` for the access log, when one is written.
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    },
    /// Seen through the route's request-body filters.
    Filtered(Box<Filtered<UpstreamBody>>),
}

impl UpstreamBody {
    pub fn empty() -> Self {
        UpstreamBody::Full(None)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Streaming {
                inner,
                limit,
                seen,
                counter,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        *seen += d.len() as u64;
                        if let Some(c) = counter {
                            c.store(*seen, std::sync::atomic::Ordering::Relaxed);
                        }
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge(*limit))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            UpstreamBody::Filtered(f) => match Pin::new(&mut **f).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(RequestBodyError::from_boxed(e))))
                }
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(d) => d.is_none(),
            UpstreamBody::Streaming { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Filtered(f) => f.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            UpstreamBody::Full(None) => SizeHint::with_exact(0),
            UpstreamBody::Streaming { inner, .. } => inner.size_hint(),
            UpstreamBody::Filtered(f) => f.size_hint(),
        }
    }
}

/// The response body sent to the client.
pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(crate::upstream::pool::PooledBody),
    /// Seen through the route's response-body filters.
    Filtered(Box<Filtered<ResponseBody>>),
    /// Read from a cache fill (shared with the other requests coalesced on it).
    Fill(crate::cache::fill::FillReader),
}

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            ResponseBody::Filtered(f) => Pin::new(&mut **f).poll_frame(cx),
            ResponseBody::Fill(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(d) => d.is_none(),
            ResponseBody::Upstream(inner) => inner.is_end_stream(),
            ResponseBody::Filtered(f) => f.is_end_stream(),
            ResponseBody::Fill(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream(inner) => inner.size_hint(),
            ResponseBody::Filtered(f) => f.size_hint(),
            ResponseBody::Fill(r) => r.size_hint(),
        }
    }
}

/// The body the server sends: the response plus what is recorded when it ends or is abandoned
/// (metrics, access-log line).
pub struct ServedBody {
    inner: ResponseBody,
    done: Option<crate::observe::Completion>,
    bytes: u64,
}

impl ServedBody {
    pub fn new(inner: ResponseBody, done: Option<crate::observe::Completion>) -> ServedBody {
        ServedBody {
            inner,
            done,
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done.finish(self.bytes);
        }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ServedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
