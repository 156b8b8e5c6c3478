//! A programmable HTTP/1.1 service: the test gives the answer as a function of the request, so
//! one harness serves the shadow tests' primaries and candidates (JSON with random fields, a
//! share of changed answers, slow answers) and the rollout tests' upstreams (healthy, then 500).
//! Every request is recorded (method, path, headers, body).

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One request as the service saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the service answers.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Waited before the head is sent.
    pub delay: Duration,
}

impl Answer {
    pub fn json(status: u16, value: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(value.to_string()),
            delay: Duration::ZERO,
        }
    }
}

pub type Handler = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

pub struct Service {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    pub async fn start(handler: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Service {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let (rx, cx) = (received.clone(), count.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, rx, cx) = (handler.clone(), rx.clone(), cx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, rx, cx) = (h.clone(), rx.clone(), cx.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let got = Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let answer = h(&got);
                            rx.lock().unwrap().push(got);
                            cx.fetch_add(1, Ordering::SeqCst);
                            if !answer.delay.is_zero() {
                                tokio::time::sleep(answer.delay).await;
                            }
                            let mut resp = Response::builder().status(answer.status);
                            for (k, v) in &answer.headers {
                                resp = resp.header(*k, v);
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(answer.body)).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Service {
            addr,
            received,
            count,
            task,
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}
