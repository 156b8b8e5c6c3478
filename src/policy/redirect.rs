//! `redirect`: the gateway answers with a redirect, the way Gateway API's `RequestRedirect`
//! does — the scheme, host, port and path are the request's unless the route replaces them
//! (the whole path, or the route's matched prefix), and the query is always kept.

use super::rewrite::replace_prefix;
use crate::body::ResponseBody;
use crate::config::{
    Diag, Located, PathMatch, Redirect as RedirectConfig, RedirectPrefix, ReplacePrefix,
};
use crate::router::normalize::path_literal;
use http::{header, HeaderValue, Response, StatusCode};

#[derive(Debug)]
enum NewPath {
    Keep,
    Full(String),
    /// The route's prefix (without a trailing `/`) and what replaces it.
    Prefix {
        from: String,
        to: String,
    },
}

#[derive(Debug)]
pub struct Redirect {
    scheme: Option<&'static str>,
    host: Option<String>,
    port: Option<u16>,
    path: NewPath,
    status: StatusCode,
}

/// What the redirect keeps from the request.
pub struct Requested<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `Host` (or `:authority`) as sent, possibly with a port.
    pub authority: &'a str,
    /// The normalized path the route matched.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

impl Redirect {
    /// Builds a route's `redirect`; `path_match` is the route's, for `replace_prefix`.
    pub fn build(
        r: &Located<RedirectConfig>,
        path_match: &PathMatch,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Redirect> {
        let mark = diag.mark();
        let key = format!("{key}.redirect");
        let scheme = match r.scheme.as_deref() {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(other) => {
                diag.err(
                    r.line,
                    format!("{key}.scheme"),
                    format!("`{other}` is not http or https"),
                );
                None
            }
        };
        if let Some(h) = &r.host {
            let ok = !h.is_empty()
                && h.parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.port().is_none() && !a.as_str().contains('@'));
            if !ok {
                diag.err(
                    r.line,
                    format!("{key}.host"),
                    format!("`{h}` is not a host name (no scheme, port or path)"),
                );
            }
        }
        if r.port == Some(0) {
            diag.err(r.line, format!("{key}.port"), "must be between 1 and 65535");
        }
        let path = match (&r.path, &r.replace_prefix) {
            (Some(_), Some(_)) => {
                diag.err(
                    r.line,
                    key.clone(),
                    "give `path` or `replace_prefix`, not both",
                );
                NewPath::Keep
            }
            (Some(p), None) => {
                path_literal(p, r.line, &format!("{key}.path"), diag);
                NewPath::Full(p.to_string())
            }
            (None, Some(RedirectPrefix::FromTo(ReplacePrefix { from, to }))) => {
                path_literal(from, r.line, &format!("{key}.replace_prefix.from"), diag);
                path_literal(to, r.line, &format!("{key}.replace_prefix.to"), diag);
                NewPath::Prefix {
                    from: from.trim_end_matches('/').to_string(),
                    to: to.to_string(),
                }
            }
            (None, Some(RedirectPrefix::To(to))) => {
                path_literal(to, r.line, &format!("{key}.replace_prefix"), diag);
                match &path_match.prefix {
                    Some(from) => NewPath::Prefix {
                        from: from.trim_end_matches('/').to_string(),
                        to: to.to_string(),
                    },
                    None => {
                        diag.err(
                            r.line,
                            format!("{key}.replace_prefix"),
                            "replace_prefix needs a route that matches a path prefix (or give `{ from, to }`)",
                        );
                        NewPath::Keep
                    }
                }
            }
            (None, None) => NewPath::Keep,
        };
        let status = match r.status {
            301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(r.status).ok(),
            _ => {
                diag.err(
                    r.line,
                    format!("{key}.status"),
                    "must be 301, 302, 303, 307 or 308",
                );
                None
            }
        };
        let redirect = Redirect {
            scheme,
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            port: r.port,
            path,
            status: status?,
        };
        diag.ok_since(mark, redirect)
    }

