//! This gateway's instance id (`--instance-id`, default the host name): in access log lines,
//! span resources, `target_info` and, when configured, a response header, so a request can be
//! traced to the gateway that served it. Set once at start; one value for the process.

use std::sync::OnceLock;

static ID: OnceLock<String> = OnceLock::new();

/// Sets the id (the first call wins; later ones are ignored).
pub fn set(id: &str) {
    let _ = ID.set(id.to_string());
}

/// The id: what `set` was given, else the host name.
pub fn id() -> &'static str {
    ID.get_or_init(host_name)
}

/// `/proc/sys/kernel/hostname`, or `portcullis` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portcullis".into())
}
