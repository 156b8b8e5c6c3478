//! `tenants`: tenant records with a status, where else statuses come from, and how a request's
//! tenant is forwarded.

use crate::config::located::{Located, Text};
use serde::{Deserialize, Serialize};

/// `tenants`: a list of records, or a section with the records and the other settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TenantsConfig {
    List(Vec<Located<TenantRecord>>),
    Section(TenantsSection),
}

/// By hand rather than `untagged`: serde buffers an untagged value, which loses the lines the
/// records' errors need. A sequence is the list form, a mapping the section.
impl<'de> Deserialize<'de> for TenantsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = TenantsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of { id, status } records, or a mapping with `records`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<TenantsConfig, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(a))
                    .map(TenantsConfig::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<TenantsConfig, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(a))
                    .map(TenantsConfig::Section)
            }
        }
        d.deserialize_any(Form)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsSection {
    #[serde(default)]
    pub records: Vec<Located<TenantRecord>>,
    /// Statuses kept in the shared Redis server (read before the records).
    #[serde(default)]
    pub status_source: Option<Located<TenantStatusSource>>,
    /// The header the request's tenant is forwarded in (client copies removed).
    #[serde(default)]
    pub forward_header: Option<Located<Text>>,
    /// A host's tenant that differs from the credential's: `deny` (403) or `allow` (the
    /// host's wins).
    #[serde(default)]
    pub on_mismatch: TenantMismatch,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    pub id: Located<Text>,
    pub status: Text,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantStatusSource {
    /// The status of tenant T is the string at `<redis_key_prefix>T`.
    #[serde(default = "default_status_prefix")]
    pub redis_key_prefix: Text,
    /// How long a status read from Redis is used (also "no such tenant").
    #[serde(default = "default_cache_s")]
    pub cache_s: Located<u64>,
    /// While Redis cannot be read, a status read before is used this long past `cache_s`.
    #[serde(default = "default_stale_s")]
    pub stale_s: Located<u64>,
    #[serde(default = "default_max_entries")]
    pub max_entries: Located<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantMismatch {
    #[default]
    Deny,
    Allow,
}

fn default_status_prefix() -> Text {
    Text::from("tenant-status:")
}

fn default_cache_s() -> Located<u64> {
    Located::new(5, 0)
}

fn default_stale_s() -> Located<u64> {
    Located::new(300, 0)
}

fn default_max_entries() -> Located<u64> {
    Located::new(100_000, 0)
}
