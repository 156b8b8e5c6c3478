//! `rewrite`: change the path (a prefix, or the whole path) the upstream sees.

use crate::config::{Diag, Located, Rewrite as RewriteConfig};
use crate::router::normalize::path_literal;
use crate::router::prefix_matches;

#[derive(Debug)]
pub enum Rewrite {
    StripPrefix(String),
    ReplacePrefix {
        from: String,
        to: String,
    },
    /// Every request's path becomes this one (the query is kept).
    FullPath(String),
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
        let given = [
            rw.strip_prefix.is_some(),
            rw.replace_prefix.is_some(),
            rw.replace_full_path.is_some(),
        ];
        let rewrite = match (&rw.strip_prefix, &rw.replace_prefix) {
            _ if given.iter().filter(|g| **g).count() != 1 => {
                diag.err(
                    rw.line,
                    format!("{key}.rewrite"),
                    "give exactly one of `strip_prefix`, `replace_prefix` or `replace_full_path`",
                );
                None
            }
            (None, None) => {
                let p = rw.replace_full_path.as_ref()?;
                path_literal(
                    p,
                    rw.line,
                    &format!("{key}.rewrite.replace_full_path"),
                    diag,
                );
                Some(Rewrite::FullPath(p.0.clone()))
            }
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
            // Both: refused by the count above.
            (Some(_), Some(_)) => None,
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
        match self {
            Rewrite::StripPrefix(p) => replace_prefix(p, "/", path),
            Rewrite::ReplacePrefix { from, to } => replace_prefix(from, to, path),
            Rewrite::FullPath(p) => p.clone(),
        }
    }
}

/// `path` with its prefix `from` (on a segment boundary) replaced by `to`, without doubling or
/// losing the `/` between them; a path without that prefix is left alone.
pub fn replace_prefix(from: &str, to: &str, path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_path_replaces_every_path() {
        let f = Rewrite::FullPath("/health".into());
        assert_eq!(f.apply("/any/thing"), "/health");
        assert_eq!(f.apply("/"), "/health");
    }

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
