//! The compiled router. Built once per config into hash tables keyed by host and path, so a
//! request does a handful of lookups (one per host tier and path segment), never a scan of all
//! routes.
//!
//! Precedence, in order: host tier (exact host, then wildcard suffixes longest first, then
//! routes without hosts) → path (exact, then the longest matching prefix on a segment boundary,
//! then regex) → routes that list methods before routes that accept any method → routes with
//! more header predicates first → then more query predicates → higher `priority` → earlier in
//! the file.

pub mod explain;
pub mod normalize;

use crate::config::{Diag, Located, PathMatch, RouteMatch};
use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexSet};
use std::collections::HashMap;

/// What the router looks at in a request.
pub struct RequestView<'a> {
    /// Lower-case, without port or trailing dot; empty when the request named no host.
    pub host: &'a str,
    /// Normalized path (see `normalize`).
    pub path: &'a str,
    pub method: &'a Method,
    /// Match routes whatever methods they list (a CORS preflight's second look).
    pub any_method: bool,
    pub headers: &'a HeaderMap,
    /// The raw query string (without `?`), if any.
    pub query: Option<&'a str>,
}

#[derive(Debug)]
pub enum PathRule {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathRule {
    pub fn describe(&self) -> String {
        match self {
            PathRule::Exact(p) => format!("exact {p}"),
            PathRule::Prefix(p) => format!("prefix {p}"),
            PathRule::Regex(r) => format!("regex {}", r.as_str()),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Exact(p) => path == p,
            PathRule::Prefix(p) => prefix_matches(p, path),
            PathRule::Regex(r) => r.is_match(path),
        }
    }
}

/// Prefixes match whole segments: `/v1/orders` matches `/v1/orders` and `/v1/orders/7`, never
/// `/v1/ordersbackup`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[derive(Debug)]
pub enum HeaderRule {
    Present(HeaderName),
    Equals(HeaderName, String),
    Regex(HeaderName, Regex),
}

impl HeaderRule {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match self {
            HeaderRule::Present(n) => headers.contains_key(n),
            HeaderRule::Equals(n, v) => headers
                .get_all(n)
                .iter()
                .any(|x| x.as_bytes() == v.as_bytes()),
            HeaderRule::Regex(n, r) => headers
                .get_all(n)
                .iter()
                .any(|x| x.to_str().is_ok_and(|s| r.is_match(s))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            HeaderRule::Present(n) => format!("{n} present"),
            HeaderRule::Equals(n, v) => format!("{n} = {v:?}"),
            HeaderRule::Regex(n, r) => format!("{n} ~ /{}/", r.as_str()),
        }
    }
}

/// A query parameter predicate, on the parameter's first occurrence (percent-decoded, `+` as a
/// space); names are compared exactly (case-sensitive), as Gateway API's `queryParams`.
#[derive(Debug)]
pub enum QueryRule {
    Present(String),
    Equals(String, String),
    Regex(String, Regex),
}

/// The first value of `name` in `query`, decoded. `Some("")` for `?name` and `?name=`.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = normalize::percent_decode(k, true);
        (k == name.as_bytes())
            .then(|| String::from_utf8_lossy(&normalize::percent_decode(v, true)).into_owned())
    })
}

