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
