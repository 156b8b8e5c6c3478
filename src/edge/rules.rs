//! `edge_rules`: a deterministic, explainable request-rule layer ("WAF-lite"). Built-in rules
//! run for every request before routing (malformed and known-bad requests never reach routing
//! or authentication); configurable rules run per route after routing, before authentication,
//! with their regexes compiled into one set per route and condition. Every decision names its
//! rule. This is not an injection detector: no anomaly scoring, no body inspection.

use crate::config::{
    Diag, EdgeRule as EdgeRuleConfig, EdgeRules as EdgeRulesConfig, Located, Text,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::{Regex, RegexSet, RegexSetBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The built-in rules, by the name config, logs and metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// A `..` segment in the path as sent.
    PathTraversal,
    /// A `..` segment spelled with escapes (`%2e%2e`, `.%2E`), or escapes of escapes
    /// (`%252e`, `%252f`): what decodes to traversal in a second decoder.
    EncodedTraversal,
    /// Overlong UTF-8 in the decoded path (`%c0%ae` is a `.` in a lax decoder).
    OverlongUtf8,
    /// NUL or another control byte in the decoded path or a header value.
    ControlBytes,
    MethodNotAllowed,
    TooManyHeaders,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::PathTraversal,
        Builtin::EncodedTraversal,
        Builtin::OverlongUtf8,
        Builtin::ControlBytes,
        Builtin::MethodNotAllowed,
        Builtin::TooManyHeaders,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::PathTraversal => "path-traversal",
            Builtin::EncodedTraversal => "encoded-traversal",
            Builtin::OverlongUtf8 => "overlong-utf8",
            Builtin::ControlBytes => "control-bytes",
            Builtin::MethodNotAllowed => "method-not-allowed",
            Builtin::TooManyHeaders => "too-many-headers",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Builtin::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Builtin::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Builtin::PathTraversal | Builtin::EncodedTraversal => {
                "path traversal (`..` segments) is not allowed in request paths"
            }
            Builtin::OverlongUtf8 => "overlong UTF-8 in request path",
            Builtin::ControlBytes => "control bytes in request path or header values",
            Builtin::MethodNotAllowed => "method not allowed",
            Builtin::TooManyHeaders => "too many request header fields",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Deny,
    Log,
}

/// Counts of one rule's matches (kept across reloads by rule name).
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Refused (enforce mode, action deny).
    pub denied: AtomicU64,
    /// Would have refused (report-only mode, action deny).
    pub would_deny: AtomicU64,
    /// Matched a `log` rule.
    pub logged: AtomicU64,
}

/// What a rule decided about a request, for the response, the access log and `explain`.
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub rule: Arc<str>,
    pub action: RuleAction,
    /// Refused (deny in enforce mode); otherwise the request goes on.
    pub refused: bool,
    pub status: StatusCode,
    pub message: &'static str,
    /// 405s name the methods that are allowed.
    pub allow: Option<HeaderValue>,
    /// Position of the rule's counters in `EdgeRules` (built-ins first).
    counter: usize,
}

impl RuleHit {
    /// The access log's `"rule"` value: `name` (refused), `name:log`, or `name:report_only`.
    pub fn log_value(&self) -> String {
        match (self.refused, self.action) {
            (true, _) => self.rule.to_string(),
            (false, RuleAction::Log) => format!("{}:log", self.rule),
            (false, RuleAction::Deny) => format!("{}:report_only", self.rule),
        }
    }
}

struct Rule {
    name: Arc<str>,
    action: RuleAction,
    /// A User-Agent condition was stated (even if its file holds no pattern: then it never
    /// matches, rather than matching every request).
    has_user_agent: bool,
    user_agent: Vec<Regex>,
    path: Option<Regex>,
    query: Option<Regex>,
    header: Option<HeaderCondition>,
}

struct HeaderCondition {
    name: HeaderName,
    test: HeaderTest,
}

enum HeaderTest {
    Present,
    Absent,
    Matches(Regex),
}

