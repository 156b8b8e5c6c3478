//! Header value templates: `${request_id}`, `${uuid}`, `${client_ip}`, `${route}`,
//! `${upstream}`, `${host}`, `${tenant}`, `${subject}`, `${claim.NAME}` (verified claims only),
//! `${header.NAME}`, `${query.NAME}`, `${host_label.N}`; `$${` writes a literal `${`. Parsed once
//! at load (an unknown variable is a config error); rendered per request. The rule for missing
//! values: a value that is one variable and nothing else is not sent when the variable has no
//! value; otherwise a missing variable renders as empty. A rendered value that is not a valid
//! header value (CR, LF, NUL or other control characters, from a claim or a client header) is
//! never sent.

use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, PartialEq)]
enum Var {
    RequestId,
    Uuid,
    ClientIp,
    Route,
    Upstream,
    Host,
    Tenant,
    Subject,
    Claim(String),
    Header(HeaderName),
    Query(String),
    /// 0 is the leftmost label of the host name.
    HostLabel(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
}

/// One templated value.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template reads from a request.
pub struct TemplateInput<'a> {
    pub request_id: &'a HeaderValue,
    pub client_ip: &'a str,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    /// Without port; None on responses (the request is gone).
    pub host: Option<&'a str>,
    pub principal: Option<&'a crate::auth::Principal>,
    pub query: Option<&'a str>,
    /// The request's tenant (a `{tenant}` host's, else the credential's).
    pub tenant: Option<&'a str>,
}

const VARIABLES: &str = "request_id, uuid, client_ip, route, upstream, host, tenant, subject, \
                         claim.NAME, header.NAME, query.NAME, host_label.N";

fn var(name: &str, response: bool) -> Result<Var, String> {
    let request_only = |v: Var| {
        if response {
            Err(format!(
                "`${{{name}}}` reads the request, which a response header cannot: use it in headers.request"
            ))
        } else {
            Ok(v)
        }
    };
    Ok(match name {
        "request_id" => Var::RequestId,
        "uuid" => Var::Uuid,
        "client_ip" => Var::ClientIp,
        "route" => Var::Route,
        "upstream" => Var::Upstream,
        "host" => return request_only(Var::Host),
        "tenant" => Var::Tenant,
        "subject" => Var::Subject,
        _ => {
            let (kind, arg) = name
                .split_once('.')
                .ok_or_else(|| format!("unknown variable `${{{name}}}` ({VARIABLES})"))?;
            if arg.is_empty() {
                return Err(format!("`${{{name}}}` needs a name after the dot"));
            }
            match kind {
                "claim" => Var::Claim(arg.to_string()),
                "query" => return request_only(Var::Query(arg.to_string())),
                "header" => {
                    let h = HeaderName::from_bytes(arg.as_bytes())
                        .map_err(|_| format!("`{arg}` is not a valid header name"))?;
                    return request_only(Var::Header(h));
                }
                "host_label" => {
                    let n = arg
                        .parse()
                        .map_err(|_| format!("`${{{name}}}`: the label is a number from 0"))?;
                    return request_only(Var::HostLabel(n));
                }
                _ => return Err(format!("unknown variable `${{{name}}}` ({VARIABLES})")),
            }
        }
    })
}

impl Template {
    /// Parses `raw`; None when it holds no variable (a static value). `response`: the value is a
    /// response header's (variables that read the request are refused).
    pub fn parse(raw: &str, response: bool) -> Result<Option<Template>, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(pos) = rest.find('$') {
            text.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(escaped) = after.strip_prefix("$${") {
                text.push_str("${");
                rest = escaped;
            } else if let Some(body) = after.strip_prefix("${") {
                let end = body
                    .find('}')
                    .ok_or_else(|| format!("unterminated `${{` in {raw:?}"))?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var(var(&body[..end], response)?));
                rest = &body[end + 1..];
            } else {
                text.push('$');
                rest = &after[1..];
            }
        }
        text.push_str(rest);
        if parts.is_empty() {
            return Ok(None);
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Some(Template { parts }))
    }

    /// The unrendered text with `$${` unescaped, for a value without variables.
    pub fn literal(raw: &str) -> String {
        raw.replace("$${", "${")
    }

    /// The value for one request; None: not sent (a lone variable without a value, or a
    /// rendering that is not a valid header value).
    /// `headers`: the request's (read by `${header.NAME}`, which responses cannot use).
    pub fn render(&self, input: &TemplateInput<'_>, headers: &HeaderMap) -> Option<HeaderValue> {
        let mut out = Vec::with_capacity(64);
        let lone = self.parts.len() == 1;
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Var(v) => match value(v, input, headers) {
                    Some(bytes) => out.extend_from_slice(&bytes),
                    None if lone => return None,
                    None => {}
                },
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }

    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.replace("${", "$${"),
                Part::Var(v) => format!("${{{}}}", var_name(v)),
            })
            .collect()
    }
}

