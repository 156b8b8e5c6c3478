//! The diagnostics collector every section builder reports into: each problem with its file,
//! line and dotted key, all of them in one pass, so a user fixes a file in one round trip
//! instead of one error per run.

use super::located::{Located, Text};
use super::{lines, ConfigError, ConfigErrors};
use std::collections::HashMap;

/// Problems found while building one config document.
#[derive(Debug)]
pub struct Diag {
    file: String,
    errors: Vec<ConfigError>,
    /// Accepted but likely wrong; `portcullis validate --strict` refuses them too.
    warnings: Vec<ConfigError>,
}

/// A position in a `Diag`, to ask whether anything was reported since (see `Diag::clean_since`).
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

impl Diag {
    pub fn new(file: &str) -> Diag {
        Diag {
            file: file.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Reports one problem. `line` 0 means "no single place": the key's line is then looked up
    /// in the text when the document is finished.
    pub fn err(&mut self, line: u32, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// Reports something the config may mean but probably does not: it loads, and
    /// `validate --strict` refuses it.
    pub fn warn(&mut self, line: u32, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn mark(&self) -> Mark {
        Mark(self.errors.len())
    }

    /// True when nothing was reported since `mark`.
    pub fn clean_since(&self, mark: Mark) -> bool {
        self.errors.len() == mark.0
    }

    /// `value` when nothing was reported since `mark`: how a builder returns its compiled form
    /// only when its whole section was valid.
    pub fn ok_since<T>(&self, mark: Mark, value: T) -> Option<T> {
        self.clean_since(mark).then_some(value)
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// (line, key, message) of each problem, for a builder's own tests.
    #[cfg(test)]
    pub fn into_errors(self) -> Vec<(u32, String, String)> {
        self.errors
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect()
    }

    /// Names of listeners, upstreams, routes, providers and limits are kebab-case.
    pub fn kebab_name(&mut self, name: &Located<Text>, key: String) {
        if !is_kebab_case(name) {
            self.err(
                name.line,
                key,
                format!(
                    "name `{}` must be kebab-case (^[a-z0-9][a-z0-9-]*$)",
                    name.value
                ),
            );
        }
    }

    /// Reports every name that an earlier one already used.
    pub fn duplicates<'n>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = (&'n Located<Text>, String)>,
    ) {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (name, key) in names {
            if let Some(first) = seen.get(name.value.0.as_str()) {
                self.err(
                    name.line,
                    key,
                    format!(
                        "duplicate {what} name `{}` (first defined on line {first})",
                        name.value
                    ),
                );
            } else {
                seen.insert(&name.value, name.line);
            }
        }
    }

    /// Ends the document: `Ok` when nothing was reported, otherwise every error with its line
    /// made as precise as the text allows, sorted by line (reports on one line keep their
    /// order).
    /// The warnings when nothing was an error (both with lines filled in, by line).
    pub fn finish(self, text: &str) -> Result<Vec<ConfigError>, ConfigErrors> {
        if self.errors.is_empty() {
            let mut warnings = self.warnings;
            lines::refine(text, &mut warnings);
            warnings.sort_by_key(|e| e.line);
            return Ok(warnings);
        }
        let mut errors = self.errors;
        lines::refine(text, &mut errors);
        errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(errors))
    }
}

/// Test helper: parses `yaml` as one section, builds it with `build`, and returns the compiled
/// form or every error as (line, key, message).
#[cfg(test)]
pub fn build_yaml<T, R>(
    yaml: &str,
    build: impl FnOnce(&T, &mut Diag) -> Option<R>,
) -> Result<R, Vec<(u32, String, String)>>
where
    T: serde::de::DeserializeOwned,
{
    let section: T = serde_saphyr::from_str(yaml).expect("test YAML parses");
    let mut diag = Diag::new("t.yaml");
    let built = build(&section, &mut diag);
    match diag.finish(yaml) {
        Ok(_) => Ok(built.expect("a builder that reports nothing returns its section")),
        Err(e) => Err(e
            .0
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect()),
    }
}

pub fn is_kebab_case(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str, line: u32) -> Located<Text> {
        Located::new(Text::from(s), line)
    }

    #[test]
    fn names_and_duplicates_are_reported_with_their_lines() {
        let mut d = Diag::new("f.yaml");
        d.kebab_name(&name("Bad_Name", 3), "routes[0].name".into());
        d.kebab_name(&name("good-name-2", 4), "routes[1].name".into());
        let names = [name("a", 5), name("b", 6), name("a", 9)];
        d.duplicates(
            "route",
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("r[{i}]"))),
        );
        let e = d.finish("").unwrap_err().0;
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].line, e[0].key.as_str()), (3, "routes[0].name"));
        assert!(e[0].message.contains("kebab-case"));
        assert_eq!((e[1].line, e[1].key.as_str()), (9, "r[2]"));
        assert_eq!(
            e[1].message,
            "duplicate route name `a` (first defined on line 5)"
        );
    }

    #[test]
    fn marks_tell_whether_a_section_was_clean() {
        let mut d = Diag::new("f.yaml");
        let m = d.mark();
        assert_eq!(d.ok_since(m, 1), Some(1));
        d.err(1, "k", "bad");
        assert_eq!(d.ok_since(m, 1), None);
        let m2 = d.mark();
        assert!(d.clean_since(m2));
    }

    #[test]
    fn finish_sorts_by_line_and_keeps_same_line_order() {
        let mut d = Diag::new("f.yaml");
        d.err(7, "b", "second on 7");
        d.err(2, "a", "on 2");
        d.err(7, "c", "third on 7");
        let e = d.finish("").unwrap_err().0;
        let got: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(got, ["on 2", "second on 7", "third on 7"]);
    }
}