impl QueryRule {
    pub fn matches(&self, query: Option<&str>) -> bool {
        match self {
            QueryRule::Present(n) => query_value(query, n).is_some(),
            QueryRule::Equals(n, v) => query_value(query, n).is_some_and(|x| x == *v),
            QueryRule::Regex(n, r) => query_value(query, n).is_some_and(|x| r.is_match(&x)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            QueryRule::Present(n) => format!("?{n} present"),
            QueryRule::Equals(n, v) => format!("?{n} = {v:?}"),
            QueryRule::Regex(n, r) => format!("?{n} ~ /{}/", r.as_str()),
        }
    }
}

/// One route's match criteria in compiled form.
#[derive(Debug)]
pub struct RouteMatcher {
    pub name: String,
    /// Position in the file (0-based).
    pub index: usize,
    pub hosts: Vec<String>,
    pub path: PathRule,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<HeaderRule>,
    pub query: Vec<QueryRule>,
    pub priority: i32,
}

impl RouteMatcher {
    /// Builds a route's `match`; `key` is e.g. `routes[0]`.
    pub fn build(
        name: &str,
        index: usize,
        priority: i32,
        m: &Located<RouteMatch>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<RouteMatcher> {
        let mark = diag.mark();
        for (j, h) in m.hosts.iter().enumerate() {
            if let Err(msg) = check_host_pattern(h) {
                diag.err(h.line, format!("{key}.match.hosts[{j}]"), msg);
            }
        }
        let path = build_path(&m.path, &format!("{key}.match.path"), diag);
        let methods = m.methods.as_ref().map(|methods| {
            if methods.is_empty() {
                diag.err(
                    methods.line,
                    format!("{key}.match.methods"),
                    "must not be empty (omit it to match every method)",
                );
            }
            let mut out = Vec::with_capacity(methods.len());
            for meth in methods.iter() {
                match Method::from_bytes(meth.as_bytes()) {
                    Ok(mm) if !meth.bytes().any(|b| b.is_ascii_lowercase()) => out.push(mm),
                    _ => diag.err(
                        methods.line,
                        format!("{key}.match.methods"),
                        format!("`{meth}` is not an upper-case HTTP method"),
                    ),
                }
            }
            out
        });
        let mut headers = Vec::with_capacity(m.headers.len());
        for (j, h) in m.headers.iter().enumerate() {
            let hkey = format!("{key}.match.headers[{j}]");
            let header_name = HeaderName::from_bytes(h.name.as_bytes());
            if header_name.is_err() {
                diag.err(
                    h.line,
                    format!("{hkey}.name"),
                    format!("`{}` is not a valid header name", h.name),
                );
            }
            if h.value.value.is_some() && h.regex.is_some() {
                diag.err(h.line, hkey.clone(), "give `value` or `regex`, not both");
            }
            let regex = h
                .regex
                .as_ref()
                .and_then(|re| compile_regex(re, h.line, &format!("{hkey}.regex"), diag));
            if let Ok(n) = header_name {
                headers.push(match (&h.value.value, regex) {
                    (Some(v), _) => HeaderRule::Equals(n, v.0.clone()),
                    (None, Some(r)) => HeaderRule::Regex(n, r),
                    (None, None) => HeaderRule::Present(n),
                });
            }
        }
        let mut query = Vec::with_capacity(m.query.len());
        for (j, located) in m.query.iter().enumerate() {
            let (q, line) = (&located.value, located.line);
            let qkey = format!("{key}.match.query[{j}]");
            if q.name.is_empty() {
                diag.err(line, format!("{qkey}.name"), "must not be empty");
            }
            let given = [q.value.is_some(), q.regex.is_some(), q.present.is_some()];
            if given.iter().filter(|g| **g).count() > 1 {
                diag.err(
                    line,
                    qkey.clone(),
                    "give one of `value`, `regex`, `present`",
                );
            }
            if q.present == Some(false) {
                diag.err(
                    line,
                    format!("{qkey}.present"),
                    "only `present: true` is supported (omit the predicate otherwise)",
                );
            }
            let regex = q
                .regex
                .as_ref()
                .and_then(|re| compile_regex(re, line, &format!("{qkey}.regex"), diag));
            let n = q.name.to_string();
            query.push(match (&q.value, regex) {
                (Some(v), _) => QueryRule::Equals(n, v.to_string()),
                (None, Some(r)) => QueryRule::Regex(n, r),
                (None, None) => QueryRule::Present(n),
            });
        }
        let matcher = RouteMatcher {
            name: name.to_string(),
            index,
            hosts: m.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path: path?,
            methods,
            headers,
            query,
            priority,
        };
        diag.ok_since(mark, matcher)
    }

    pub fn method_matches(&self, m: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(m))
    }

