//! Body filters: a place to see a request or response body as it streams. A route's filters
//! form an ordered chain; each sees the data chunks in stream order and decides what goes on
//! to the next: the same chunk (pass, or tee a copy), other bytes (transform), or nothing yet
//! (hold). At the end of the body each may push what it still holds and change the trailers.
//!
//! Nothing is buffered unless a filter holds it, and a filter holds at most the bound it
//! declares (`max_held`): past it, the chain asks the filter to let go (`overflow`) — give back
//! what it holds and pass from then on, or fail the body. Memory per filter is therefore its
//! bound plus one chunk.
//!
//! When any filter may change the body's length, the chain's body reports no exact size and
//! the header phase drops `Content-Length` (the transport then frames the body itself:
//! chunked on HTTP/1.1, DATA frames on HTTP/2), so a changed body is never sent with a stale
//! length. Trailers pass through after the last data chunk.
//!
//! The order of a route's response filters is defined in one place, the pipeline's
//! `response_body_filters`: JSON field filter → compression → cache fill (tee) → shadow
//! comparison (tee).

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a filter stopped a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter refuses the body: what the client is told. On a request body read before
    /// forwarding this is the response; once streaming, the exchange is aborted.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    /// The body does not match what authenticated the request (a signed `Content-Digest`): 401.
    #[error("unauthorized: {}", .0.description)]
    Unauthorized(crate::auth::Failure),
    /// The filter held more than its bound and would not let go.
    #[error("body filter `{filter}` would hold {held} bytes, above its bound of {bound}")]
    Overflow {
        filter: &'static str,
        held: usize,
        bound: usize,
    },
}

/// Where a filter puts what goes on to the next filter.
#[derive(Debug, Default)]
pub struct Emit {
    chunks: Vec<Bytes>,
}

impl Emit {
    /// Hands `chunk` on (empty chunks are dropped: they carry nothing).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
    }

    /// What was pushed, in order (for a filter's own tests).
    pub fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }
}

/// One filter's state for one body.
pub trait BodyFilter: Send {
    /// For errors and metrics.
    fn name(&self) -> &'static str;

    /// One data chunk, in stream order.
    fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError>;

    /// The end of the body, with its trailers if it has any (the filter may change them):
    /// push whatever is still held.
    fn end(
        &mut self,
        _trailers: Option<&mut HeaderMap>,
        _out: &mut Emit,
    ) -> Result<(), FilterError> {
        Ok(())
    }

    /// Bytes held back right now.
    fn held(&self) -> usize {
        0
    }

    /// The most this filter may hold back at once.
    fn max_held(&self) -> usize {
        0
    }

    /// Called when `held` passed `max_held`: push (give back) what is held and pass from now
    /// on, or fail. The default fails.
    fn overflow(&mut self, _out: &mut Emit) -> Result<(), FilterError> {
        Err(FilterError::Overflow {
            filter: self.name(),
            held: self.held(),
            bound: self.max_held(),
        })
    }

    /// Whether what comes out may differ in length from what went in.
    fn changes_length(&self) -> bool {
        false
    }
}

/// A route's filters for one body, in order.
#[derive(Default)]
pub struct FilterChain {
    filters: Vec<Box<dyn BodyFilter>>,
}

impl FilterChain {
    pub fn new() -> FilterChain {
        FilterChain::default()
    }

