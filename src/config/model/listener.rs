//! `listeners[]`: addresses, limits and TLS termination.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Located<Text>,
    pub address: Located<Text>,
    #[serde(default)]
    pub tls: Option<Located<ListenerTls>>,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Peers (CIDRs) whose X-Forwarded-For / Forwarded is read to find the client address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<Located<Text>>,
    /// Which header a trusted peer's chain is read from: `x-forwarded-for`, `forwarded`, or
    /// `auto` (default: `Forwarded` when the request carries only that, else X-Forwarded-For).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_header: Option<Located<Text>>,
    /// `v1`, `v2` or `any`: every connection must start with a PROXY protocol header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Located<Text>>,
    /// `ip_rules` by name, checked for every request before routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_rules: Vec<Located<Text>>,
    /// Reachable only from inside the network: public routes may reach internal upstreams.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    pub max_header_bytes: u64,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: u64,
    pub max_concurrent_requests: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_header_bytes: 65_536,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 50_000,
            max_concurrent_requests: 20_000,
        }
    }
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// SNI picks among these by their SANs; the first is the default.
    pub certificates: Vec<Located<CertificateFiles>>,
    #[serde(default = "default_min_tls")]
    pub min_version: Located<Text>,
    #[serde(default)]
    pub client_auth: Option<Located<ClientAuth>>,
    #[serde(default)]
    pub hsts: Option<Hsts>,
}

fn default_min_tls() -> Located<Text> {
    Located::new(Text::from("1.2"), 0)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert_file: Text,
    pub key_file: Text,
}

/// mTLS.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub ca_file: Text,
    /// true: the handshake fails without a client certificate signed by the CA.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    pub max_age_s: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}
