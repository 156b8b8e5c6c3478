//! RFC 9421 §2: the component values of a request and the signature base built from them.
//! Everything is taken from the request as the client sent it (before any rewrite).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::HeaderMap;
use sfv::{BareItem, FieldType, InnerList, Item, ListEntry, Parser};

/// What the signature base needs from a request.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Host and port as sent (`Host` or `:authority`).
    pub authority: &'a str,
    /// The path as sent (not normalized).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Why a signature base cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    #[error("{0}")]
    Malformed(String),
    /// A covered component is not in the request.
    #[error("covered component {0} is not in the request")]
    Absent(String),
}

fn malformed(m: impl Into<String>) -> BaseError {
    BaseError::Malformed(m.into())
}

/// Fields whose structured type is known, for the `sf` and `key` parameters (RFC 9421 §2.1.1).
fn field_type(name: &str) -> Option<&'static str> {
    Some(match name {
        "signature"
        | "signature-input"
        | "accept-signature"
        | "content-digest"
        | "repr-digest"
        | "want-content-digest"
        | "want-repr-digest"
        | "priority"
        | "example-dict" => "dict",
        "cache-status" | "proxy-status" | "accept-ch" | "client-hints" | "example-list" => "list",
        "example-item" | "sec-ch-ua-mobile" => "item",
        _ => return None,
    })
}

/// One component identifier: its name and the parameters that change its value.
struct Component<'a> {
    name: &'a str,
    item: &'a Item,
}

impl<'a> Component<'a> {
    fn of(item: &'a Item) -> Result<Component<'a>, BaseError> {
        let BareItem::String(name) = &item.bare_item else {
            return Err(malformed("component identifiers are strings"));
        };
        let name = name.as_str();
        for (key, value) in &item.params {
            let ok = match key.as_str() {
                "sf" | "bs" => value.as_boolean() == Some(true),
                "key" | "name" => value.as_string().is_some(),
                // `req` binds a response to its request and `tr` reads trailers: neither
                // applies to a request's signature.
                "req" | "tr" => {
                    return Err(malformed(format!(
                        "component parameter `{}` does not apply to a request",
                        key.as_str()
                    )))
                }
                _ => false,
            };
            if !ok {
                return Err(malformed(format!(
                    "unknown or invalid component parameter `{}`",
                    key.as_str()
                )));
            }
        }
        Ok(Component { name, item })
    }

    fn param(&self, key: &str) -> Option<&BareItem> {
        self.item
            .params
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    fn flag(&self, key: &str) -> bool {
        self.param(key).and_then(BareItem::as_boolean) == Some(true)
    }

    /// The identifier as it appears in the base: the serialized item.
    fn identifier(&self) -> Result<String, BaseError> {
        Ok(self.item.serialize())
    }
}

/// Builds the signature base (§2.5) for `components` (the inner list of `Signature-Input`),
/// ending with the `@signature-params` line.
pub fn signature_base(components: &InnerList, req: &SignedRequest) -> Result<String, BaseError> {
    let mut base = String::with_capacity(256);
    let mut seen: Vec<String> = Vec::with_capacity(components.items.len());
    for item in &components.items {
        let c = Component::of(item)?;
        let id = c.identifier()?;
        if seen.contains(&id) {
            return Err(malformed(format!("component {id} is listed twice")));
        }
        let values = if let Some(derived) = c.name.strip_prefix('@') {
            derived_values(derived, &c, req)?
        } else {
            vec![field_value(&c, req.headers)?]
        };
        for v in values {
            if v.contains(['\n', '\r']) {
                return Err(malformed(format!("component {id} has a line break")));
            }
            base.push_str(&id);
            base.push_str(": ");
            base.push_str(&v);
            base.push('\n');
        }
        seen.push(id);
    }
    let params = sfv::List::from(vec![ListEntry::InnerList(components.clone())])
        .serialize()
        .ok_or_else(|| malformed("signature parameters cannot be serialized"))?;
    base.push_str("\"@signature-params\": ");
    base.push_str(&params);
    Ok(base)
}

/// A derived component's values (one, or one per occurrence for `@query-param`).
fn derived_values(
    name: &str,
    c: &Component,
    req: &SignedRequest,
) -> Result<Vec<String>, BaseError> {
    if c.flag("sf") || c.flag("bs") || c.param("key").is_some() {
        return Err(malformed(format!(
            "derived component @{name} takes no sf, bs or key parameter"
        )));
    }
    if name != "query-param" && c.param("name").is_some() {
        return Err(malformed("only @query-param takes a name parameter"));
    }
    let path = if req.path.is_empty() { "/" } else { req.path };
    let query = || format!("?{}", req.query.unwrap_or(""));
    Ok(vec![match name {
        "method" => req.method.to_string(),
        "scheme" => req.scheme.to_ascii_lowercase(),
        "authority" => authority(req),
        "target-uri" => {
            let mut s = format!("{}://{}{}", req.scheme, authority(req), path);
            if let Some(q) = req.query {
                s.push('?');
                s.push_str(q);
            }
            s
        }
        "request-target" => match req.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
        "path" => path.to_string(),
        "query" => query(),
        "query-param" => return query_param(c, req),
        "status" => return Err(malformed("@status belongs to responses")),
        other => return Err(malformed(format!("unknown derived component @{other}"))),
    }])
}

/// `@authority` normalized per RFC 9110 §4.2.3: lowercase, the scheme's default port left out.
fn authority(req: &SignedRequest) -> String {
    let a = req.authority.to_ascii_lowercase();
    let default = if req.scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    match a.strip_suffix(default) {
        Some(host) => host.to_string(),
        None => a,
    }
}

/// `@query-param;name=…` (§2.2.8): every occurrence's value, form-decoded then
/// percent-encoded again, one line each.
fn query_param(c: &Component, req: &SignedRequest) -> Result<Vec<String>, BaseError> {
    let Some(name) = c.param("name").and_then(BareItem::as_string) else {
        return Err(malformed("@query-param needs a name parameter"));
    };
    let wanted = form_decode(name.as_str());
    let values: Vec<String> = req
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(n) == wanted).then(|| percent_encode(&form_decode(v)))
        })
        .collect();
    if values.is_empty() {
        return Err(BaseError::Absent(format!(
            "\"@query-param\";name=\"{}\"",
            name.as_str()
        )));
    }
    Ok(values)
}

