//! Configuration: the data model of the YAML file, loading (`${ENV}` expansion, lines), the
//! diagnostics collector, and the checks that span sections (names, references, shadowing).
//! It imports no domain module: each module builds its own section into its compiled form
//! (`crate::compile` drives them), so `config` only knows what the file says.

pub mod diag;
mod lines;
pub mod located;
pub mod model;
pub mod names;

pub use diag::{Diag, Mark};
pub use located::{HeaderText, Located, Text};
pub use model::*;

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// One problem in a config file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no single place (e.g. an unreadable file).
    pub line: u32,
    /// The dotted path of the offending key, e.g. `routes[2].match.path`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.message),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            (line, true) => write!(f, "{}:{}: {}", self.file, line, self.message),
            (line, false) => write!(f, "{}:{}: {}: {}", self.file, line, self.key, self.message),
        }
    }
}

/// Every error found in one file; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A config file parsed into the model, not yet built: what it says, where it came from (for
/// errors), and what identifies it.
#[derive(Debug)]
pub struct Document {
    pub config: Config,
    pub source: String,
    /// The text, kept to place the errors builders find on their lines.
    pub text: String,
    /// `sha256:<hex>` of the canonical form (comments, layout and key order do not matter).
    pub checksum: String,
}

/// Largest config file accepted; a gateway config is never this large, a mistake might be.
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

pub fn read_file(path: &Path) -> Result<Document, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: source.clone(),
            line: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    parse_str(&text, &source)
}

/// Parses YAML into the model. Syntax, unknown keys, wrong types, duplicate keys and unset
/// `${ENV}` variables are reported here; everything else by the section builders.
pub fn parse_str(text: &str, source: &str) -> Result<Document, ConfigErrors> {
    let config = parse(text, source)?;
    let checksum = checksum(&config);
    Ok(Document {
        config,
        source: source.to_string(),
        text: text.to_string(),
        checksum,
    })
}

fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
    let err = |line: u32, message: String| {
        ConfigErrors(vec![ConfigError {
            file: source.to_string(),
            line,
            key: String::new(),
            message,
        }])
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(err(
            0,
            format!("file is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    // The parser's node and event budgets are sized to the file-size bound above, not to its
    // defaults (250,000 nodes: about 19,000 routes): the size bound is what limits the work, and
    // alias amplification keeps its own caps.
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_CONFIG_BYTES / 2,
            max_events: MAX_CONFIG_BYTES,
        },
    };
    serde_saphyr::from_str_with_options::<Config>(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line() as u32).unwrap_or(0);
        let message = lines::strip_location_suffix(&e.without_snippet().to_string());
        let message = match message.split_once(", set DuplicateKeyPolicy") {
            Some((m, _)) => m.to_string(),
            None => message,
        };
        ConfigErrors(vec![ConfigError {
            file: source.to_string(),
            line,
            key: lines::key_on_line(text, line),
            message,
        }])
    })
}

fn checksum(config: &Config) -> String {
    // serde_json writes struct fields in declaration order and maps are BTreeMaps, so the same
    // configuration always serialises to the same bytes.
    let canonical = serde_json::to_vec(config).expect("config serialises to JSON");
    format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route table beyond the YAML parser's default node budget (250,000 nodes, about
    /// 19,000 routes) still parses: the file-size bound is what limits the work.
    #[test]
    fn a_large_route_table_is_not_refused_by_the_parser_budget() {
        let mut text = String::from("listeners: [{ name: public, address: \"127.0.0.1:8080\" }]\nadmin: { address: \"127.0.0.1:9901\" }\nroutes:\n");
        for i in 0..25_000 {
            text.push_str(&format!(
                "  - name: r{i}\n    match: {{ hosts: [h{i}.example.com], path: {{ prefix: /p{i} }}, methods: [GET, POST] }}\n    upstream: app\n"
            ));
        }
        let doc = parse_str(&text, "big.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.config.routes.len(), 25_000);
        // The size bound still holds.
        let huge = "a: b\n".repeat(MAX_CONFIG_BYTES / 5 + 1);
        assert!(parse_str(&huge, "huge.yaml")
            .unwrap_err()
            .to_string()
            .contains("larger than"));
    }
}
