//! Reading a request body whole, when the gateway must have all of it before forwarding (a
//! chunked body on a route with a small limit, a body kept to be replayed on a retry): the one
//! place that applies the route's size limit and time limit to that wait, with one set of
//! messages.

use crate::reject::Reject;
use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::Duration;
use tokio::time::Instant;

/// Reads `body` to its end: at most `limit` bytes (413 above it) by `deadline` (408 after
/// it). `None` for an empty body.
pub async fn read_whole<B>(body: B, limit: u64, deadline: Instant) -> Result<Option<Bytes>, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let waited = deadline.saturating_duration_since(Instant::now());
    let read = tokio::time::timeout_at(
        deadline,
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect(),
    )
    .await;
    match read {
        Err(_) => Err(not_received(waited)),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Reject::PayloadTooLarge(limit)),
        Ok(Err(e)) => Err(match e.downcast_ref::<super::RequestBodyError>() {
            Some(body_error) => body_error.to_reject(),
            None => Reject::ClientBody(format!("client request body failed: {e}")),
        }),
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            Ok((!bytes.is_empty()).then_some(bytes))
        }
    }
}

fn not_received(waited: Duration) -> Reject {
    Reject::Status(
        http::StatusCode::REQUEST_TIMEOUT,
        // Rounded up: the deadline was set a few microseconds before the wait began.
        format!(
            "request body not received within {} ms",
            waited.as_micros().div_ceil(1000)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn limits_and_deadlines() {
        let soon = || Instant::now() + Duration::from_secs(5);
        let got = read_whole(Full::new(Bytes::from_static(b"hello")), 5, soon()).await;
        assert_eq!(got.unwrap().as_deref(), Some(&b"hello"[..]));
        let got = read_whole(Full::new(Bytes::new()), 5, soon()).await;
        assert_eq!(got.unwrap(), None);
        let got = read_whole(Full::new(Bytes::from_static(b"hello!")), 5, soon()).await;
        assert!(matches!(got, Err(Reject::PayloadTooLarge(5))));

        // A body that never ends: 408 at the deadline.
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::io::Error>,
        >());
        let got = read_whole(never, 5, Instant::now() + Duration::from_millis(20)).await;
        match got {
            Err(Reject::Status(s, m)) => {
                assert_eq!(s, http::StatusCode::REQUEST_TIMEOUT);
                assert!(m.starts_with("request body not received within"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
