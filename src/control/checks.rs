//! Synthetic checks: requests a canary (or each step of a rollout) must answer as expected
//! before it is promoted. Read from a YAML file:
//!
//! ```yaml
//! - name: order lookup
//!   method: GET              # default GET
//!   path: /v1/orders/42
//!   headers: { host: api.example.com, authorization: "Bearer …" }
//!   body: ""                 # optional
//!   expect_status: 200       # default 200
//!   expect_body_contains: '"id":42'
//!   timeout_ms: 2000         # default 2000
//! ```
//!
//! Each check is sent to every selected instance's plain-HTTP listener (from its heartbeat);
//! the first failure names the check, the instance and what differed.

use crate::outbound::Endpoint;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default = "default_status")]
    pub expect_status: u16,
    #[serde(default)]
    pub expect_body_contains: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_status() -> u16 {
    200
}

/// Reads and checks a checks file.
pub fn load(path: &std::path::Path) -> Result<Vec<Check>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let checks: Vec<Check> =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if checks.is_empty() {
        return Err(format!("{}: no checks", path.display()));
    }
    for c in &checks {
        if http::Method::from_bytes(c.method.as_bytes()).is_err() {
            return Err(format!(
                "check `{}`: `{}` is not a method",
                c.name, c.method
            ));
        }
        if !c.path.starts_with('/') {
            return Err(format!("check `{}`: path must start with `/`", c.name));
        }
        if http::StatusCode::from_u16(c.expect_status).is_err() {
            return Err(format!("check `{}`: expect_status is not a status", c.name));
        }
    }
    Ok(checks)
}

/// Runs every check on every plain-HTTP listener the instances report in their heartbeats;
/// instances that report none make it an error (a check that reached nothing never passes).
pub async fn run_on_instances(
    checks: &[Check],
    instances: &[&super::store::InstanceReport],
) -> Result<usize, String> {
    let listeners: Vec<String> = instances
        .iter()
        .flat_map(|i| super::stats::HeartbeatStats::parse(i.stats.as_deref()).listen)
        .collect();
    if listeners.is_empty() {
        return Err("synthetic checks: no selected instance reports a plain-HTTP listener".into());
    }
    run(checks, &listeners).await
}

/// Runs every check against every listener (`http://host:port`): `Err` names the first failure.
pub async fn run(checks: &[Check], listeners: &[String]) -> Result<usize, String> {
    let mut passed = 0;
    for base in listeners {
        for c in checks {
            let endpoint = Endpoint::parse(&format!("{base}{}", c.path), None)?;
            let method = http::Method::from_bytes(c.method.as_bytes())
                .map_err(|_| format!("check `{}`: bad method", c.name))?;
            let mut req = endpoint.request(method);
            for (k, v) in &c.headers {
                if k.eq_ignore_ascii_case("host") {
                    if let Some(h) = req.headers_mut() {
                        h.remove(http::header::HOST);
                    }
                }
                req = req.header(k.as_str(), v.as_str());
            }
            let body = Bytes::from(c.body.clone().unwrap_or_default());
            let req = req
                .body(Full::new(body))
                .map_err(|e| format!("check `{}`: {e}", c.name))?;
            let wait = Duration::from_millis(c.timeout_ms.unwrap_or(2000));
            let resp = match tokio::time::timeout(wait, endpoint.send(req, 1024 * 1024)).await {
                Err(_) => {
                    return Err(format!(
                        "synthetic check `{}` on {base}: no answer within {} ms",
                        c.name,
                        wait.as_millis()
                    ))
                }
                Ok(Err(e)) => return Err(format!("synthetic check `{}` on {base}: {e}", c.name)),
                Ok(Ok(r)) => r,
            };
            if resp.status().as_u16() != c.expect_status {
                return Err(format!(
                    "synthetic check `{}` on {base}: status {} (expected {})",
                    c.name,
                    resp.status().as_u16(),
                    c.expect_status
                ));
            }
            if let Some(want) = &c.expect_body_contains {
                if !String::from_utf8_lossy(resp.body()).contains(want.as_str()) {
                    return Err(format!(
                        "synthetic check `{}` on {base}: the body does not contain {want:?}",
                        c.name
                    ));
                }
            }
            passed += 1;
        }
    }
    Ok(passed)
}