/// The compiled `edge_rules` section.
pub struct EdgeRules {
    report_only: bool,
    enabled: [bool; 6],
    methods: Vec<Method>,
    allow_header: HeaderValue,
    max_header_count: usize,
    /// The built-ins' counters, then each configurable rule's.
    counters: Vec<Arc<RuleCounters>>,
    rules: Vec<Rule>,
    by_name: BTreeMap<String, usize>,
    /// Set by `defaults.edge_rules`; all rules when absent.
    default_selection: Vec<usize>,
    /// One compiled set per distinct selection of rules.
    sets: HashMap<Vec<usize>, Arc<RuleSet>>,
}

const DEFAULT_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl EdgeRules {
    pub fn build(
        cfg: Option<&Located<EdgeRulesConfig>>,
        defaults: Option<&Located<Vec<Located<Text>>>>,
        base: &Path,
        fingerprint: &mut Vec<u8>,
        diag: &mut Diag,
    ) -> EdgeRules {
        let key = "edge_rules";
        let mut report_only = false;
        let mut enabled = [true; 6];
        let mut methods = DEFAULT_METHODS.to_vec();
        let mut max_header_count = 100;
        let mut rules = Vec::new();
        if let Some(c) = cfg {
            match c.mode.as_ref().map(|m| (m.as_str(), m.line)) {
                None | Some(("enforce", _)) => {}
                Some(("report_only", _)) => report_only = true,
                Some((other, line)) => diag.err(
                    line,
                    format!("{key}.mode"),
                    format!("`{other}` is not enforce or report_only"),
                ),
            }
            if let Some(m) = &c.methods {
                methods.clear();
                for t in m.iter() {
                    match Method::from_bytes(t.as_bytes()) {
                        Ok(method) => methods.push(method),
                        Err(_) => diag.err(
                            m.line,
                            format!("{key}.methods"),
                            format!("`{t}` is not an HTTP method"),
                        ),
                    }
                }
                if m.is_empty() {
                    diag.err(m.line, format!("{key}.methods"), "at least one method");
                }
            }
            if let Some(n) = &c.max_header_count {
                if !(1..=10_000).contains(&n.value) {
                    diag.err(
                        n.line,
                        format!("{key}.max_header_count"),
                        "must be between 1 and 10000",
                    );
                }
                max_header_count = n.value as usize;
            }
            if let Some(d) = &c.disable {
                for name in d.iter() {
                    match Builtin::ALL.iter().position(|b| b.name() == name.as_str()) {
                        Some(i) => enabled[i] = false,
                        None => diag.err(
                            name.line,
                            format!("{key}.disable"),
                            format!(
                                "unknown built-in rule `{}` (one of {})",
                                name.value,
                                Builtin::ALL.map(Builtin::name).join(", ")
                            ),
                        ),
                    }
                }
            }
            for (i, r) in c.rules.iter().enumerate() {
                if let Some(rule) =
                    build_rule(r, &format!("{key}.rules[{i}]"), base, fingerprint, diag)
                {
                    rules.push(rule);
                }
            }
            diag.duplicates(
                "edge rule",
                c.rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (&r.name, format!("{key}.rules[{i}].name"))),
            );
        }
        let mut by_name = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            by_name.entry(r.name.to_string()).or_insert(i);
        }
        let allow_header = HeaderValue::from_str(
            &methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )
        .unwrap_or_else(|_| HeaderValue::from_static("GET"));
        let mut out = EdgeRules {
            report_only,
            enabled,
            methods,
            allow_header,
            max_header_count,
            counters: (0..Builtin::ALL.len() + rules.len())
                .map(|_| Arc::default())
                .collect(),
            rules,
            by_name,
            default_selection: Vec::new(),
            sets: HashMap::new(),
        };
        out.default_selection = match defaults {
            Some(names) => out.resolve(names, "defaults.edge_rules", diag),
            None => (0..out.rules.len()).collect(),
        };
        out
    }

    fn resolve(&self, names: &[Located<Text>], key: &str, diag: &mut Diag) -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| match self.by_name.get(n.as_str()) {
                Some(i) => Some(*i),
                None => {
                    diag.err(n.line, key, format!("unknown edge rule `{}`", n.value));
                    None
                }
            })
            .collect()
    }

    /// The compiled rule set of a route (`None` when it applies no configurable rule).
    pub fn for_route(
        &mut self,
        names: Option<&Located<Vec<Located<Text>>>>,
        key: &str,
        diag: &mut Diag,
    ) -> Option<Arc<RuleSet>> {
        let selection = match names {
            Some(n) => self.resolve(n, &format!("{key}.edge_rules"), diag),
            None => self.default_selection.clone(),
        };
        if selection.is_empty() {
            return None;
        }
        if let Some(s) = self.sets.get(&selection) {
            return Some(Arc::clone(s));
        }
        let set = Arc::new(RuleSet::compile(self, &selection));
        self.sets.insert(selection, Arc::clone(&set));
        Some(set)
    }

    /// Built-in rules, before routing. `path` is the request target's path as sent.
    pub fn check_builtin(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<RuleHit> {
        let found = self.first_builtin(method, path, headers)?;
        let hit = RuleHit {
            rule: Arc::from(found.name()),
            action: RuleAction::Deny,
            refused: !self.report_only,
            status: found.status(),
            message: found.message(),
            allow: (found == Builtin::MethodNotAllowed).then(|| self.allow_header.clone()),
            counter: found as usize,
        };
        self.count(&hit);
        Some(hit)
    }

    /// Counts a hit on its rule (built-in, or configurable from a route's set).
    pub fn count(&self, hit: &RuleHit) {
        let Some(c) = self.counters.get(hit.counter) else {
            return;
        };
        match (hit.action, hit.refused) {
            (RuleAction::Log, _) => c.logged.fetch_add(1, Ordering::Relaxed),
            (RuleAction::Deny, true) => c.denied.fetch_add(1, Ordering::Relaxed),
            (RuleAction::Deny, false) => c.would_deny.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn first_builtin(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Builtin> {
        let on = |b: Builtin| self.enabled[b as usize];
        if on(Builtin::MethodNotAllowed) && !self.methods.contains(method) {
            return Some(Builtin::MethodNotAllowed);
        }
        if on(Builtin::TooManyHeaders) && headers.len() > self.max_header_count {
            return Some(Builtin::TooManyHeaders);
        }
        if let Some(b) = path_problem(path).filter(|b| on(*b)) {
            return Some(b);
        }
        if on(Builtin::ControlBytes)
            && headers.values().any(|v| {
                v.as_bytes()
                    .iter()
                    .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            })
        {
            return Some(Builtin::ControlBytes);
        }
        None
    }

    pub fn report_only(&self) -> bool {
        self.report_only
    }

    /// (rule, counters) of every built-in and configurable rule, for `/metrics`.
    pub fn counters(&self) -> impl Iterator<Item = (&str, &RuleCounters)> {
        Builtin::ALL
            .iter()
            .map(|b| b.name())
            .chain(self.rules.iter().map(|r| &*r.name))
            .zip(self.counters.iter().map(|c| &**c))
    }

    /// Takes the counters of the previous snapshot's rules of the same name.
    pub fn carry_counters(&mut self, previous: &BTreeMap<String, Arc<RuleCounters>>) {
        let names: Vec<String> = self.counters().map(|(n, _)| n.to_string()).collect();
        for (name, slot) in names.iter().zip(self.counters.iter_mut()) {
            if let Some(p) = previous.get(name) {
                *slot = Arc::clone(p);
            }
        }
    }

    pub fn counter_map(&self) -> BTreeMap<String, Arc<RuleCounters>> {
        Builtin::ALL
            .iter()
            .map(|b| b.name())
            .chain(self.rules.iter().map(|r| &*r.name))
            .zip(&self.counters)
            .map(|(n, c)| (n.to_string(), Arc::clone(c)))
            .collect()
    }
}

/// Which built-in path rule the path as sent breaks, if any.
pub fn path_problem(path: &str) -> Option<Builtin> {
    let bytes = path.as_bytes();
    let has_escape = bytes.contains(&b'%');
    if !has_escape {
        return path
            .split('/')
            .any(|s| s == "..")
            .then_some(Builtin::PathTraversal);
    }
    if path.split('/').any(|s| s == "..") {
        return Some(Builtin::PathTraversal);
    }
    // Decode every escape once (malformed ones are left to path normalization's 400).
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Some(Builtin::ControlBytes);
    }
    if has_overlong(&decoded) {
        return Some(Builtin::OverlongUtf8);
    }
    let dot_dot = decoded
        .split(|b| *b == b'/' || *b == b'\\')
        .any(|s| s == b"..");
    // An escape that survives one decoding (`%252e` → `%2e`) is what a second decoder sees.
    let double = decoded.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    });
    (dot_dot || double).then_some(Builtin::EncodedTraversal)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Overlong UTF-8 encodings: lead bytes C0 / C1 (two-byte forms of ASCII), E0 followed by
/// 80–9F and F0 followed by 80–8F (three- and four-byte forms of shorter code points).
fn has_overlong(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| match c {
        0xC0 | 0xC1 => true,
        0xE0 => b.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n)),
        0xF0 => b.get(i + 1).is_some_and(|n| (0x80..=0x8F).contains(n)),
        _ => false,
    })
}

