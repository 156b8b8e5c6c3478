//! `headers.request` / `headers.response`: remove, then set (replacing), then add (appending
//! beside the values already there, as Gateway API's `add`).

use crate::config::{Diag, HeaderOps as HeaderOpsConfig};
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
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
    /// Builds one direction; `key` is e.g. `routes[0].headers.request`.
    pub fn build(
        cfg: &HeaderOpsConfig,
        line: u32,
        key: &str,
        diag: &mut Diag,
    ) -> Option<HeaderOps> {
        let mark = diag.mark();
        let set: Vec<_> = cfg
            .set
            .iter()
            .filter_map(|(k, v)| header_pair(k, v, line, &format!("{key}.set"), diag))
            .collect();
        let add: Vec<_> = cfg
            .add
            .iter()
            .filter_map(|(k, v)| header_pair(k, v, line, &format!("{key}.add"), diag))
            .collect();
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
        diag.ok_since(mark, HeaderOps { set, add, remove })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
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
        let ops = HeaderOps::build(&cfg, 3, "routes[0].headers.request", &mut diag).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-gone", "v".parse().unwrap());
        h.insert("x-multi", "client".parse().unwrap());
        ops.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "1");
        assert!(!h.contains_key("x-gone"));
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["client", "added"]);

        cfg.set.insert("bad name".into(), "v".into());
        cfg.set.insert("x-b".into(), "a\u{7}b".into());
        cfg.remove.push("also bad".into());
        assert!(HeaderOps::build(&cfg, 3, "routes[0].headers.request", &mut diag).is_none());
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
