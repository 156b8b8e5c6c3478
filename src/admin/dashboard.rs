//! The read-only dashboard: four static files compiled into the binary, served by the admin
//! listener without the token (the page asks for it and sends it as a bearer header to the
//! JSON endpoints, which do need it). A strict Content-Security-Policy: no inline script or
//! style, nothing from another origin, no framing.

use crate::body::ResponseBody;
use http::{header, HeaderValue, Response, StatusCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Page,
    Script,
    Style,
    Icon,
}

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Bytes of all embedded assets (stated in the README).
pub fn assets_size() -> usize {
    PAGE.len() + SCRIPT.len() + STYLE.len() + ICON.len()
}

pub fn serve(asset: Asset) -> Response<ResponseBody> {
    let (body, content_type) = match asset {
        Asset::Page => (PAGE, "text/html; charset=utf-8"),
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
        Asset::Icon => (ICON, "image/svg+xml"),
    };
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary; revalidate rather than keep a stale copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style_and_the_assets_are_small() {
        assert!(!PAGE.contains("<script>"), "inline script in the page");
        assert!(!PAGE.contains(" style="), "inline style in the page");
        assert!(!PAGE.contains("<style"), "inline style in the page");
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(PAGE.contains(r#"<script src="/dashboard/app.js" defer></script>"#));
        assert!(assets_size() < 64 * 1024, "{} bytes", assets_size());
    }
}
