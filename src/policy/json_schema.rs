//! `request.json_schema`: the request body must be a JSON document that matches a schema,
//! compiled once at load. A body that is not JSON (by its `Content-Type`) is refused with 415
//! before it is read; one that does not match is refused with 400 and an RFC 9457
//! `application/problem+json` body listing every failure as a JSON Pointer and the keyword that
//! failed — never the offending values (they may be secrets, and echoing them invites
//! reflection attacks). The body is read whole within the route's `max_body_bytes` first.
//!
//! Drafts 4, 6, 7, 2019-09 and 2020-12 (by `$schema`; 2020-12 without it). `pattern` and
//! `patternProperties` compile with the linear-time `regex` engine (no lookaround, no
//! backreferences: a schema that needs them is refused at load), and no `$ref` is ever fetched
//! from the network or the disk: a schema is self-contained.

use crate::config::{Diag, Located};
use bytes::Bytes;
use http::{header, HeaderMap, Method};
use jsonschema::{PatternOptions, Validator};
use serde_json::Value;
use std::path::Path;

/// How many failures a refusal lists unless the route says (the rest are counted).
pub const DEFAULT_MAX_ERRORS: usize = 100;

#[derive(Debug)]
pub struct JsonSchema {
    validator: Validator,
    max_errors: usize,
}

/// One failure: where in the body, and which keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// A JSON Pointer into the request body (RFC 6901; `""` is the whole document).
    pub pointer: String,
    pub keyword: String,
    /// What the keyword asks for, from the schema (never from the body).
    pub detail: String,
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not parseable as JSON (the position, not the text).
    NotJson { line: usize, column: usize },
    /// A body-carrying method with no body.
    Missing,
    /// Parsed, but the schema rejects it.
    Invalid {
        errors: Vec<SchemaError>,
        omitted: usize,
    },
}

impl JsonSchema {
    /// Builds `request.json_schema` of route `key`; a string is a file path relative to
    /// `base` (the config file's folder), anything else the schema itself.
    pub fn build(
        cfg: &Located<Value>,
        max_errors: Option<&Located<u32>>,
        base: &Path,
        key: &str,
        diag: &mut Diag,
    ) -> Option<JsonSchema> {
        let field = format!("{key}.request.json_schema");
        let max_errors = match max_errors {
            Some(m) if m.value == 0 => {
                diag.err(
                    m.line,
                    format!("{key}.request.json_schema_max_errors"),
                    "must be greater than 0",
                );
                0
            }
            Some(m) => m.value as usize,
            None => DEFAULT_MAX_ERRORS,
        };
        let from_file;
        let schema = match &cfg.value {
            Value::String(file) => {
                let path = base.join(file);
                let read = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|bytes| {
                        serde_json::from_slice::<Value>(&bytes)
                            .map_err(|e| format!("{} is not JSON: {e}", path.display()))
                    });
                match read {
                    Ok(v) => {
                        from_file = v;
                        &from_file
                    }
                    Err(e) => {
                        diag.err(cfg.line, field, e);
                        return None;
                    }
                }
            }
            v @ (Value::Object(_) | Value::Bool(_)) => v,
            _ => {
                diag.err(
                    cfg.line,
                    field,
                    "must be a schema (a mapping, or true/false) or a file path",
                );
                return None;
            }
        };
        match jsonschema::options()
            .with_pattern_options(PatternOptions::regex())
            .with_retriever(NoFetch)
            .build(schema)
        {
            Ok(validator) if max_errors > 0 => Some(JsonSchema {
                validator,
                max_errors,
            }),
            Ok(_) => None,
            Err(e) => {
                // Where in the route's schema (the library reports it as the instance the
                // meta-schema checked).
                let at = e.instance_path().as_str();
                let at = if at.is_empty() {
                    String::new()
                } else {
                    format!(" at {at}")
                };
                diag.err(
                    cfg.line,
                    field,
                    format!("not a usable JSON Schema{at}: {e}"),
                );
                None
            }
        }
    }

    /// Whether a request must carry a JSON body to be checked: methods that send a document.
    pub fn requires_body(method: &Method) -> bool {
        matches!(*method, Method::POST | Method::PUT | Method::PATCH)
    }

    /// Checks a body read whole (`None`: empty).
    pub fn check(&self, body: Option<&Bytes>) -> Result<(), BodyProblem> {
        let Some(body) = body else {
            return Err(BodyProblem::Missing);
        };
        let doc: Value = serde_json::from_slice(body).map_err(|e| BodyProblem::NotJson {
            line: e.line(),
            column: e.column(),
        })?;
        let mut errors = Vec::new();
        let mut omitted = 0;
        for e in self.validator.iter_errors(&doc) {
            for one in describe(&e) {
                if errors.len() < self.max_errors {
                    errors.push(one);
                } else {
                    omitted += 1;
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BodyProblem::Invalid { errors, omitted })
        }
    }
}