    /// The `Location` for a request. The port: the configured one; else, when the scheme is
    /// replaced, that scheme's default; else the one the client used (from `Host`). Default
    /// ports are never written.
    pub fn location(&self, req: &Requested<'_>) -> String {
        let scheme = self.scheme.unwrap_or(req.scheme);
        let (req_host, req_port) = split_authority(req.authority);
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = match (self.port, self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => req_port,
        }
        .filter(|p| *p != default_port(scheme));
        let path = match &self.path {
            NewPath::Keep => req.path.to_string(),
            NewPath::Full(p) => p.clone(),
            NewPath::Prefix { from, to } => replace_prefix(from, to, req.path),
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// What `explain` prints: the status and the `Location` this request would get.
    pub fn explain(&self, req: &Requested<'_>) -> String {
        format!(
            "redirect: {} {}, Location: {}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.location(req)
        )
    }

    pub fn respond(&self, req: &Requested<'_>) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(bytes::Bytes::new()));
        *resp.status_mut() = self.status;
        // Built from a checked host, a path in normalized form and the request's query (valid
        // URI characters): a valid header value; should it not be, the answer says so.
        match HeaderValue::from_str(&self.location(req)) {
            Ok(v) => {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
        }
        resp
    }
}

/// `host[:port]` (an IPv6 literal keeps its brackets).
fn split_authority(a: &str) -> (&str, Option<u16>) {
    match a.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()),
        _ => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str, prefix: Option<&str>) -> Redirect {
        let pm = PathMatch {
            exact: None,
            prefix: prefix.map(Into::into),
            regex: None,
        };
        crate::config::diag::build_yaml(yaml, |r: &Located<RedirectConfig>, diag| {
            Redirect::build(r, &pm, "routes[0]", diag)
        })
        .unwrap()
    }

    fn req<'a>(authority: &'a str, path: &'a str, query: Option<&'a str>) -> Requested<'a> {
        Requested {
            scheme: "http",
            authority,
            path,
            query,
        }
    }

    #[test]
    fn what_is_not_replaced_is_kept() {
        let https = redirect("scheme: https\nstatus: 301\n", None);
        assert_eq!(
            https.location(&req("api.test:8080", "/a/b", Some("x=1&y"))),
            "https://api.test/a/b?x=1&y"
        );
        let port = redirect("scheme: https\nport: 8443\n", None);
        assert_eq!(
            port.location(&req("api.test", "/", None)),
            "https://api.test:8443/"
        );
        let same = redirect("host: New.Example\n", None);
        assert_eq!(
            same.location(&req("api.test:8080", "/x", None)),
            "http://new.example:8080/x"
        );
        let full = redirect("path: /moved\n", None);
        assert_eq!(
            full.location(&req("a:80", "/old/x", Some("q=1"))),
            "http://a/moved?q=1"
        );
        let pre = redirect("replace_prefix: /v2\n", Some("/v1/"));
        assert_eq!(
            pre.location(&req("a", "/v1/orders/7", None)),
            "http://a/v2/orders/7"
        );
        assert_eq!(pre.location(&req("a", "/v1", None)), "http://a/v2");
        let root = redirect("replace_prefix: /\n", Some("/v1"));
        assert_eq!(
            root.location(&req("a", "/v1/orders", None)),
            "http://a/orders"
        );
        // The contract's `{ from, to }` form, on any route.
        let moved = redirect(
            "host: new.example.com\nreplace_prefix: { from: /old, to: /new }\nstatus: 301\n",
            None,
        );
        assert_eq!(
            moved.location(&req("a", "/old/x", Some("k=v"))),
            "http://new.example.com/new/x?k=v"
        );
        assert_eq!(
            moved.location(&req("a", "/older", None)),
            "http://new.example.com/older",
            "segment boundaries"
        );
        assert_eq!(
            redirect("{}", None).location(&req("[::1]:9000", "/p", None)),
            "http://[::1]:9000/p"
        );
    }

    #[test]
    fn bad_redirects_are_refused_with_their_key() {
        let pm = PathMatch {
            exact: Some("/x".into()),
            prefix: None,
            regex: None,
        };
        let e = crate::config::diag::build_yaml(
            "scheme: ftp\nhost: \"a.b:80\"\nport: 0\nreplace_prefix: /y\nstatus: 200\n",
            |r: &Located<RedirectConfig>, diag| Redirect::build(r, &pm, "routes[0]", diag),
        )
        .err()
        .unwrap();
        let keys: Vec<&str> = e.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes[0].redirect.scheme",
                "routes[0].redirect.host",
                "routes[0].redirect.port",
                "routes[0].redirect.replace_prefix",
                "routes[0].redirect.status"
            ]
        );
    }
}