    /// The first header predicate that fails, if any.
    pub fn failing_header(&self, headers: &HeaderMap) -> Option<&HeaderRule> {
        self.headers.iter().find(|h| !h.matches(headers))
    }

    /// The first query predicate that fails, if any.
    pub fn failing_query(&self, query: Option<&str>) -> Option<&QueryRule> {
        self.query.iter().find(|q| !q.matches(query))
    }

    /// Sort key within one path bucket; smaller wins.
    fn rank(
        &self,
    ) -> (
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<i32>,
        usize,
    ) {
        (
            self.methods.is_none(),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query.len()),
            std::cmp::Reverse(self.priority),
            self.index,
        )
    }
}

/// Routes of one host tier, indexed by path.
#[derive(Default)]
struct PathTable {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    regex_set: Option<RegexSet>,
    /// Route indices in the order of `regex_set`'s patterns.
    regex_routes: Vec<usize>,
}

/// Where a match was found; used by `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    ExactHost(String),
    /// `{tenant}.suffix`: one label captured as the tenant.
    TenantHost(String),
    WildcardHost(String),
    AnyHost,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tier::ExactHost(h) => write!(f, "exact host {h}"),
            Tier::TenantHost(s) => write!(f, "tenant host {{tenant}}{s}"),
            Tier::WildcardHost(s) => write!(f, "wildcard host *{s}"),
            Tier::AnyHost => write!(f, "routes without hosts"),
        }
    }
}

/// Why a candidate that reached the method/header stage was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Method,
    Header(String),
    Query(String),
}

/// Receives the candidates the router looked at, in order. The request path uses `()`.
pub trait Trace {
    fn candidate(&mut self, _route: usize, _tier: &Tier, _rejected: Option<Rejection>) {}
}

impl Trace for () {}

pub struct Router {
    routes: Vec<RouteMatcher>,
    exact_hosts: HashMap<String, PathTable>,
    /// Keyed by the suffix with its leading dot: `{tenant}.api.example.com` → `.api.example.com`.
    tenant_hosts: HashMap<String, PathTable>,
    /// Keyed by the suffix including its leading dot: `*.api.example.com` → `.api.example.com`.
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: PathTable,
}

impl Router {
    /// Builds the lookup tables over every route's matcher (in file order).
    pub fn build(routes: Vec<RouteMatcher>, diag: &mut Diag) -> Option<Router> {
        let mut exact_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut tenant_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard_hosts: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_host = Vec::new();
        for r in &routes {
            if r.hosts.is_empty() {
                any_host.push(r.index);
            }
            for h in &r.hosts {
                if let Some(suffix) = h.strip_prefix(TENANT_LABEL) {
                    tenant_hosts
                        .entry(suffix.to_string())
                        .or_default()
                        .push(r.index);
                    continue;
                }
                match h.strip_prefix('*') {
                    Some(suffix) => wildcard_hosts
                        .entry(suffix.to_string())
                        .or_default()
                        .push(r.index),
                    None => exact_hosts.entry(h.clone()).or_default().push(r.index),
                }
            }
        }
        let mut build = |ids: Vec<usize>| PathTable::build(&routes, ids, diag);
        let exact_hosts: Option<HashMap<String, PathTable>> = exact_hosts
            .into_iter()
            .map(|(k, v)| Some((k, build(v)?)))
            .collect();
        let tenant_hosts: Option<HashMap<String, PathTable>> = tenant_hosts
            .into_iter()
            .map(|(k, v)| Some((k, build(v)?)))
            .collect();
        let wildcard_hosts: Option<HashMap<String, PathTable>> = wildcard_hosts
            .into_iter()
            .map(|(k, v)| Some((k, build(v)?)))
            .collect();
        let any_host = build(any_host);
        Some(Router {
            exact_hosts: exact_hosts?,
            tenant_hosts: tenant_hosts?,
            wildcard_hosts: wildcard_hosts?,
            any_host: any_host?,
            routes,
        })
    }

    pub fn routes(&self) -> &[RouteMatcher] {
        &self.routes
    }

