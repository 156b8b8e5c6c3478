//! `headers.request` / `headers.response`: remove, then set (replacing), then add (appending
//! beside the values already there, as Gateway API's `add`). Values may be templates
//! (`policy::template`), rendered per request.

use super::template::{Template, TemplateInput};
use crate::config::{Diag, HeaderOps as HeaderOpsConfig};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A configured value: fixed, or a template rendered per request.
#[derive(Debug, Clone)]
pub enum OpValue {
    Static(HeaderValue),
    Template(Template),
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, OpValue)>,
    pub add: Vec<(HeaderName, OpValue)>,
    pub remove: Vec<HeaderName>,
    /// Some value is a template (rendering needs the request's `TemplateInput`).
    templated: bool,
}

/// A configured `name: value` pair, checked.
pub fn header_pair(
    name: &str,
    value: &str,
    line: u32,
    key: &str,
    diag: &mut Diag,
) -> Option<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.as_bytes());
    if n.is_err() {
        diag.err(line, key, format!("`{name}` is not a valid header name"));
    }
    let v = HeaderValue::from_str(value);
    if v.is_err() {
        diag.err(
            line,
            key,
            format!("the value of `{name}` is not a valid header value"),
        );
    }
    Some((n.ok()?, v.ok()?))
}

impl HeaderOps {
    /// Builds one direction; `key` is e.g. `routes[0].headers.request`; `response` says which
    /// (response templates cannot read the request).
    pub fn build(
        cfg: &HeaderOpsConfig,
        line: u32,
        key: &str,
        response: bool,
        diag: &mut Diag,
    ) -> Option<HeaderOps> {
        let mark = diag.mark();
        let values = |map: &std::collections::BTreeMap<String, crate::config::HeaderText>,
                      op: &str,
                      diag: &mut Diag| {
            let key = format!("{key}.{op}");
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                let (name, _) = match header_pair(k, v, line, &key, diag) {
                    Some(pair) => pair,
                    None => continue,
                };
                match Template::parse(v, response) {
                    Ok(Some(t)) => out.push((name, OpValue::Template(t))),
                    Ok(None) => match HeaderValue::from_str(&Template::literal(v)) {
                        Ok(hv) => out.push((name, OpValue::Static(hv))),
                        Err(_) => diag.err(
                            line,
                            key.clone(),
                            format!("the value of `{k}` is not a valid header value"),
                        ),
                    },
                    Err(e) => diag.err(line, key.clone(), format!("the value of `{k}`: {e}")),
                }
            }
            out
        };
        let set = values(&cfg.set, "set", diag);
        let add = values(&cfg.add, "add", diag);
        let mut remove = Vec::with_capacity(cfg.remove.len());
        for name in &cfg.remove {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => remove.push(n),
                Err(_) => diag.err(
                    line,
                    format!("{key}.remove"),
                    format!("`{name}` is not a valid header name"),
                ),
            }
        }
        let templated = set
            .iter()
            .chain(&add)
            .any(|(_, v)| matches!(v, OpValue::Template(_)));
        diag.ok_since(
            mark,
            HeaderOps {
                set,
                add,
                remove,
                templated,
            },
        )
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// `name = template` for every templated value, for `explain`.
    pub fn describe_templates(&self) -> Vec<String> {
        let ops = self.set.iter().map(|x| ("set", x));
        ops.chain(self.add.iter().map(|x| ("add", x)))
            .filter_map(|(op, (n, v))| match v {
                OpValue::Template(t) => Some(format!("{op} {n}: {}", t.describe())),
                OpValue::Static(_) => None,
            })
            .collect()
    }

    /// Whether `apply` renders templates (the caller then builds a full `TemplateInput`).
    pub fn is_templated(&self) -> bool {
        self.templated
    }

    /// Remove, then set, then add. Templates are rendered first, from the headers as they were
    /// before this rule changed them; a value that renders to nothing is not sent (for `set`,
    /// the header is then removed).
    pub fn apply(&self, headers: &mut HeaderMap, input: Option<&TemplateInput<'_>>) {
        let render = |v: &OpValue, headers: &HeaderMap| match (v, input) {
            (OpValue::Static(hv), _) => Some(hv.clone()),
            (OpValue::Template(t), Some(i)) => t.render(i, headers),
            (OpValue::Template(_), None) => None,
        };
        let rendered: Option<Vec<Option<HeaderValue>>> = self.templated.then(|| {
            self.set
                .iter()
                .chain(&self.add)
                .map(|(_, v)| render(v, headers))
                .collect()
        });
        let value = |i: usize, v: &OpValue| match &rendered {
            Some(r) => r[i].clone(),
            None => match v {
                OpValue::Static(hv) => Some(hv.clone()),
                OpValue::Template(_) => None,
            },
        };
        for n in &self.remove {
            headers.remove(n);
        }
        for (i, (n, v)) in self.set.iter().enumerate() {
            match value(i, v) {
                Some(hv) => {
                    headers.insert(n.clone(), hv);
                }
                None => {
                    headers.remove(n);
                }
            }
        }
        let offset = self.set.len();
        for (i, (n, v)) in self.add.iter().enumerate() {
            if let Some(hv) = value(offset + i, v) {
                headers.append(n.clone(), hv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_values_are_reported_and_good_ones_apply() {
        let mut cfg = HeaderOpsConfig::default();
        cfg.set.insert("x-a".into(), "1".into());
        cfg.remove.push("x-gone".into());
        cfg.add.insert("x-multi".into(), "added".into());
        let mut diag = Diag::new("t.yaml");
        let ops = HeaderOps::build(&cfg, 3, "routes[0].headers.request", false, &mut diag).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-gone", "v".parse().unwrap());
        h.insert("x-multi", "client".parse().unwrap());
        ops.apply(&mut h, None);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert!(!h.contains_key("x-gone"));
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["client", "added"]);

        cfg.set.insert("bad name".into(), "v".into());
        cfg.set.insert("x-b".into(), "a\u{7}b".into());
        cfg.remove.push("also bad".into());
        assert!(HeaderOps::build(&cfg, 3, "routes[0].headers.request", false, &mut diag).is_none());
        let e = diag.finish("").unwrap_err().0;
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "routes[0].headers.request.set",
                    "`bad name` is not a valid header name"
                ),
                (
                    "routes[0].headers.request.set",
                    "the value of `x-b` is not a valid header value"
                ),
                (
                    "routes[0].headers.request.remove",
                    "`also bad` is not a valid header name"
                ),
            ]
        );
    }
}
