//! `headers.request` / `headers.response`: remove, then set.

use crate::config::HeaderOps as HeaderOpsConfig;
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn compile(cfg: &HeaderOpsConfig) -> HeaderOps {
        HeaderOps {
            set: cfg
                .set
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).expect("validated header name"),
                        HeaderValue::from_str(v).expect("validated header value"),
                    )
                })
                .collect(),
            remove: cfg
                .remove
                .iter()
                .map(|k| HeaderName::from_bytes(k.as_bytes()).expect("validated header name"))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
    }
}