/// Refuses every reference outside the schema: a schema is compiled at load, from what the
/// config holds, and never waits on (or trusts) a network or a file it did not name.
struct NoFetch;

impl jsonschema::Retrieve for NoFetch {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "`$ref` to {uri} is not fetched: a schema must be self-contained (put shared parts under `$defs`)"
        )
        .into())
    }
}

/// Whether the request's `Content-Type` names JSON: `application/json` or `application/*+json`,
/// parameters (`charset`) allowed. A missing type is not JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = media.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || (sub.len() > 5
                && sub.is_char_boundary(sub.len() - 5)
                && sub[sub.len() - 5..].eq_ignore_ascii_case("+json")
                && !sub.contains(['/', ' '])))
}

/// One library error as the failures a client reads: the keyword, where, and what the schema
/// asks — built from the schema side only. `required` and the "unexpected property" keywords
/// name each property (a key, not a value) so every one is listed.
fn describe(e: &jsonschema::ValidationError<'_>) -> Vec<SchemaError> {
    use jsonschema::error::ValidationErrorKind as K;
    let at = e.instance_path().as_str();
    let keyword = e.kind().keyword().to_string();
    let one = |detail: String| SchemaError {
        pointer: at.to_string(),
        keyword: keyword.clone(),
        detail,
    };
    let each = |names: &[String], what: &str| -> Vec<SchemaError> {
        names
            .iter()
            .map(|n| SchemaError {
                pointer: format!("{at}/{}", escape_pointer(n)),
                keyword: keyword.clone(),
                detail: what.to_string(),
            })
            .collect()
    };
    let single = match e.kind() {
        K::Required { property } => SchemaError {
            pointer: format!(
                "{at}/{}",
                escape_pointer(property.as_str().unwrap_or_default())
            ),
            keyword: keyword.clone(),
            detail: "is required".into(),
        },
        K::AdditionalProperties { unexpected } => return each(unexpected, "is not allowed"),
        K::UnevaluatedProperties { unexpected } => return each(unexpected, "is not allowed"),
        K::Type { kind } => one(format!("must be of type {}", type_names(kind))),
        K::MinLength { limit } => one(format!("must be at least {limit} characters long")),
        K::MaxLength { limit } => one(format!("must be at most {limit} characters long")),
        K::MinItems { limit } => one(format!("must have at least {limit} items")),
        K::MaxItems { limit } => one(format!("must have at most {limit} items")),
        K::MinProperties { limit } => one(format!("must have at least {limit} properties")),
        K::MaxProperties { limit } => one(format!("must have at most {limit} properties")),
        K::Minimum { limit } => one(format!("must be at least {limit}")),
        K::Maximum { limit } => one(format!("must be at most {limit}")),
        K::ExclusiveMinimum { limit } => one(format!("must be greater than {limit}")),
        K::ExclusiveMaximum { limit } => one(format!("must be less than {limit}")),
        K::MultipleOf { multiple_of } => one(format!("must be a multiple of {multiple_of}")),
        K::Pattern { pattern } => one(format!("must match the pattern {pattern}")),
        K::Enum { .. } => one("must be one of the values the schema lists".into()),
        K::Constant { .. } => one("must be the value the schema fixes".into()),
        K::Format { format } => one(format!("must be a valid {format}")),
        K::UniqueItems => one("must not hold duplicate items".into()),
        K::FalseSchema => one("is not allowed here".into()),
        _ => one(format!("does not satisfy `{keyword}`")),
    };
    vec![single]
}