    pub fn push(&mut self, filter: Box<dyn BodyFilter>) {
        self.filters.push(filter);
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn changes_length(&self) -> bool {
        self.filters.iter().any(|f| f.changes_length())
    }

    /// Runs one chunk through every filter; what comes out of the last is appended to `out`.
    pub fn data(&mut self, chunk: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), FilterError> {
        self.run(vec![chunk], None, out)
    }

    /// Ends the body: each filter in turn gets what the one before it pushed, then its end.
    pub fn end(
        &mut self,
        trailers: Option<&mut HeaderMap>,
        out: &mut VecDeque<Bytes>,
    ) -> Result<(), FilterError> {
        self.run(Vec::new(), Some(trailers), out)
    }

    fn run(
        &mut self,
        mut batch: Vec<Bytes>,
        mut end: Option<Option<&mut HeaderMap>>,
        out: &mut VecDeque<Bytes>,
    ) -> Result<(), FilterError> {
        for f in &mut self.filters {
            let mut emit = Emit {
                chunks: Vec::with_capacity(batch.len()),
            };
            for chunk in batch.drain(..) {
                f.data(chunk, &mut emit)?;
                if f.held() > f.max_held() {
                    f.overflow(&mut emit)?;
                    if f.held() > f.max_held() {
                        return Err(FilterError::Overflow {
                            filter: f.name(),
                            held: f.held(),
                            bound: f.max_held(),
                        });
                    }
                }
            }
            if let Some(trailers) = end.as_mut() {
                f.end(trailers.as_deref_mut(), &mut emit)?;
            }
            batch = emit.chunks;
        }
        out.extend(batch);
        Ok(())
    }
}

/// A body seen through a filter chain.
pub struct Filtered<B> {
    inner: B,
    chain: FilterChain,
    ready: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The inner body has ended (and the chain with it).
    finished: bool,
}

impl<B> Filtered<B> {
    pub fn new(inner: B, chain: FilterChain) -> Filtered<B> {
        Filtered {
            inner,
            chain,
            ready: VecDeque::new(),
            trailers: None,
            finished: false,
        }
    }
}

impl<B> Body for Filtered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if this.finished {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    this.finished = true;
                    if let Err(e) = this.chain.end(None, &mut this.ready) {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    continue;
                }
            };
            let result = match frame.into_data() {
                Ok(data) => this.chain.data(data, &mut this.ready),
                Err(frame) => match frame.into_trailers() {
                    Ok(mut trailers) => {
                        this.finished = true;
                        let r = this.chain.end(Some(&mut trailers), &mut this.ready);
                        this.trailers = Some(trailers);
                        r
                    }
                    // Neither data nor trailers: nothing for a filter to see.
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = result {
                return Poll::Ready(Some(Err(Box::new(e))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.ready.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.chain.changes_length() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

    type Streamed = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    /// A streamed body: `n` chunks of `size` bytes (byte values cycling), then `trailers`.
    fn streamed(n: usize, size: usize, trailers: Option<HeaderMap>) -> Streamed {
        let mut frames: Frames = (0..n)
            .map(|i| {
                let chunk: Vec<u8> = (0..size)
                    .map(|j| b'a' + ((i * size + j) % 26) as u8)
                    .collect();
                Ok(Frame::data(Bytes::from(chunk)))
            })
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn expected(n: usize, size: usize) -> Vec<u8> {
        (0..n * size).map(|k| b'a' + (k % 26) as u8).collect()
    }

    /// Passes every chunk on and keeps a copy (what a cache fill or shadow compare does).
    struct Tee {
        seen: Arc<Mutex<Vec<u8>>>,
        chunks: Arc<Mutex<usize>>,
    }

    impl BodyFilter for Tee {
        fn name(&self) -> &'static str {
            "tee"
        }
        fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
            self.seen.lock().unwrap().extend_from_slice(&chunk);
            *self.chunks.lock().unwrap() += 1;
            out.push(chunk);
            Ok(())
        }
    }

    /// Doubles every byte (a transform that changes the length) and adds a trailer.
    struct Doubler;

    impl BodyFilter for Doubler {
        fn name(&self) -> &'static str {
            "doubler"
        }
        fn data(&mut self, chunk: Bytes, out: &mut Emit) -> Result<(), FilterError> {
            out.push(
                chunk
                    .iter()
                    .flat_map(|b| [*b, *b])
                    .collect::<Vec<u8>>()
                    .into(),
            );
            Ok(())
        }
        fn end(
            &mut self,
            trailers: Option<&mut HeaderMap>,
            _out: &mut Emit,
        ) -> Result<(), FilterError> {
            if let Some(t) = trailers {
                t.insert("x-doubled", "yes".parse().unwrap());
            }
            Ok(())
        }
        fn changes_length(&self) -> bool {
            true
        }
    }

    /// Holds the whole body (up to `bound`) and emits it upper-cased at the end: the shape of
    /// a JSON field filter. `give_up` chooses what happens past the bound.
    struct HoldAll {
        held: Vec<u8>,
        bound: usize,
        give_up: bool,
        passing: bool,
    }

    impl BodyFilter for HoldAll {
        fn name(&self) -> &'static str {
            "hold-all"
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
            out.push(Bytes::from(self.held.to_ascii_uppercase()));
            self.held.clear();
            Ok(())
        }
        fn held(&self) -> usize {
            self.held.len()
        }
        fn max_held(&self) -> usize {
            self.bound
        }
        fn overflow(&mut self, out: &mut Emit) -> Result<(), FilterError> {
            if !self.give_up {
                return Err(FilterError::Refused {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: "too large to filter".into(),
                });
            }
            // Give back what was held, unchanged, and pass from now on.
            out.push(Bytes::from(std::mem::take(&mut self.held)));
            self.passing = true;
            Ok(())
        }
        fn changes_length(&self) -> bool {
            false
        }
    }

    fn hold_all(bound: usize, give_up: bool) -> Box<HoldAll> {
        Box::new(HoldAll {
            held: vec![],
            bound,
            give_up,
            passing: false,
        })
    }

    async fn collect<B>(body: B) -> (Vec<u8>, Option<HeaderMap>, usize)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let mut body = body;
        let mut data = Vec::new();
        let mut trailers = None;
        let mut frames = 0;
        while let Some(f) = body.frame().await {
            let f = f.unwrap();
            match f.into_data() {
                Ok(d) => {
                    frames += 1;
                    data.extend_from_slice(&d);
                }
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers, frames)
    }

    #[tokio::test]
    async fn many_small_chunks_pass_and_tee_unchanged() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let chunks = Arc::new(Mutex::new(0));
        let mut chain = FilterChain::new();
        chain.push(Box::new(Tee {
            seen: Arc::clone(&seen),
            chunks: Arc::clone(&chunks),
        }));
        let body = Filtered::new(streamed(5000, 3, None), chain);
        assert_eq!(
            body.size_hint().exact(),
            None,
            "a stream of unknown length stays unknown"
        );
        let (data, trailers, frames) = collect(body).await;
        assert_eq!(data, expected(5000, 3));
        assert_eq!(frames, 5000, "chunks are passed as they come, not gathered");
        assert!(trailers.is_none());
        assert_eq!(
            *seen.lock().unwrap(),
            expected(5000, 3),
            "the tee saw every byte"
        );
        assert_eq!(*chunks.lock().unwrap(), 5000);
    }

    #[tokio::test]
    async fn trailers_pass_through_and_filters_may_change_them() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let mut chain = FilterChain::new();
        chain.push(Box::new(Doubler));
        let body = Filtered::new(streamed(10, 4, Some(t)), chain);
        let (data, trailers, _) = collect(body).await;
        let want: Vec<u8> = expected(10, 4).iter().flat_map(|b| [*b, *b]).collect();
        assert_eq!(data, want);
        let trailers = trailers.expect("trailers after the data");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-doubled"], "yes");
    }

