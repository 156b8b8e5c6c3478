//! The `portcullis config` CLI against a store, as the control-plane and dashboard tests use it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Runs `portcullis config --store STORE ARGS…`; returns (exit code, stdout + stderr).
pub fn cli(store: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "--store", store])
        .args(args)
        // Documents use ${GW_LISTEN} / ${GW_ADMIN}: push validates with the pusher's values.
        .env("GW_LISTEN", "127.0.0.1:0")
        .env("GW_ADMIN", "127.0.0.1:0")
        .env("USER", "tester")
        .output()
        .expect("run portcullis config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

pub fn push(store: &str, dir: &Path, name: &str, text: &str) -> i64 {
    let file = write(dir, name, text);
    let (code, out) = cli(store, &["push", &file, "-m", name]);
    assert_eq!(code, 0, "{out}");
    out.split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .parse()
        .unwrap()
}

/// A store document (listener and admin from `${GW_LISTEN}` / `${GW_ADMIN}`) whose one route answers `body` directly, or proxies to `upstream`.
pub fn store_document(body: &str, upstream: Option<SocketAddr>) -> String {
    let (upstreams, action) = match upstream {
        Some(a) => (
            format!("upstreams:\n  - {{ name: up, targets: [{{ address: \"{a}\" }}] }}\n"),
            "upstream: up".to_string(),
        ),
        None => (
            String::new(),
            format!("direct_response: {{ status: 200, body: \"{body}\" }}"),
        ),
    };
    format!(
        r#"listeners: [{{ name: public, address: "${{GW_LISTEN}}" }}]
admin: {{ address: "${{GW_ADMIN}}" }}
defaults: {{ auth: none }}
{upstreams}routes:
  - name: all
    match: {{ path: {{ prefix: / }} }}
    {action}
"#
    )
}