fn var_name(v: &Var) -> String {
    match v {
        Var::RequestId => "request_id".into(),
        Var::Uuid => "uuid".into(),
        Var::ClientIp => "client_ip".into(),
        Var::Route => "route".into(),
        Var::Upstream => "upstream".into(),
        Var::Host => "host".into(),
        Var::Tenant => "tenant".into(),
        Var::Subject => "subject".into(),
        Var::Claim(c) => format!("claim.{c}"),
        Var::Header(h) => format!("header.{h}"),
        Var::Query(q) => format!("query.{q}"),
        Var::HostLabel(n) => format!("host_label.{n}"),
    }
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn value(v: &Var, input: &TemplateInput<'_>, headers: &HeaderMap) -> Option<Vec<u8>> {
    let text = |s: &str| (!s.is_empty()).then(|| s.as_bytes().to_vec());
    match v {
        Var::RequestId => Some(input.request_id.as_bytes().to_vec()),
        Var::Uuid => Some(uuid_v4().into_bytes()),
        Var::ClientIp => text(input.client_ip),
        Var::Route => text(input.route),
        Var::Upstream => input.upstream.and_then(text),
        Var::Host => input.host.and_then(text),
        Var::Tenant => input.tenant.and_then(text),
        Var::Subject => input.principal?.subject.as_deref().and_then(text),
        Var::Claim(c) => match input.principal?.claims.as_ref()?.get(c)? {
            serde_json::Value::String(s) => text(s),
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
                Some(v.to_string().into_bytes())
            }
            _ => None,
        },
        Var::Header(h) => headers.get(h).map(|v| v.as_bytes().to_vec()),
        Var::Query(q) => crate::router::query_value(input.query, q).map(String::into_bytes),
        Var::HostLabel(n) => input.host?.split('.').nth(*n).and_then(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(rid: &'a HeaderValue, p: Option<&'a crate::auth::Principal>) -> TemplateInput<'a> {
        TemplateInput {
            request_id: rid,
            client_ip: "203.0.113.7",
            route: "orders",
            upstream: Some("orders-v2"),
            host: Some("acme.api.example.com"),
            principal: p,
            query: Some("region=eu%2Dwest&x"),
            tenant: p.and_then(|p| p.tenant.as_deref()),
        }
    }

    #[test]
    fn variables_render_and_missing_ones_follow_the_rule() {
        let rid = HeaderValue::from_static("req-1");
        let mut claims = serde_json::Map::new();
        claims.insert("plan".into(), "pro".into());
        claims.insert("evil".into(), "a\r\nx-injected: 1".into());
        let p = crate::auth::Principal {
            subject: Some("alice".into()),
            tenant: Some("acme".into()),
            claims: Some(claims),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-client", "c1".parse().unwrap());
        let i = input(&rid, Some(&p));
        let render = |s: &str| {
            Template::parse(s, false)
                .unwrap()
                .unwrap()
                .render(&i, &h)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            render("${request_id}|${client_ip}|${route}|${upstream}|${host}").unwrap(),
            "req-1|203.0.113.7|orders|orders-v2|acme.api.example.com"
        );
        assert_eq!(
            render("t=${tenant};s=${subject};p=${claim.plan};h=${header.x-client};q=${query.region};l=${host_label.0}").unwrap(),
            "t=acme;s=alice;p=pro;h=c1;q=eu-west;l=acme"
        );
        // Missing: alone → not sent; among text → empty.
        assert_eq!(render("${claim.missing}"), None);
        assert_eq!(render("v=${claim.missing}").unwrap(), "v=");
        assert_eq!(render("${host_label.9}"), None);
        // A claim carrying CR/LF is never sent.
        assert_eq!(render("${claim.evil}"), None);
        assert_eq!(render("x ${claim.evil}"), None);
        let u = render("${uuid}").unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, render("${uuid}").unwrap());
        // No principal: principal variables are missing.
        let anon = input(&rid, None);
        let t = Template::parse("${subject}", false).unwrap().unwrap();
        assert_eq!(t.render(&anon, &h), None);
    }

    #[test]
    fn parsing_finds_unknown_variables_and_keeps_escapes() {
        assert_eq!(Template::parse("plain", false), Ok(None));
        assert_eq!(Template::parse("cost $5", false), Ok(None));
        assert_eq!(Template::literal("a $${b}"), "a ${b}");
        let t = Template::parse("$${lit} ${route}", false).unwrap().unwrap();
        assert_eq!(t.describe(), "$${lit} ${route}");
        for (bad, want) in [
            ("${nope}", "unknown variable `${nope}`"),
            ("${claim.}", "needs a name after the dot"),
            ("${header.bad name}", "is not a valid header name"),
            ("${host_label.x}", "the label is a number"),
            ("${route", "unterminated"),
        ] {
            let e = Template::parse(bad, false).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(Template::parse("${header.x}", true)
            .unwrap_err()
            .contains("a response header cannot"));
        assert!(Template::parse("${request_id}", true).unwrap().is_some());
    }
}