fn type_names(kind: &jsonschema::error::TypeKind) -> String {
    use jsonschema::error::TypeKind;
    match kind {
        TypeKind::Single(t) => t.to_string(),
        TypeKind::Multiple(ts) => {
            let names: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
            names.join(" or ")
        }
    }
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

impl BodyProblem {
    pub fn summary(&self) -> &'static str {
        match self {
            BodyProblem::NotJson { .. } => "request body is not valid JSON",
            BodyProblem::Missing => "request body is required",
            BodyProblem::Invalid { .. } => "request body does not match the schema",
        }
    }

    /// The RFC 9457 problem details document (the gateway's usual `error` and `request_id`
    /// members beside the standard ones).
    pub fn to_json(&self, request_id: &str) -> Value {
        let summary = self.summary();
        let detail = match self {
            BodyProblem::NotJson { line, column } => {
                format!("the body is not JSON (line {line}, column {column})")
            }
            BodyProblem::Missing => {
                "this route validates a JSON request body and none was sent".to_string()
            }
            BodyProblem::Invalid { errors, omitted } => {
                if *omitted > 0 {
                    format!(
                        "{} schema errors ({} listed)",
                        errors.len() + omitted,
                        errors.len()
                    )
                } else {
                    format!("{} schema error(s)", errors.len())
                }
            }
        };
        // With `about:blank`, the title SHOULD be the status phrase (RFC 9457 §4.2.1); what
        // went wrong is in `detail` and in the gateway's usual `error` member.
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": format!("{summary}: {detail}"),
            "error": summary,
            "request_id": request_id,
        });
        if let BodyProblem::Invalid { errors, omitted } = self {
            doc["errors"] = errors
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "pointer": e.pointer,
                        "keyword": e.keyword,
                        "detail": e.detail,
                    })
                })
                .collect();
            if *omitted > 0 {
                doc["errors_omitted"] = (*omitted).into();
            }
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(yaml_json: Value) -> Result<JsonSchema, Vec<(u32, String, String)>> {
        let mut diag = Diag::new("t.yaml");
        let s = JsonSchema::build(
            &Located::new(yaml_json, 7),
            None,
            Path::new("."),
            "routes[0]",
            &mut diag,
        );
        s.ok_or_else(|| diag.into_errors())
    }

    fn body(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn every_failure_is_listed_with_pointer_and_keyword_never_the_value() {
        let s = schema(serde_json::json!({
            "type": "object",
            "required": ["name", "age"],
            "additionalProperties": false,
            "properties": {
                "name": { "type": "string", "minLength": 2 },
                "age": { "type": "integer", "minimum": 0 },
                "tags": { "type": "array", "items": { "type": "string" } },
                "a/b": { "type": "string" }
            }
        }))
        .unwrap();
        assert_eq!(s.check(Some(&body(r#"{"name":"ok","age":3}"#))), Ok(()));
        let Err(BodyProblem::Invalid { errors, omitted }) = s.check(Some(&body(
            r#"{"name":"s3cr3t-x","age":-1,"tags":["a",7],"a/b":1,"extra":"leak-me"}"#,
        ))) else {
            panic!("expected schema errors")
        };
        assert_eq!(omitted, 0);
        let mut got: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e.pointer.clone(), e.keyword.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("/age".into(), "minimum".into()),
                ("/a~1b".into(), "type".into()),
                ("/extra".into(), "additionalProperties".into()),
                ("/tags/1".into(), "type".into()),
            ]
        );
        let text = BodyProblem::Invalid { errors, omitted }
            .to_json("r1")
            .to_string();
        assert!(!text.contains("leak-me") && !text.contains("-1,"), "{text}");

        let Err(BodyProblem::Invalid { errors, .. }) = s.check(Some(&body("{}"))) else {
            panic!()
        };
        let missing: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(missing, vec!["/name", "/age"]);
        assert_eq!(errors[0].keyword, "required");
    }

    #[test]
    fn not_json_missing_and_the_error_bound() {
        let mut diag = Diag::new("t.yaml");
        let s = JsonSchema::build(
            &Located::new(
                serde_json::json!({ "type": "array", "items": { "type": "integer" } }),
                1,
            ),
            Some(&Located::new(3, 2)),
            Path::new("."),
            "routes[0]",
            &mut diag,
        )
        .unwrap();
        assert_eq!(
            s.check(Some(&body("[1,"))),
            Err(BodyProblem::NotJson { line: 1, column: 3 })
        );
        assert_eq!(s.check(None), Err(BodyProblem::Missing));
        let Err(BodyProblem::Invalid { errors, omitted }) =
            s.check(Some(&body(r#"["a","b","c","d","e"]"#)))
        else {
            panic!()
        };
        assert_eq!((errors.len(), omitted), (3, 2));
    }

    #[test]
    fn drafts_by_dollar_schema_and_what_load_refuses() {
        // Draft 4's boolean exclusiveMaximum.
        let s = schema(serde_json::json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "number", "maximum": 5, "exclusiveMaximum": true
        }))
        .unwrap();
        assert!(s.check(Some(&body("5"))).is_err());
        assert_eq!(s.check(Some(&body("4.5"))), Ok(()));
        // 2020-12 prefixItems.
        let s = schema(serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "prefixItems": [{ "type": "string" }], "items": false
        }))
        .unwrap();
        assert_eq!(s.check(Some(&body(r#"["a"]"#))), Ok(()));
        assert!(s.check(Some(&body(r#"["a", 1]"#))).is_err());

        for bad in [
            serde_json::json!({ "type": "no-such-type" }),
            // Lookaround needs a backtracking engine: refused.
            serde_json::json!({ "type": "string", "pattern": "^(?!admin)" }),
            // Remote references are never fetched.
            serde_json::json!({ "$ref": "https://example.com/schema.json" }),
            serde_json::json!(42),
        ] {
            let e = schema(bad.clone()).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(
                (e[0].0, e[0].1.as_str()),
                (7, "routes[0].request.json_schema")
            );
        }
        let e = schema(serde_json::json!("no-such-file.json")).unwrap_err();
        assert!(e[0].2.contains("cannot read"), "{e:?}");
    }

    #[test]
    fn which_content_types_are_json() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(with("application/problem+JSON"));
        assert!(!with("text/json"));
        assert!(!with("application/jsonx"));
        assert!(!with("application/+json"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