    /// The index of the route for this request, if any.
    pub fn route(&self, req: &RequestView) -> Option<usize> {
        self.route_traced(req, &mut ())
    }

    pub fn route_traced(&self, req: &RequestView, trace: &mut impl Trace) -> Option<usize> {
        if !req.host.is_empty() {
            if let Some(t) = self.exact_hosts.get(req.host) {
                if let Some(r) = t.find(
                    &self.routes,
                    req,
                    &Tier::ExactHost(req.host.to_string()),
                    trace,
                ) {
                    return Some(r);
                }
            }
            // One label, then its suffix: acme.api.example.com → .api.example.com.
            if let Some((label, suffix)) = tenant_label(req.host) {
                if let Some(t) = self.tenant_hosts.get(suffix) {
                    let tier = Tier::TenantHost(suffix.to_string());
                    if let Some(r) = t.find(&self.routes, req, &tier, trace) {
                        debug_assert!(!label.is_empty());
                        return Some(r);
                    }
                }
            }
            if !self.wildcard_hosts.is_empty() {
                // Longest suffix first: for a.b.example.com try .b.example.com, then .example.com, ...
                for (i, _) in req.host.match_indices('.') {
                    let suffix = &req.host[i..];
                    if let Some(t) = self.wildcard_hosts.get(suffix) {
                        if let Some(r) = t.find(
                            &self.routes,
                            req,
                            &Tier::WildcardHost(suffix.to_string()),
                            trace,
                        ) {
                            return Some(r);
                        }
                    }
                }
            }
        }
        self.any_host.find(&self.routes, req, &Tier::AnyHost, trace)
    }
}

fn build_path(p: &Located<PathMatch>, key: &str, diag: &mut Diag) -> Option<PathRule> {
    match (&p.exact, &p.prefix, &p.regex) {
        (Some(e), None, None) => normalize::path_literal(e, p.line, &format!("{key}.exact"), diag)
            .then(|| PathRule::Exact(e.0.clone())),
        (None, Some(pre), None) => {
            normalize::path_literal(pre, p.line, &format!("{key}.prefix"), diag).then(|| {
                let pre = if pre.len() > 1 {
                    pre.trim_end_matches('/')
                } else {
                    pre
                };
                PathRule::Prefix(pre.to_string())
            })
        }
        (None, None, Some(re)) => {
            compile_regex(re, p.line, &format!("{key}.regex"), diag).map(PathRule::Regex)
        }
        _ => {
            diag.err(
                p.line,
                key,
                "give exactly one of `exact`, `prefix` or `regex`",
            );
            None
        }
    }
}

/// The host pattern label that captures the tenant: `{tenant}.api.example.com`.
pub const TENANT_LABEL: &str = "{tenant}";

/// A host's first label and the rest from its dot (`acme.api.example.com` → `acme`,
/// `.api.example.com`): how a `{tenant}` host pattern reads a request's host.
pub fn tenant_label(host: &str) -> Option<(&str, &str)> {
    let dot = host.find('.')?;
    (dot > 0 && dot + 1 < host.len()).then(|| (&host[..dot], &host[dot..]))
}

/// `api.example.com`, `*.example.com` or `{tenant}.example.com`; compared case-insensitively.
pub fn check_host_pattern(h: &str) -> Result<(), String> {
    if h.contains('{') && !h.starts_with("{tenant}.") {
        return Err(format!(
            "`{h}`: only a first label `{{tenant}}` is captured, as in {{tenant}}.api.example.com"
        ));
    }
    let name = h
        .strip_prefix("*.")
        .or_else(|| h.strip_prefix("{tenant}."))
        .unwrap_or(h);
    if h == "*" {
        return Err("`*` alone is not a host pattern: omit `hosts` to match every host".into());
    }
    let ok = !name.is_empty()
        && !name.contains('*')
        && !name.contains(':')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a host name, a `*.suffix` wildcard or `{{tenant}}.suffix` (no port)"
        ))
    }
}

