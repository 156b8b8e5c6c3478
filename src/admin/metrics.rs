//! `GET /metrics`: the request series recorded on the request path, then each subsystem's
//! families of live state (each module renders its own), then the running config's.

use crate::gateway::Gateway;
use crate::observe::metrics::{family, label};
use crate::snapshot::Snapshot;
use std::sync::atomic::Ordering::Relaxed;

pub fn render(gateway: &Gateway, snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    family(
        &mut out,
        "target_info",
        "gauge",
        "This gateway: its instance id (`--instance-id`, default the host name) and version.",
        &[(
            format!(
                "{},version=\"{}\"",
                label("instance_id", crate::observe::instance::id()),
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        )],
    );
    gateway.metrics.render_requests(&mut out);
    family(
        &mut out,
        "portcullis_requests_in_flight",
        "gauge",
        "Requests being handled.",
        &[(
            String::new(),
            gateway.metrics.in_flight.load(Relaxed) as f64,
        )],
    );
    if let Some(s) = gateway.store_status.get() {
        s.render_metrics(&mut out);
    }
    crate::upstream::metrics::render(&snapshot.upstreams, &mut out);
    crate::auth::render_metrics(&snapshot.auth_stats, &mut out);
    crate::ratelimit::render_metrics(&snapshot.limiters, snapshot.redis.as_deref(), &mut out);
    crate::edge::render_metrics(&snapshot.edge, &mut out);
    crate::cache::admin::render_metrics(&snapshot.cache, &gateway.metrics.routes(), &mut out);
    crate::shadow::admin::render_metrics(snapshot, &mut out);
    crate::consumer::admin::render_metrics(snapshot, &mut out);
    crate::tenant::render_metrics(&snapshot.tenants, &mut out);
    snapshot.sinks.render_metrics(&mut out);
    family(
        &mut out,
        "portcullis_config_info",
        "gauge",
        "The running config version and checksum.",
        &[(
            format!(
                "{},{}",
                label("version", &snapshot.version.to_string()),
                label("checksum", &snapshot.checksum)
            ),
            1.0,
        )],
    );
    family(
        &mut out,
        "portcullis_config_version",
        "gauge",
        "The running config version.",
        &[(String::new(), snapshot.version as f64)],
    );
    family(
        &mut out,
        "portcullis_build_info",
        "gauge",
        "Build information.",
        &[(label("version", env!("CARGO_PKG_VERSION")), 1.0)],
    );
    out
}
