//! The storage and freshness rules (RFC 9111 §3, §4.2) on response heads, without sockets; the
//! end-to-end behaviour is in `tests/cache.rs`.

use super::*;

fn policy() -> RoutePolicy {
    RoutePolicy {
        ttl: Some(Duration::from_secs(60)),
        max_ttl: None,
        vary: Vec::new(),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        query_allow: None,
        per_principal: false,
        strip_set_cookie: false,
        own_store: false,
    }
}

fn spec() -> CacheSpec {
    CacheSpec {
        max_bytes: 1 << 26,
        max_object_bytes: 1 << 20,
        coalesce_timeout: Duration::from_secs(5),
        uncacheable_for: Duration::from_secs(10),
        jitter_percent: 0,
        name: "portcullis".into(),
        status_header: true,
        route_shares: Vec::new(),
        shared_prefix: None,
    }
}

fn head(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn decide(
    p: &RoutePolicy,
    authenticated: bool,
    request: &[(&str, &str)],
    h: &http::response::Parts,
) -> Result<Stored, &'static str> {
    let mut req = HeaderMap::new();
    for (k, v) in request {
        req.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let now = SystemTime::now();
    storable(
        p,
        &spec(),
        &Directives::of(&req),
        authenticated,
        h,
        &req,
        "k".into(),
        Times {
            request_time: now,
            response_time: now,
            date: now,
            age_value: 0,
        },
    )
}

#[test]
fn statuses_without_explicit_freshness_are_stored_only_when_heuristically_cacheable() {
    let p = policy();
    assert_eq!(
        decide(&p, false, &[], &head(200, &[]))
            .unwrap()
            .freshness
            .lifetime,
        Duration::from_secs(60),
        "the route's ttl_s"
    );
    assert_eq!(
        decide(&p, false, &[], &head(302, &[])).err(),
        Some("no-freshness")
    );
    assert!(decide(
        &p,
        false,
        &[],
        &head(302, &[("cache-control", "max-age=5")])
    )
    .is_ok());
    assert_eq!(
        decide(
            &p,
            false,
            &[],
            &head(206, &[("cache-control", "max-age=5")])
        )
        .err(),
        Some("status")
    );
    assert_eq!(
        decide(
            &p,
            false,
            &[],
            &head(500, &[("cache-control", "max-age=5")])
        )
        .err(),
        Some("status")
    );
    let no_ttl = RoutePolicy {
        ttl: None,
        ..policy()
    };
    assert_eq!(
        decide(&no_ttl, false, &[], &head(200, &[])).err(),
        Some("no-freshness")
    );
}

#[test]
fn authorization_follows_rfc_9111_section_3_5() {
    let p = policy();
    let cc = |v| head(200, &[("cache-control", v)]);
    assert_eq!(
        decide(&p, true, &[], &cc("max-age=60")).err(),
        Some("authorization")
    );
    for ok in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        assert!(decide(&p, true, &[], &cc(ok)).is_ok(), "{ok}");
    }
    let per_principal = RoutePolicy {
        per_principal: true,
        ..policy()
    };
    assert!(decide(&per_principal, true, &[], &cc("max-age=60")).is_ok());
    assert_eq!(
        decide(&per_principal, true, &[], &cc("private, max-age=60")).err(),
        Some("private"),
        "private is never stored, partition or not"
    );
    // A public route receiving Authorization anyway: the same rule.
    let auth = [("authorization", "Bearer x")];
    assert_eq!(
        decide(&p, false, &auth, &cc("max-age=60")).err(),
        Some("authorization")
    );
    assert!(decide(&p, false, &auth, &cc("public, max-age=60")).is_ok());
}

#[test]
fn set_cookie_is_refused_or_stripped_and_hop_by_hop_fields_are_never_stored() {
    let h = head(
        200,
        &[
            ("set-cookie", "a=b"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("age", "3"),
            ("surrogate-key", "k1 k2"),
            ("x-kept", "yes"),
        ],
    );
    assert_eq!(decide(&policy(), false, &[], &h).err(), Some("set-cookie"));
    let strip = RoutePolicy {
        strip_set_cookie: true,
        ..policy()
    };
    let s = decide(&strip, false, &[], &h).unwrap();
    for gone in [
        "set-cookie",
        "connection",
        "x-hop",
        "keep-alive",
        "age",
        "surrogate-key",
    ] {
        assert!(!s.headers.contains_key(gone), "{gone}");
    }
    assert_eq!(s.headers["x-kept"], "yes");
    assert_eq!(
        &*s.surrogate_keys,
        &["k1".into(), "k2".into()] as &[Box<str>]
    );
}

#[test]
fn freshness_precedence_caps_and_jitter() {
    let p = RoutePolicy {
        max_ttl: Some(Duration::from_secs(100)),
        ..policy()
    };
    let life = |v: &str| {
        decide(&p, false, &[], &head(200, &[("cache-control", v)]))
            .map(|s| s.freshness.lifetime.as_secs())
    };
    assert_eq!(life("max-age=30, s-maxage=50"), Ok(50));
    assert_eq!(life("max-age=3000"), Ok(100), "max_ttl_s caps");
    assert_eq!(
        life("max-age=0"),
        Err("no-freshness"),
        "stale at once, no validator"
    );
    let with_tag = head(200, &[("cache-control", "max-age=0"), ("etag", "\"a\"")]);
    assert!(
        decide(&p, false, &[], &with_tag).is_ok(),
        "kept for revalidation"
    );
    let d = decide(
        &p,
        false,
        &[],
        &head(
            200,
            &[("cache-control", "s-maxage=5, stale-while-revalidate=9")],
        ),
    )
    .unwrap();
    assert!(
        d.freshness.forbids_stale,
        "s-maxage implies proxy-revalidate"
    );
    assert_eq!(d.freshness.stale_while_revalidate, Duration::from_secs(9));
    for _ in 0..200 {
        let j = jitter(Duration::from_secs(100), 5);
        assert!(
            j <= Duration::from_secs(100) && j >= Duration::from_secs(95),
            "{j:?}"
        );
    }
    assert_eq!(jitter(Duration::from_secs(5), 5), Duration::from_secs(5));
}

#[test]
fn request_no_store_and_vary_star_are_never_stored() {
    assert_eq!(
        decide(
            &policy(),
            false,
            &[("cache-control", "no-store")],
            &head(200, &[])
        )
        .err(),
        Some("no-store")
    );
    assert_eq!(
        decide(&policy(), false, &[], &head(200, &[("vary", "*")])).err(),
        Some("vary-star")
    );
    assert_eq!(
        decide(
            &policy(),
            false,
            &[],
            &head(200, &[("content-length", "2000000")])
        )
        .err(),
        Some("too-large")
    );
}