/// regex's error text spans several lines (pattern, caret, message); keep it on one.
/// A configured regex (path, header or query predicate), or its error at `key`.
fn compile_regex(re: &str, line: u32, key: &str, diag: &mut Diag) -> Option<Regex> {
    Regex::new(re)
        .map_err(|e| diag.err(line, key, format!("invalid regex: {}", regex_error(&e))))
        .ok()
}

fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let message = text
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ");
    match text.lines().nth(1) {
        Some(pattern) => format!("{message} in `{}`", pattern.trim()),
        None => message.to_string(),
    }
}

impl PathTable {
    fn build(routes: &[RouteMatcher], ids: Vec<usize>, diag: &mut Diag) -> Option<PathTable> {
        let mut t = PathTable::default();
        let mut patterns = Vec::new();
        for id in ids {
            match &routes[id].path {
                PathRule::Exact(p) => t.exact.entry(p.clone()).or_default().push(id),
                PathRule::Prefix(p) => t.prefix.entry(p.clone()).or_default().push(id),
                PathRule::Regex(r) => {
                    patterns.push(r.as_str().to_string());
                    t.regex_routes.push(id);
                }
            }
        }
        let rank = |a: &usize, b: &usize| routes[*a].rank().cmp(&routes[*b].rank());
        for v in t.exact.values_mut().chain(t.prefix.values_mut()) {
            v.sort_by(rank);
        }
        if !patterns.is_empty() {
            // Each pattern compiled on its own already; together they can still exceed the
            // regex engine's size limit.
            match RegexSet::new(&patterns) {
                Ok(set) => t.regex_set = Some(set),
                Err(e) => {
                    diag.err(
                        0,
                        "routes",
                        format!(
                            "the path regexes of one host together are too large: {}",
                            regex_error(&e)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(t)
    }

    fn find(
        &self,
        routes: &[RouteMatcher],
        req: &RequestView,
        tier: &Tier,
        trace: &mut impl Trace,
    ) -> Option<usize> {
        let pick =
            |ids: &[usize], trace: &mut dyn FnMut(usize, Option<Rejection>)| -> Option<usize> {
                for &id in ids {
                    let r = &routes[id];
                    if !req.any_method && !r.method_matches(req.method) {
                        trace(id, Some(Rejection::Method));
                        continue;
                    }
                    if let Some(h) = r.failing_header(req.headers) {
                        trace(id, Some(Rejection::Header(h.describe())));
                        continue;
                    }
                    if let Some(q) = r.failing_query(req.query) {
                        trace(id, Some(Rejection::Query(q.describe())));
                        continue;
                    }
                    trace(id, None);
                    return Some(id);
                }
                None
            };
        let mut report = |id: usize, rej: Option<Rejection>| trace.candidate(id, tier, rej);

        if let Some(ids) = self.exact.get(req.path) {
            if let Some(id) = pick(ids, &mut report) {
                return Some(id);
            }
        }
        if !self.prefix.is_empty() {
            // Walk the path's segment-boundary prefixes from longest to shortest; stored
            // prefixes have no trailing slash, so `/a/b/` starts at `/a/b`.
            let mut candidate = match req.path.trim_end_matches('/') {
                "" => "/",
                p => p,
            };
            loop {
                if let Some(ids) = self.prefix.get(candidate) {
                    if let Some(id) = pick(ids, &mut report) {
                        return Some(id);
                    }
                }
                if candidate == "/" {
                    break;
                }
                candidate = match candidate.rfind('/') {
                    Some(0) | None => "/",
                    Some(i) => &candidate[..i],
                };
            }
        }
        if let Some(set) = &self.regex_set {
            let mut ids: Vec<usize> = set
                .matches(req.path)
                .iter()
                .map(|i| self.regex_routes[i])
                .collect();
            if !ids.is_empty() {
                ids.sort_by(|a, b| routes[*a].rank().cmp(&routes[*b].rank()));
                if let Some(id) = pick(&ids, &mut report) {
                    return Some(id);
                }
            }
        }
        None
    }
}
