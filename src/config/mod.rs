//! Configuration: parse (YAML, `${ENV}` expansion) → validate (every error, with its line) →
//! hand a checked `Config` to `snapshot::compile`.

pub mod located;
pub mod model;
mod validate;
pub use validate::{MAX_RETRY_ATTEMPTS, MAX_TIMEOUT_MS, SPLIT_BUCKETS};

pub use located::{Located, Text};
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

/// A parsed and validated configuration plus what identifies it.
#[derive(Debug)]
pub struct ValidConfig {
    pub config: Config,
    pub source: String,
    /// `sha256:<hex>` of the canonical form (comments, layout and key order do not matter).
    pub checksum: String,
}

/// Largest config file accepted; a gateway config is never this large, a mistake might be.
const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

pub fn load_file(path: &Path) -> Result<ValidConfig, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: source.clone(),
            line: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str(&text, &source)
}

pub fn load_str(text: &str, source: &str) -> Result<ValidConfig, ConfigErrors> {
    let config = parse(text, source)?;
    let mut errors = validate::validate(&config, source);
    if !errors.is_empty() {
        refine_lines(text, &mut errors);
        errors.sort_by_key(|e| e.line);
        return Err(ConfigErrors(errors));
    }
    let checksum = checksum(&config);
    Ok(ValidConfig {
        config,
        source: source.to_string(),
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
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_str_with_options::<Config>(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line() as u32).unwrap_or(0);
        let message = strip_location_suffix(&e.without_snippet().to_string());
        let message = match message.split_once(", set DuplicateKeyPolicy") {
            Some((m, _)) => m.to_string(),
            None => message,
        };
        ConfigErrors(vec![ConfigError {
            file: source.to_string(),
            line,
            key: key_on_line(text, line),
            message,
        }])
    })
}

/// The mapping key written on `line` (1-based), if that line starts with one; parse errors
/// point at the offending value, and naming its key makes the message self-explanatory.
fn key_on_line(text: &str, line: u32) -> String {
    let Some(l) = line
        .checked_sub(1)
        .and_then(|i| text.lines().nth(i as usize))
    else {
        return String::new();
    };
    let t = l.trim_start().trim_start_matches("- ");
    match t.split_once(':') {
        Some((k, _))
            if !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            k.to_string()
        }
        _ => String::new(),
    }
}

/// The parser locates a block mapping at its first entry, one line below its key. Point such
/// errors at the key itself (`tls:` rather than the `certificates:` line under it).
fn refine_lines(text: &str, errors: &mut [ConfigError]) {
    let lines: Vec<&str> = text.lines().collect();
    for e in errors.iter_mut() {
        let Some(last) = e.key.rsplit('.').next() else {
            continue;
        };
        let field = last.split('[').next().unwrap_or(last);
        if e.line == 0 {
            e.line = line_of_key_path(&lines, &e.key);
            continue;
        }
        if field.is_empty() {
            continue;
        }
        // Indentation of a line's content, counting a list item's "- " as indentation.
        let indent = |l: &str| {
            let spaces = l.len() - l.trim_start().len();
            let rest = l.trim_start();
            spaces + (rest.len() - rest.trim_start_matches("- ").len())
        };
        let is_key_line = |l: &str| {
            let t = l.trim_start().trim_start_matches("- ");
            t.starts_with(field) && t[field.len()..].trim_start().starts_with(':')
        };
        let at = e.line as usize - 1;
        let Some(here) = lines.get(at) else { continue };
        if is_key_line(here) {
            continue;
        }
        // Only a parent key (less indented) can own the reported line.
        if let Some(back) = (1..=2).find(|d| {
            at >= *d
                && lines
                    .get(at - d)
                    .is_some_and(|l| is_key_line(l) && indent(l) < indent(here))
        }) {
            e.line -= back as u32;
        }
    }
}

/// The line of a plain dotted key path (`observability.otlp.endpoint`) for errors found on
/// values that carry no position: each segment is looked for below the previous one, more
/// indented (or later on the same line, for flow mappings). The deepest segment found wins;
/// 0 when even the first is missing or the path has list indices.
fn line_of_key_path(lines: &[&str], path: &str) -> u32 {
    if path.is_empty() || path.contains('[') {
        return 0;
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut found: Option<(usize, usize)> = None; // (line index, indent)
    for seg in path.split('.') {
        let key = format!("{seg}:");
        // A flow mapping on the parent's line: `otlp: { endpoint: x }`.
        if let Some((i, _)) = found {
            let in_flow = lines[i].split_once('{').is_some_and(|(_, rest)| {
                rest.split([',', '{'])
                    .any(|part| part.trim_start().starts_with(&key))
            });
            if in_flow {
                continue;
            }
        }
        let start = found.map_or(0, |(i, _)| i + 1);
        let parent_indent = found.map(|(_, ind)| ind);
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // Left the parent's block: stop looking.
            if let Some(p) = parent_indent {
                if indent(l) <= p {
                    break;
                }
            } else if indent(l) > 0 {
                continue;
            }
            if t.starts_with(&key) {
                hit = Some((i, indent(l)));
                break;
            }
        }
        match hit {
            Some(h) => found = Some(h),
            None => break,
        }
    }
    found.map_or(0, |(i, _)| i as u32 + 1)
}

fn strip_location_suffix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].trim_end_matches(',').to_string(),
        None => first.to_string(),
    }
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

    const BASE: &str = "listeners: [{ name: public, address: \"127.0.0.1:8080\" }]\nadmin: { address: \"127.0.0.1:9901\" }\ndefaults: { auth: none }\nroutes:\n  - name: hello\n    match: { path: { prefix: / } }\n    direct_response: { status: 200 }\n";

    fn errors(extra: &str) -> Vec<(u32, String, String)> {
        let text = format!("{BASE}{extra}");
        match load_str(&text, "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .map(|e| (e.line, e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn otlp_settings_are_checked_and_located() {
        assert_eq!(
            errors("observability:\n  otlp:\n    endpoint: http://127.0.0.1:4318\n"),
            vec![]
        );
        let e = errors(
            "observability:\n  otlp:\n    endpoint: https://collector:4318\n    sample_ratio: 2\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (e[0].0, e[0].1.as_str()),
            (10, "observability.otlp.endpoint")
        );
        assert!(e[0].2.contains("https"), "{e:?}");
        assert_eq!(
            (e[1].0, e[1].1.as_str()),
            (11, "observability.otlp.sample_ratio")
        );
        let e = errors("observability:\n  trace_context: { enabled: false }\n  otlp: { endpoint: \"http://c:4318\", batch_size: 0 }\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter().all(|e| e.0 == 10),
            "flow mappings point at their line: {e:?}"
        );
        assert!(e.iter().any(|e| e.2.contains("trace_context.enabled")));
    }
}
