//! W3C Trace Context through the gateway: what the upstream receives and what the client sees.

mod support;

use support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config(up: &Upstream, trace_context: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\ndefaults: {{ auth: none }}\nobservability:\n  trace_context: {trace_context}\nupstreams:\n  - {{ name: up, targets: [{{ address: \"{}\" }}] }}\nroutes:\n  - name: all\n    match: {{ path: {{ prefix: / }} }}\n    upstream: up\n",
        up.addr
    )
}

/// (version, trace id, parent id, flags) of the traceparent the upstream received.
fn upstream_traceparent(up: &Upstream) -> (String, String, String, String) {
    let seen = up.last();
    let tp = seen.headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (
        parts[0].into(),
        parts[1].into(),
        parts[2].into(),
        parts[3].into(),
    )
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_a_new_parent_id_per_hop() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "{ response_header: x-trace-id }")).await;
    let c = client();
    let mut parents = Vec::new();
    for _ in 0..2 {
        let r = get(
            &c,
            &gw.url("/x"),
            &[
                ("traceparent", VALID),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-trace-id"], TRACE);
        let (version, trace, parent, flags) = upstream_traceparent(&up);
        assert_eq!(
            (version.as_str(), trace.as_str(), flags.as_str()),
            ("00", TRACE, "01")
        );
        assert_ne!(
            parent, "00f067aa0ba902b7",
            "the gateway's own span must be the parent"
        );
        assert_eq!(parent.len(), 16);
        assert_eq!(
            up.last().headers["tracestate"],
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        parents.push(parent);
    }
    assert_ne!(parents[0], parents[1], "each request is a new span");
}

#[tokio::test]
async fn invalid_or_absent_traceparent_starts_a_new_trace_and_drops_tracestate() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "{ response_header: x-trace-id }")).await;
    let c = client();
    let mut seen_traces = std::collections::HashSet::new();
    for bad in [
        None,
        Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01"),
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
    ] {
        let mut headers = vec![("tracestate", "congo=t61rcWkgMzE")];
        if let Some(b) = bad {
            headers.push(("traceparent", b));
        }
        let r = get(&c, &gw.url("/x"), &headers).await;
        assert_eq!(r.status, 200);
        let (version, trace, parent, _) = upstream_traceparent(&up);
        assert_eq!(version, "00");
        assert_ne!(trace, TRACE, "{bad:?} was continued");
        assert_ne!(trace, "0".repeat(32));
        assert_ne!(parent, "0".repeat(16));
        assert_eq!(r.headers["x-trace-id"].to_str().unwrap(), trace);
        assert!(
            !up.last().headers.contains_key("tracestate"),
            "{bad:?}: tracestate kept"
        );
        assert!(seen_traces.insert(trace), "trace ids must be new each time");
    }
}

#[tokio::test]
async fn tracestate_over_the_member_limit_is_dropped_and_future_versions_are_read() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "{}")).await;
    let c = client();
    let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let r = get(
        &c,
        &gw.url("/x"),
        &[("traceparent", VALID), ("tracestate", &members.join(","))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!up.last().headers.contains_key("tracestate"));
    assert!(
        !r.headers.contains_key("x-trace-id"),
        "no response header unless configured"
    );

    let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
    get(&c, &gw.url("/x"), &[("traceparent", future)]).await;
    let (version, trace, _, _) = upstream_traceparent(&up);
    assert_eq!((version.as_str(), trace.as_str()), ("00", TRACE));
}

#[tokio::test]
async fn disabled_trace_context_passes_headers_through_untouched() {
    let up = Upstream::start("up").await;
    let gw = TestGateway::start(&config(&up, "{ enabled: false }")).await;
    get(
        &client(),
        &gw.url("/x"),
        &[("traceparent", VALID), ("tracestate", "a=1")],
    )
    .await;
    assert_eq!(up.last().headers["traceparent"], VALID);
    assert_eq!(up.last().headers["tracestate"], "a=1");
    let r = get(&client(), &gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(!up.last().headers.contains_key("traceparent"));
}