fn build_rule(
    r: &Located<EdgeRuleConfig>,
    key: &str,
    base: &Path,
    fingerprint: &mut Vec<u8>,
    diag: &mut Diag,
) -> Option<Rule> {
    let mark = diag.mark();
    diag.kebab_name(&r.name, format!("{key}.name"));
    if Builtin::ALL.iter().any(|b| b.name() == r.name.as_str()) {
        diag.err(
            r.name.line,
            format!("{key}.name"),
            "this is the name of a built-in rule",
        );
    }
    let action = match r.action.as_ref().map(|a| (a.as_str(), a.line)) {
        None | Some(("deny", _)) => RuleAction::Deny,
        Some(("log", _)) => RuleAction::Log,
        Some((other, line)) => {
            diag.err(
                line,
                format!("{key}.action"),
                format!("`{other}` is not deny or log"),
            );
            RuleAction::Deny
        }
    };
    let regex = |pattern: &str, line: u32, k: &str, diag: &mut Diag| match Regex::new(pattern) {
        Ok(re) => Some(re),
        Err(e) => {
            diag.err(
                line,
                format!("{key}.{k}"),
                format!("invalid regex `{pattern}`: {}", regex_error(&e)),
            );
            None
        }
    };
    let mut user_agent = Vec::new();
    if let Some(list) = &r.user_agent {
        for p in list.iter() {
            user_agent.extend(regex(&case_insensitive(p), p.line, "user_agent", diag));
        }
    }
    if let Some(file) = &r.user_agent_file {
        match crate::edge::ip_rules::read_list(base, file, fingerprint) {
            Ok(lines) => {
                for (n, p) in lines {
                    match Regex::new(&case_insensitive(&p)) {
                        Ok(re) => user_agent.push(re),
                        Err(e) => diag.err(
                            file.line,
                            format!("{key}.user_agent_file"),
                            format!(
                                "{}:{n}: invalid regex `{p}`: {}",
                                file.value,
                                regex_error(&e)
                            ),
                        ),
                    }
                }
            }
            Err(m) => diag.err(file.line, format!("{key}.user_agent_file"), m),
        }
    }
    let path = r.path.as_ref().and_then(|p| regex(p, p.line, "path", diag));
    let query = r
        .query
        .as_ref()
        .and_then(|q| regex(q, q.line, "query", diag));
    let header = r.header.as_ref().and_then(|h| {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        let stated = [h.present, h.absent, h.regex.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if stated != 1 {
            diag.err(
                h.line,
                format!("{key}.header"),
                "state exactly one of present, absent or regex",
            );
        }
        let test = if h.absent {
            HeaderTest::Absent
        } else if let Some(re) = &h.regex {
            HeaderTest::Matches(regex(re, h.line, "header.regex", diag)?)
        } else {
            HeaderTest::Present
        };
        match name {
            Ok(name) => Some(HeaderCondition { name, test }),
            Err(_) => {
                diag.err(
                    h.line,
                    format!("{key}.header.name"),
                    format!("`{}` is not a header name", h.name),
                );
                None
            }
        }
    });
    if r.user_agent.is_none()
        && r.user_agent_file.is_none()
        && r.path.is_none()
        && r.query.is_none()
        && r.header.is_none()
    {
        diag.err(
            r.name.line,
            key,
            "a rule needs at least one of user_agent, user_agent_file, path, query or header",
        );
    }
    diag.ok_since(
        mark,
        Rule {
            name: Arc::from(r.name.as_str()),
            action,
            has_user_agent: r.user_agent.is_some() || r.user_agent_file.is_some(),
            user_agent,
            path,
            query,
            header,
        },
    )
}

/// The regex crate's message spans lines (pattern, caret, reason): the reason alone.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .last()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

/// Bot lists are written without regard to case.
fn case_insensitive(p: &str) -> String {
    format!("(?i:{p})")
}

/// One route's configurable rules, with each condition's regexes in one set.
pub struct RuleSet {
    rules: Vec<SetRule>,
    user_agent: RegexSet,
    /// Position in `user_agent` → rule.
    user_agent_owner: Vec<usize>,
    path: RegexSet,
    path_owner: Vec<usize>,
    query: RegexSet,
    query_owner: Vec<usize>,
    report_only: bool,
}

struct SetRule {
    name: Arc<str>,
    action: RuleAction,
    wants_user_agent: bool,
    wants_path: bool,
    wants_query: bool,
    header: Option<(HeaderName, HeaderTestCompiled)>,
    counter: usize,
}

enum HeaderTestCompiled {
    Present,
    Absent,
    Matches(Regex),
}

impl RuleSet {
    fn compile(edge: &EdgeRules, selection: &[usize]) -> RuleSet {
        let mut ua = (Vec::new(), Vec::new());
        let mut path = (Vec::new(), Vec::new());
        let mut query = (Vec::new(), Vec::new());
        let mut rules = Vec::new();
        for (pos, &i) in selection.iter().enumerate() {
            let r = &edge.rules[i];
            for re in &r.user_agent {
                ua.0.push(re.as_str().to_string());
                ua.1.push(pos);
            }
            if let Some(re) = &r.path {
                path.0.push(re.as_str().to_string());
                path.1.push(pos);
            }
            if let Some(re) = &r.query {
                query.0.push(re.as_str().to_string());
                query.1.push(pos);
            }
            rules.push(SetRule {
                name: Arc::clone(&r.name),
                action: r.action,
                wants_user_agent: r.has_user_agent,
                wants_path: r.path.is_some(),
                wants_query: r.query.is_some(),
                header: r.header.as_ref().map(|h| {
                    (
                        h.name.clone(),
                        match &h.test {
                            HeaderTest::Present => HeaderTestCompiled::Present,
                            HeaderTest::Absent => HeaderTestCompiled::Absent,
                            HeaderTest::Matches(re) => HeaderTestCompiled::Matches(re.clone()),
                        },
                    )
                }),
                counter: Builtin::ALL.len() + i,
            });
        }
        // Every pattern compiled alone already; as a set they cannot fail but for size.
        let set = |p: &[String]| {
            RegexSetBuilder::new(p)
                .size_limit(64 << 20)
                .build()
                .unwrap_or_else(|_| RegexSet::empty())
        };
        RuleSet {
            user_agent: set(&ua.0),
            user_agent_owner: ua.1,
            path: set(&path.0),
            path_owner: path.1,
            query: set(&query.0),
            query_owner: query.1,
            rules,
            report_only: edge.report_only,
        }
    }

    /// The first rule that refuses the request or, when none does, the first `log` rule that
    /// matched. Every match is counted on `edge` (the snapshot's rules, which hold the counters).
    pub fn check(
        &self,
        edge: &EdgeRules,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<RuleHit> {
        let n = self.rules.len();
        let mut hit = vec![[false; 3]; n];
        let mark =
            |set: &RegexSet, owner: &[usize], text: &str, slot: usize, hit: &mut Vec<[bool; 3]>| {
                if set.is_empty() {
                    return;
                }
                for m in set.matches(text).iter() {
                    hit[owner[m]][slot] = true;
                }
            };
        if let Some(ua) = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            mark(&self.user_agent, &self.user_agent_owner, ua, 0, &mut hit);
        }
        mark(&self.path, &self.path_owner, path, 1, &mut hit);
        if let Some(q) = query {
            mark(&self.query, &self.query_owner, q, 2, &mut hit);
        }
        let mut first_log: Option<RuleHit> = None;
        for (i, r) in self.rules.iter().enumerate() {
            let matched = (!r.wants_user_agent || hit[i][0])
                && (!r.wants_path || hit[i][1])
                && (!r.wants_query || hit[i][2])
                && r.header.as_ref().is_none_or(|(name, test)| match test {
                    HeaderTestCompiled::Present => headers.contains_key(name),
                    HeaderTestCompiled::Absent => !headers.contains_key(name),
                    HeaderTestCompiled::Matches(re) => headers
                        .get_all(name)
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|s| re.is_match(s))),
                });
            if !matched {
                continue;
            }
            let refused = r.action == RuleAction::Deny && !self.report_only;
            let this = RuleHit {
                rule: Arc::clone(&r.name),
                action: r.action,
                refused,
                status: StatusCode::FORBIDDEN,
                message: "forbidden by request rules",
                allow: None,
                counter: r.counter,
            };
            edge.count(&this);
            if refused {
                return Some(this);
            }
            first_log.get_or_insert(this);
        }
        first_log
    }

    /// The rules of this set, by name, for `explain`.
    pub fn names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| &*r.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_in_every_spelling() {
        assert_eq!(path_problem("/a/b/c"), None);
        assert_eq!(path_problem("/a/../b"), Some(Builtin::PathTraversal));
        assert_eq!(path_problem("/a/.."), Some(Builtin::PathTraversal));
        assert_eq!(
            path_problem("/a..b/c.."),
            None,
            "dots inside a segment are fine"
        );
        assert_eq!(path_problem("/a/%2e%2e/b"), Some(Builtin::EncodedTraversal));
        assert_eq!(path_problem("/a/.%2E/b"), Some(Builtin::EncodedTraversal));
        assert_eq!(
            path_problem("/a/%2e%2e%2fetc"),
            Some(Builtin::EncodedTraversal)
        );
        assert_eq!(path_problem("/a/..%5cwin"), Some(Builtin::EncodedTraversal));
        assert_eq!(
            path_problem("/a/%252e%252e/b"),
            Some(Builtin::EncodedTraversal)
        );
        assert_eq!(
            path_problem("/a/%c0%ae%c0%ae/b"),
            Some(Builtin::OverlongUtf8)
        );
        assert_eq!(path_problem("/a/%e0%80%ae"), Some(Builtin::OverlongUtf8));
        assert_eq!(path_problem("/a%00b"), Some(Builtin::ControlBytes));
        assert_eq!(
            path_problem("/a%0d%0aSet-Cookie:x"),
            Some(Builtin::ControlBytes)
        );
        assert_eq!(
            path_problem("/caf%C3%A9/%20x"),
            None,
            "real UTF-8 and spaces pass"
        );
        assert_eq!(
            path_problem("/50%"),
            None,
            "a malformed escape is normalization's to refuse"
        );
    }
}