/// `application/x-www-form-urlencoded` decoding of one name or value, as bytes.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes everything but the form-urlencoded safe set (alphanumerics and `*-._`).
fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_') {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// A field's value (§2.1): its lines trimmed and joined with `, `; or re-serialized (`sf`),
/// one dictionary member (`key`), or each line as a byte sequence (`bs`).
fn field_value(c: &Component, headers: &HeaderMap) -> Result<String, BaseError> {
    let name = c.name;
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!(
            "field component `{name}` must be a lowercase field name"
        )));
    }
    if c.param("name").is_some() {
        return Err(malformed("only @query-param takes a name parameter"));
    }
    let mut lines = Vec::new();
    for v in headers.get_all(name) {
        let v = v
            .to_str()
            .map_err(|_| malformed(format!("field {name} is not visible ASCII")))?;
        lines.push(v.trim_matches([' ', '\t']));
    }
    if lines.is_empty() {
        return Err(BaseError::Absent(format!("\"{name}\"")));
    }
    let bs = c.flag("bs");
    let key = c.param("key").and_then(BareItem::as_string);
    if bs {
        if c.flag("sf") || key.is_some() {
            return Err(malformed("bs cannot be combined with sf or key"));
        }
        return Ok(lines
            .iter()
            .map(|l| format!(":{}:", STANDARD.encode(l.as_bytes())))
            .collect::<Vec<_>>()
            .join(", "));
    }
    let joined = lines.join(", ");
    if let Some(key) = key {
        let dict: sfv::Dictionary = Parser::new(&joined)
            .parse()
            .map_err(|_| malformed(format!("field {name} is not a dictionary")))?;
        let member = dict
            .iter()
            .find(|(k, _)| k.as_str() == key.as_str())
            .map(|(_, v)| v)
            .ok_or_else(|| BaseError::Absent(format!("\"{name}\";key=\"{}\"", key.as_str())))?;
        return match member {
            ListEntry::Item(i) => Some(i.serialize()),
            ListEntry::InnerList(_) => sfv::List::from(vec![member.clone()]).serialize(),
        }
        .ok_or_else(|| malformed(format!("field {name} cannot be serialized")));
    }
    if c.flag("sf") {
        let bad = || malformed(format!("field {name} is not a valid structured field"));
        return match field_type(name) {
            Some("dict") => Parser::new(&joined)
                .parse::<sfv::Dictionary>()
                .map_err(|_| bad())?
                .serialize(),
            Some("list") => Parser::new(&joined)
                .parse::<sfv::List>()
                .map_err(|_| bad())?
                .serialize(),
            Some(_) => Some(
                Parser::new(&joined)
                    .parse::<Item>()
                    .map_err(|_| bad())?
                    .serialize(),
            ),
            None => {
                return Err(malformed(format!(
                    "field {name} has no known structured type for `sf`"
                )))
            }
        }
        .map(Ok)
        .unwrap_or_else(|| Ok(String::new()));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded_then_encoded_again() {
        let h = HeaderMap::new();
        let req = SignedRequest {
            method: "GET",
            scheme: "https",
            authority: "example.com",
            path: "/path",
            query: Some("var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something&qux="),
            headers: &h,
        };
        let list = |s: &str| -> InnerList {
            match Parser::new(s).parse::<sfv::List>().unwrap().remove(0) {
                ListEntry::InnerList(i) => i,
                _ => unreachable!(),
            }
        };
        let base = signature_base(
            &list(r#"("@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20" "@query-param";name="qux")"#),
            &req,
        )
        .unwrap();
        let lines: Vec<&str> = base.lines().collect();
        assert_eq!(
            lines[0],
            "\"@query-param\";name=\"var\": this%20is%20a%20big%0Amultiline%20value"
        );
        assert_eq!(
            lines[1],
            "\"@query-param\";name=\"bar\": with%20plus%20whitespace"
        );
        assert_eq!(
            lines[2],
            "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something"
        );
        assert_eq!(lines[3], "\"@query-param\";name=\"qux\": ");
        let e = signature_base(&list(r#"("@query-param";name="nope")"#), &req).unwrap_err();
        assert!(matches!(e, BaseError::Absent(_)));
    }

    #[test]
    fn fields_are_trimmed_joined_and_parameterised() {
        let mut h = HeaderMap::new();
        h.append(
            "example-dict",
            " a=1,    b=2;x=1;y=2, c=(a   b   c)".parse().unwrap(),
        );
        h.append("x-two", "one ".parse().unwrap());
        h.append("x-two", " two".parse().unwrap());
        let req = SignedRequest {
            method: "GET",
            scheme: "http",
            authority: "Example.COM:80",
            path: "",
            query: None,
            headers: &h,
        };
        let list = |s: &str| -> InnerList {
            match Parser::new(s).parse::<sfv::List>().unwrap().remove(0) {
                ListEntry::InnerList(i) => i,
                _ => unreachable!(),
            }
        };
        let base = signature_base(
            &list(r#"("example-dict";sf "example-dict";key="b" "example-dict";key="c" "x-two" "x-two";bs "@authority" "@path" "@query" "@target-uri")"#),
            &req,
        )
        .unwrap();
        let lines: Vec<&str> = base.lines().collect();
        assert_eq!(lines[0], "\"example-dict\";sf: a=1, b=2;x=1;y=2, c=(a b c)");
        assert_eq!(lines[1], "\"example-dict\";key=\"b\": 2;x=1;y=2");
        assert_eq!(lines[2], "\"example-dict\";key=\"c\": (a b c)");
        assert_eq!(lines[3], "\"x-two\": one, two");
        assert_eq!(lines[4], "\"x-two\";bs: :b25l:, :dHdv:");
        assert_eq!(lines[5], "\"@authority\": example.com");
        assert_eq!(lines[6], "\"@path\": /");
        assert_eq!(lines[7], "\"@query\": ?");
        assert_eq!(lines[8], "\"@target-uri\": http://example.com/");
        for bad in [
            r#"("Content-Type")"#,
            r#"("@status")"#,
            r#"("x-two" "x-two")"#,
            r#"("x-two";req)"#,
            r#"("@method";sf)"#,
            r#"("@unknown")"#,
            r#"(x-two)"#,
        ] {
            assert!(
                matches!(
                    signature_base(&list(bad), &req),
                    Err(BaseError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            signature_base(&list(r#"("date")"#), &req),
            Err(BaseError::Absent(_))
        ));
    }
}
