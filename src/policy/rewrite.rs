//! `rewrite`: change the path prefix the upstream sees.

use crate::config::{Diag, Located, Rewrite as RewriteConfig};
use crate::router::normalize::path_literal;
use crate::router::prefix_matches;

#[derive(Debug)]
pub enum Rewrite {
    StripPrefix(String),
    ReplacePrefix { from: String, to: String },
}

impl Rewrite {
    /// Builds a route's `rewrite`; `direct` says whether the route answers by itself.
    pub fn build(
        rw: &Located<RewriteConfig>,
        direct: bool,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Rewrite> {
        let mark = diag.mark();
        let rewrite = match (&rw.strip_prefix, &rw.replace_prefix) {
            (Some(p), None) => {
                path_literal(p, rw.line, &format!("{key}.rewrite.strip_prefix"), diag);
                Some(Rewrite::StripPrefix(p.trim_end_matches('/').to_string()))
            }
            (None, Some(rp)) => {
                path_literal(
                    &rp.from,
                    rw.line,
                    &format!("{key}.rewrite.replace_prefix.from"),
                    diag,
                );
                path_literal(
                    &rp.to,
                    rw.line,
                    &format!("{key}.rewrite.replace_prefix.to"),
                    diag,
                );
                Some(Rewrite::ReplacePrefix {
                    from: rp.from.trim_end_matches('/').to_string(),
                    to: rp.to.0.clone(),
                })
            }
            _ => {
                diag.err(
                    rw.line,
                    format!("{key}.rewrite"),
                    "give exactly one of `strip_prefix` or `replace_prefix`",
                );
                None
            }
        };
        if direct {
            diag.err(
                rw.line,
                format!("{key}.rewrite"),
                "a direct_response route has nothing to rewrite",
            );
        }
        diag.ok_since(mark, rewrite?)
    }

    /// The rewritten path; paths that do not start with the prefix (on a segment boundary) are
    /// left alone.
    pub fn apply(&self, path: &str) -> String {
        let (from, to) = match self {
            Rewrite::StripPrefix(p) => (p.as_str(), "/"),
            Rewrite::ReplacePrefix { from, to } => (from.as_str(), to.as_str()),
        };
        if from.is_empty() || !prefix_matches(from, path) {
            return path.to_string();
        }
        let rest = &path[from.len()..];
        match (to.ends_with('/'), rest.starts_with('/')) {
            (true, true) => format!("{to}{}", &rest[1..]),
            (false, false) if !rest.is_empty() => format!("{to}/{rest}"),
            _ if rest.is_empty() => to.to_string(),
            _ => format!("{to}{rest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_and_replace() {
        let s = Rewrite::StripPrefix("/v1".into());
        assert_eq!(s.apply("/v1/orders/7"), "/orders/7");
        assert_eq!(s.apply("/v1"), "/");
        assert_eq!(s.apply("/v1/"), "/");
        assert_eq!(s.apply("/v10/x"), "/v10/x");
        let r = Rewrite::ReplacePrefix {
            from: "/v1".into(),
            to: "/internal".into(),
        };
        assert_eq!(r.apply("/v1/orders"), "/internal/orders");
        assert_eq!(r.apply("/v1"), "/internal");
        let r = Rewrite::ReplacePrefix {
            from: "/v1".into(),
            to: "/internal/".into(),
        };
        assert_eq!(r.apply("/v1/orders"), "/internal/orders");
    }
}
