//! Every response the gateway produces itself on a refused or failed request goes through here,
//! so each has the right status and the same JSON shape:
//! `{"error": "...", "request_id": "..."}`.

use crate::body::ResponseBody;
use crate::router::normalize::PathError;
use http::{header, HeaderValue, Response, StatusCode};

#[derive(Debug)]
pub enum Reject {
    NoRoute,
    BadPath(PathError),
    BadRequest(String),
    /// The request's framing is ambiguous or invalid: 400, and the connection is closed (what
    /// follows on it cannot be trusted to start a new request).
    BadFraming(String),
    /// A transfer coding the gateway does not implement: 501, and the connection is closed.
    NotImplemented(String),
    MissingHeader(String),
    HeadersTooLarge(u64),
    PayloadTooLarge(u64),
    UnsupportedMediaType(String),
    /// The body is not the JSON document the route's schema asks for: 400 problem+json.
    BadBody(Box<crate::policy::json_schema::BodyProblem>),
    /// The listener's concurrent request limit is reached: shed load instead of queueing.
    Overloaded,
    /// The upstream's bulkhead (`max_concurrent_requests`) is full.
    UpstreamBusy(String),
    /// Every target is unhealthy or held off by its circuit breaker.
    NoTargetAvailable(String),
    UpstreamConnect(String),
    UpstreamFailed(String),
    UpstreamTimeout(u64),
    ClientBody(String),
    Status(StatusCode, String),
    /// A rate limit refused the request: 429 with its headers.
    RateLimited(String, Box<crate::ratelimit::RateHeaders>),
    /// A Redis limit with `on_store_failure: deny` could not reach Redis.
    RateLimitStoreDown(String),
    /// Authentication failed: 401 with a `WWW-Authenticate` challenge.
    Unauthorized(crate::auth::Failure),
    /// Authenticated but not allowed: 403 `insufficient_scope`.
    Forbidden(crate::auth::Denied),
    /// An IP rule (by name) denied the client address: 403.
    IpDenied(std::sync::Arc<str>),
    /// The tenant phase refused: a host/credential mismatch or a status (403), or a status
    /// that could not be read (503).
    Tenant(crate::tenant::TenantRefusal),
    /// An edge rule refused the request (its status: 400, 403, 405 or 431).
    EdgeRule(Box<crate::edge::rules::RuleHit>),
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::BadPath(_)
            | Reject::BadRequest(_)
            | Reject::BadFraming(_)
            | Reject::MissingHeader(_)
            | Reject::BadBody(_)
            | Reject::ClientBody(_) => StatusCode::BAD_REQUEST,
            Reject::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Reject::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::Overloaded
            | Reject::UpstreamBusy(_)
            | Reject::NoTargetAvailable(_)
            | Reject::RateLimitStoreDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Reject::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            Reject::Unauthorized(f) if f.reason == crate::auth::Reason::ProviderUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Reject::Forbidden(_) | Reject::IpDenied(_) => StatusCode::FORBIDDEN,
            Reject::Tenant(crate::tenant::TenantRefusal::Unavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::Tenant(_) => StatusCode::FORBIDDEN,
            Reject::EdgeRule(hit) => hit.status,
            Reject::UpstreamConnect(_) | Reject::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Reject::Status(s, _) => *s,
        }
    }

    /// Who failed, or which policy refused: the request error metric's labels.
    pub fn error_kind(&self) -> crate::observe::metrics::ErrorKind {
        use crate::observe::metrics::{ErrorKind as K, Policy as P};
        match self {
            Reject::UpstreamTimeout(_) => K::Timeout,
            Reject::UpstreamConnect(_) | Reject::NoTargetAvailable(_) => K::ConnectFailure,
            Reject::UpstreamFailed(_) => K::Reset,
            Reject::NoRoute => K::Refused(P::NoRoute),
            Reject::Unauthorized(_) => K::Refused(P::Auth),
            Reject::Forbidden(_) | Reject::Tenant(_) => K::Refused(P::Authorization),
            Reject::RateLimited(..) | Reject::RateLimitStoreDown(_) => K::Refused(P::RateLimit),
            Reject::IpDenied(_) => K::Refused(P::IpRules),
            Reject::EdgeRule(_) => K::Refused(P::EdgeRules),
            Reject::PayloadTooLarge(_) | Reject::HeadersTooLarge(_) => K::Refused(P::Size),
            Reject::BadPath(_)
            | Reject::BadRequest(_)
            | Reject::BadFraming(_)
            | Reject::NotImplemented(_)
            | Reject::MissingHeader(_)
            | Reject::UnsupportedMediaType(_)
            | Reject::BadBody(_)
            | Reject::ClientBody(_) => K::Refused(P::Request),
            Reject::Status(s, _) if *s == StatusCode::REQUEST_TIMEOUT => K::Refused(P::Request),
            Reject::Overloaded | Reject::UpstreamBusy(_) => K::Refused(P::Overload),
            Reject::Status(..) => K::Refused(P::Other),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Reject::NoRoute => "no route matches this request".into(),
            Reject::BadPath(e) => e.to_string(),
            Reject::BadRequest(m)
            | Reject::BadFraming(m)
            | Reject::NotImplemented(m)
            | Reject::ClientBody(m)
            | Reject::Status(_, m) => m.clone(),
            Reject::MissingHeader(h) => format!("missing required header {h}"),
            Reject::BadBody(p) => p.summary().into(),
            Reject::HeadersTooLarge(n) => format!("request headers are larger than {n} bytes"),
            Reject::PayloadTooLarge(n) => format!("request body is larger than {n} bytes"),
            Reject::UnsupportedMediaType(t) => {
                format!("content type {t} is not accepted on this route")
            }
            Reject::Overloaded => {
                "gateway is at its concurrent request limit; retry shortly".into()
            }
            Reject::UpstreamBusy(u) => format!("upstream {u} is at its concurrent request limit"),
            Reject::NoTargetAvailable(u) => format!("no healthy target in upstream {u}"),
            Reject::UpstreamConnect(u) => format!("cannot connect to upstream {u}"),
            Reject::UpstreamFailed(u) => {
                format!("upstream {u} closed the connection without a response")
            }
            Reject::UpstreamTimeout(ms) => format!("upstream did not answer within {ms} ms"),
            Reject::RateLimited(limit, _) => format!("rate limit {limit} exceeded"),
            Reject::RateLimitStoreDown(limit) => {
                format!("rate limit {limit} cannot be checked right now")
            }
            Reject::Unauthorized(f) if f.reason == crate::auth::Reason::ProviderUnavailable => {
                format!("authentication unavailable: {}", f.description)
            }
            Reject::Unauthorized(f) => format!("unauthorized: {}", f.description),
            Reject::Forbidden(_) => "forbidden: insufficient scope or claims".into(),
            // The rule's name is in the access log, not in the answer an attacker reads.
            Reject::IpDenied(_) => "forbidden: client address not allowed".into(),
            Reject::Tenant(r) => r.message(),
            Reject::EdgeRule(hit) => hit.message.into(),
        }
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        if let Reject::BadBody(p) = &self {
            let mut resp = json_response(
                StatusCode::BAD_REQUEST,
                &p.to_json(request_id.to_str().unwrap_or_default()),
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            return resp;
        }
        let mut resp = json_error(self.status(), &self.message(), request_id);
        match &self {
            Reject::Overloaded
            | Reject::UpstreamBusy(_)
            | Reject::NoTargetAvailable(_)
            | Reject::RateLimitStoreDown(_)
            | Reject::Tenant(crate::tenant::TenantRefusal::Unavailable) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::RateLimited(_, headers) => headers.apply(resp.headers_mut()),
            Reject::Unauthorized(f) if f.reason == crate::auth::Reason::ProviderUnavailable => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Reject::Unauthorized(f) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, f.challenge());
            }
            Reject::Forbidden(d) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, d.challenge());
            }
            Reject::EdgeRule(hit) => {
                if let Some(allow) = &hit.allow {
                    resp.headers_mut().insert(header::ALLOW, allow.clone());
                }
            }
            Reject::BadFraming(_) | Reject::NotImplemented(_) => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

pub fn json_error(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    json_response(status, &body)
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut bytes = serde_json::to_vec(body).expect("JSON value serialises");
    bytes.push(b'\n');
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
