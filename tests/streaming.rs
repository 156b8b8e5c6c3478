//! Bodies stream: 1 GiB up and 1 GiB down through the gateway process while its resident
//! memory stays flat.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;
use support::*;

const GIB: u64 = 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_flat_gateway_memory() {
    let up = Upstream::start("up").await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"{{LISTEN}}\" }}]\nadmin: {{ address: \"{{ADMIN}}\" }}\ndefaults: {{ auth: none, timeout_ms: 60000 }}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n    request: {{ max_body_bytes: 2147483648 }}\n",
        up.addr
    );
    let gw = GatewayProcess::spawn(&yaml, 2).await;
    // Warm up so the baseline includes pools and buffers that exist in steady state.
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{}/download/1048576", gw.addr), &[])
            .await
            .status,
        200
    );
    let (baseline, _) = gw.rss_kb();

    // Download 1 GiB, counting bytes without keeping them.
    let resp = c
        .request(
            http::Request::get(format!("http://{}/download/{GIB}", gw.addr))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("download stalled")
    {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    // Upload 1 GiB as a chunked stream generated on the fly.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = GIB / chunk.len() as u64;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let upload_client: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = upload_client
        .request(
            http::Request::post(format!("http://{}/upload", gw.addr))
                .body(http_body_util::StreamBody::new(stream))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["body_bytes"].as_u64(), Some(GIB));

    let (now, peak) = gw.rss_kb();
    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!("gateway RSS: baseline {baseline} kB, now {now} kB, peak {peak} kB, growth {growth_mib} MiB");
    assert!(
        growth_mib < 64,
        "gateway memory grew by {growth_mib} MiB while streaming"
    );
}
