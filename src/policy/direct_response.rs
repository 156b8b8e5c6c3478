//! `direct_response`: the gateway answers the route itself.

use super::header_ops::header_pair;
use crate::body::ResponseBody;
use crate::config::{Diag, DirectResponse as DirectResponseConfig, Located};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

#[derive(Debug)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl DirectResponse {
    pub fn build(
        d: &Located<DirectResponseConfig>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<DirectResponse> {
        let mark = diag.mark();
        let status = match StatusCode::from_u16(d.status) {
            Ok(s) if (200..=599).contains(&d.status) => Some(s),
            _ => {
                diag.err(
                    d.line,
                    format!("{key}.direct_response.status"),
                    "must be between 200 and 599",
                );
                None
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &d.headers {
            if let Some((n, v)) = header_pair(
                name,
                value,
                d.line,
                &format!("{key}.direct_response.headers"),
                diag,
            ) {
                headers.insert(n, v);
            }
        }
        let response = DirectResponse {
            status: status?,
            body: Bytes::from(d.body.0.clone()),
            headers,
        };
        diag.ok_since(mark, response)
    }

    pub fn respond(&self) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}
