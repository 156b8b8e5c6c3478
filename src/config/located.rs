//! Value wrappers used by the config model: `Located<T>` remembers the YAML line a value came
//! from (for errors), `Text` is a string with `${ENV_VAR}` expanded at load time.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;

/// A value plus the 1-based line it was read from (0 when unknown, e.g. built in code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: u32,
}

impl<T> Located<T> {
    pub fn new(value: T, line: u32) -> Self {
        Located { value, line }
    }
}

impl<T> Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            value: spanned.value,
            line: spanned.referenced.line() as u32,
        })
    }
}

impl<T: Serialize> Serialize for Located<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// A string config value in which `${NAME}` is replaced from the environment while the file is
/// read. Expansion happens on the parsed scalar (never on the raw text), so a variable's value
/// can never change the YAML structure, and commented-out lines are never expanded.
/// `$${` writes a literal `${`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_string())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw, |name| std::env::var(name).ok())
            .map(Text)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A header value of `headers.*.set` / `add`: `${NAME}` environment variables are expanded as
/// in every string, but references that start with a lower-case letter (`${request_id}`,
/// `${claim.sub}`) and `$${` are left as written, for the header template that reads them per
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderText(pub String);

impl Deref for HeaderText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env_keeping(&raw, |name| std::env::var(name).ok(), true)
            .map(HeaderText)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HeaderText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl From<&str> for HeaderText {
    fn from(s: &str) -> Self {
        HeaderText(s.to_string())
    }
}

/// Expands `${NAME}` references using `lookup`. A missing variable or a malformed reference is
/// an error naming it.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_env_keeping(raw, lookup, false)
}

/// `expand_env`; with `templates`, lower-case references and `$${` are kept as written.
fn expand_env_keeping(
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
    templates: bool,
) -> Result<String, String> {
    if !raw.contains('$') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str(if templates { "$${" } else { "${" });
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {raw:?}"))?;
            let name = &body[..end];
            if templates && name.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push_str(&after[..end + 3]);
                rest = &body[end + 1..];
                continue;
            }
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!("invalid environment variable name `{name}`"));
            }
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn header_values_keep_template_references_and_expand_environment_ones() {
        let got = expand_env_keeping("${HOST} ${request_id} ${claim.sub} $${lit} $5", env, true);
        assert_eq!(
            got.as_deref(),
            Ok("example.com ${request_id} ${claim.sub} $${lit} $5")
        );
        // Elsewhere a lower-case reference is an environment variable as before.
        assert!(expand_env("${request_id}", env).is_err());
        assert!(expand_env_keeping("${MISSING}", env, true).is_err());
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand_env("a ${HOST} b", env).unwrap(), "a example.com b");
        assert_eq!(expand_env("${EMPTY}x", env).unwrap(), "x");
        assert_eq!(expand_env("$${HOST}", env).unwrap(), "${HOST}");
        assert_eq!(expand_env("^/v1$", env).unwrap(), "^/v1$");
        assert_eq!(expand_env("$5 $", env).unwrap(), "$5 $");
    }

    #[test]
    fn missing_and_malformed_are_errors() {
        assert!(expand_env("${NOPE}", env).unwrap_err().contains("NOPE"));
        assert!(expand_env("${HOST", env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_env("${1X}", env).unwrap_err().contains("invalid"));
    }
}