    #[tokio::test]
    async fn a_filter_that_changes_the_length_hides_the_exact_size() {
        let plain = http_body_util::Full::new(Bytes::from_static(b"abc"));
        let mut chain = FilterChain::new();
        chain.push(Box::new(Tee {
            seen: Arc::default(),
            chunks: Arc::default(),
        }));
        let kept = Filtered::new(plain.clone(), chain);
        assert_eq!(kept.size_hint().exact(), Some(3), "a tee keeps the length");
        let mut chain = FilterChain::new();
        chain.push(Box::new(Doubler));
        let changed = Filtered::new(plain, chain);
        assert_eq!(changed.size_hint().exact(), None);
        assert_eq!(collect(changed).await.0, b"aabbcc");
    }

    #[tokio::test]
    async fn filters_run_in_order_and_each_sees_the_one_before() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut chain = FilterChain::new();
        chain.push(hold_all(1000, false));
        chain.push(Box::new(Doubler));
        chain.push(Box::new(Tee {
            seen: Arc::clone(&seen),
            chunks: Arc::default(),
        }));
        let (data, _, frames) = collect(Filtered::new(streamed(50, 2, None), chain)).await;
        let want: Vec<u8> = expected(50, 2)
            .to_ascii_uppercase()
            .iter()
            .flat_map(|b| [*b, *b])
            .collect();
        assert_eq!(data, want);
        assert_eq!(
            frames, 1,
            "the holding filter let everything go at the end, at once"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            want,
            "the last filter sees the transformed bytes"
        );
    }

    #[tokio::test]
    async fn a_filter_past_its_bound_fails_the_body_or_passes_it_on() {
        // Within the bound: held and transformed.
        let mut chain = FilterChain::new();
        chain.push(hold_all(100, false));
        let (data, _, _) = collect(Filtered::new(streamed(10, 10, None), chain)).await;
        assert_eq!(data, expected(10, 10).to_ascii_uppercase());

        // Past it, failing: the body ends with the filter's error after what was sent.
        let mut chain = FilterChain::new();
        chain.push(hold_all(100, false));
        let mut body = Filtered::new(streamed(20, 10, None), chain);
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the body must fail past the bound"),
            }
        };
        let err = err.downcast::<FilterError>().unwrap();
        assert_eq!(
            *err,
            FilterError::Refused {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: "too large to filter".into()
            }
        );

        // Past it, giving up: what was held comes back unchanged and the rest passes.
        let mut chain = FilterChain::new();
        chain.push(hold_all(100, true));
        let (data, _, _) = collect(Filtered::new(streamed(20, 10, None), chain)).await;
        assert_eq!(data, expected(20, 10), "nothing lost, nothing transformed");
    }

    #[tokio::test]
    async fn a_filter_that_keeps_holding_past_its_bound_is_stopped() {
        /// Claims a bound of 4 but never lets go.
        struct Greedy(Vec<u8>);
        impl BodyFilter for Greedy {
            fn name(&self) -> &'static str {
                "greedy"
            }
            fn data(&mut self, chunk: Bytes, _out: &mut Emit) -> Result<(), FilterError> {
                self.0.extend_from_slice(&chunk);
                Ok(())
            }
            fn held(&self) -> usize {
                self.0.len()
            }
            fn max_held(&self) -> usize {
                4
            }
            fn overflow(&mut self, _out: &mut Emit) -> Result<(), FilterError> {
                Ok(())
            }
        }
        let mut chain = FilterChain::new();
        chain.push(Box::new(Greedy(vec![])));
        let mut out = VecDeque::new();
        chain.data(Bytes::from_static(b"abc"), &mut out).unwrap();
        let e = chain.data(Bytes::from_static(b"de"), &mut out).unwrap_err();
        assert_eq!(
            e,
            FilterError::Overflow {
                filter: "greedy",
                held: 5,
                bound: 4
            }
        );
    }

    /// The same chain behind a real HTTP/1.1 server, read off the socket: a body whose length
    /// changed goes out chunked (no stale Content-Length), one whose length did not keeps it,
    /// and trailers arrive after the last chunk.
    #[tokio::test]
    async fn filtered_bodies_on_the_wire() {
        use hyper::service::service_fn;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let change = req.uri().path() == "/changed";
                        let mut t = HeaderMap::new();
                        t.insert("x-checksum", "42".parse().unwrap());
                        let mut chain = FilterChain::new();
                        if change {
                            chain.push(Box::new(Doubler));
                        } else {
                            chain.push(Box::new(Tee {
                                seen: Arc::default(),
                                chunks: Arc::default(),
                            }));
                        }
                        let length = 100 * 7;
                        let inner = streamed(100, 7, Some(t));
                        let body = Filtered::new(inner, chain);
                        let mut resp = http::Response::new(body);
                        // HTTP/1.1 sends only the trailers the head announced.
                        resp.headers_mut()
                            .insert(http::header::TRAILER, "x-checksum".parse().unwrap());
                        // What the pipeline's header phase does: the length goes with a change.
                        if !change {
                            resp.headers_mut()
                                .insert(http::header::CONTENT_LENGTH, length.into());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        async fn fetch(addr: std::net::SocketAddr, path: &str) -> String {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8(buf).unwrap()
        }
        let changed = fetch(addr, "/changed").await;
        let (head, body) = changed.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        // Decode the chunked body.
        let mut rest = body;
        let mut data = Vec::new();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                assert!(
                    after.to_ascii_lowercase().starts_with("x-checksum: 42\r\n"),
                    "trailers: {after:?}"
                );
                break;
            }
            data.extend_from_slice(&after.as_bytes()[..n]);
            rest = &after[n + 2..];
        }
        let want: Vec<u8> = expected(100, 7).iter().flat_map(|b| [*b, *b]).collect();
        assert_eq!(data, want);

        let kept = fetch(addr, "/kept").await;
        let (head, body) = kept.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase().contains("content-length: 700"),
            "{head}"
        );
        assert_eq!(body.as_bytes(), &expected(100, 7)[..]);
    }
}
