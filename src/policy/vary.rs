//! `Vary` (RFC 9110 §12.5.5): adding a field name to whatever the response already varies on.

use http::header::{HeaderMap, HeaderValue, VARY};

/// Adds `name` (lowercase) to the response's `Vary`, keeping one field line: nothing is added
/// when it is already listed (in any case) or the response varies on `*`.
pub fn add_vary(headers: &mut HeaderMap, name: &str) {
    let mut existing = String::new();
    for v in headers.get_all(VARY) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token == "*" || token.eq_ignore_ascii_case(name) {
                return;
            }
            if !existing.is_empty() {
                existing.push_str(", ");
            }
            existing.push_str(token);
        }
    }
    if existing.is_empty() {
        if let Ok(v) = HeaderValue::from_str(name) {
            headers.insert(VARY, v);
        }
        return;
    }
    existing.push_str(", ");
    existing.push_str(name);
    if let Ok(v) = HeaderValue::from_str(&existing) {
        headers.insert(VARY, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_once_in_one_line() {
        let mut h = HeaderMap::new();
        add_vary(&mut h, "origin");
        assert_eq!(h[VARY], "origin");
        add_vary(&mut h, "origin");
        assert_eq!(h[VARY], "origin");
        let mut h = HeaderMap::new();
        h.append(VARY, HeaderValue::from_static("Accept-Language"));
        h.append(VARY, HeaderValue::from_static("Cookie,  ORIGIN"));
        add_vary(&mut h, "origin");
        assert_eq!(
            h.get_all(VARY).iter().count(),
            2,
            "already there: untouched"
        );
        add_vary(&mut h, "accept-encoding");
        assert_eq!(h.get_all(VARY).iter().count(), 1);
        assert_eq!(h[VARY], "Accept-Language, Cookie, ORIGIN, accept-encoding");
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("*"));
        add_vary(&mut h, "origin");
        assert_eq!(h[VARY], "*");
    }
}
