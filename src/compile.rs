//! Parse, don't validate: a config document becomes its compiled form in one pass. Each
//! section is built by the module that owns it, reporting every problem into one `Diag`; what
//! comes out is already valid, so a snapshot is assembled from it without re-parsing anything
//! and without any check that could still fail.
//!
//! `portcullis validate`, `portcullis config push`, `explain` and every (re)load run exactly
//! this, so a file that validates is a file that loads.

use crate::admin::spec::AdminSpec;
use crate::auth::AuthProviderSpecs;
use crate::cache::CacheSpec;
use crate::config::names::{check_shadowing, check_unreachable_regex, Names};
use crate::config::{self, ConfigErrors, Diag, Document};
use crate::consumer::ConsumerSpecs;
use crate::edge::EdgeSpec;
use crate::observe::ObserveSpec;
use crate::ratelimit::plan::PlanSpecs;
use crate::ratelimit::RateLimitSpecs;
use crate::redis_store::RedisSpec;
use crate::route::{RouteDefaults, RouteRules};
use crate::router::Router;
use crate::server::listener::ListenerSpec;
use crate::upstream::dns::DnsSpec;
use crate::upstream::spec::UpstreamSpec;
use std::path::Path;

/// One config version, compiled: every section checked and in the form the gateway uses.
pub struct Compiled {
    /// The file (or store version) it came from, for messages and relative paths.
    pub source: String,
    pub checksum: String,
    pub listeners: Vec<ListenerSpec>,
    pub admin: AdminSpec,
    pub dns: DnsSpec,
    pub upstreams: Vec<UpstreamSpec>,
    pub auth: AuthProviderSpecs,
    pub rate_limits: RateLimitSpecs,
    pub plans: PlanSpecs,
    pub consumers: ConsumerSpecs,
    pub tenants: crate::tenant::TenantSpec,
    pub redis: Option<RedisSpec>,
    pub observe: ObserveSpec,
    pub defaults: RouteDefaults,
    pub edge: EdgeSpec,
    pub router: Router,
    pub routes: Vec<RouteRules>,
    pub cache: CacheSpec,
    /// The `/admin/routes` document.
    pub routes_json: serde_json::Value,
    /// What loads but is probably not meant (`validate --strict` refuses these).
    pub warnings: Vec<config::ConfigError>,
}

impl Compiled {
    /// What the files the config names hold, beside the text's checksum: a reload of an
    /// unchanged text still applies when one of them changed (IP lists, upstream client
    /// certificates; listener certificates are fingerprinted where they are loaded).
    pub fn files_fingerprint(&self) -> String {
        let mut f = self.edge.files_fingerprint.clone();
        for u in &self.upstreams {
            if let Some(d) = &u.settings.client_auth_digest {
                f.push(':');
                f.push_str(d);
            }
        }
        f
    }
}

pub fn file(path: &Path) -> Result<Compiled, ConfigErrors> {
    document(&config::read_file(path)?)
}

pub fn text(text: &str, source: &str) -> Result<Compiled, ConfigErrors> {
    document(&config::parse_str(text, source)?)
}

/// Builds every section (in a fixed order, so errors on one line always come out alike) and
/// the checks that span sections.
pub fn document(doc: &Document) -> Result<Compiled, ConfigErrors> {
    let cfg = &doc.config;
    let mut diag = Diag::new(&doc.source);
    let names = Names::of(cfg);

    let config_dir = Path::new(&doc.source)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let auth = AuthProviderSpecs::build(
        &cfg.auth,
        names.redis,
        &cfg.consumers,
        names.consumer_store,
        &config_dir,
        &mut diag,
    );
    let rate_limits = RateLimitSpecs::build(
        &cfg.rate_limits,
        &cfg.defaults.rate_limits,
        names.redis,
        &mut diag,
    );
    let plans = PlanSpecs::build(
        &cfg.plans,
        cfg.defaults.plan.as_ref(),
        names.redis,
        &mut diag,
    );
    let plan_names: Vec<&str> = cfg.plans.iter().map(|p| p.name.value.as_str()).collect();
    let consumers = ConsumerSpecs::build(
        &cfg.consumers,
        cfg.consumer_store.as_ref(),
        &plan_names,
        names.redis,
        &mut diag,
    );
    let tenants = crate::tenant::TenantSpec::build(cfg.tenants.as_ref(), names.redis, &mut diag);
    let redis = cfg.redis.as_ref().map(|r| RedisSpec::build(r, &mut diag));
    let observe = ObserveSpec::build(&cfg.observability, &mut diag);
    let dns = DnsSpec::build(&cfg.dns, &mut diag);
    let mut edge = EdgeSpec::build(cfg, &doc.source, &mut diag);
    let listeners = crate::server::listener::build_all(&cfg.listeners, &edge.ip_rules, &mut diag);
    let admin = crate::admin::spec::build(cfg.admin.as_ref(), &listeners, &mut diag);
    let defaults = RouteDefaults::build(&cfg.defaults, cfg, &names, &mut diag);
    let upstreams = crate::upstream::spec::build_all(&cfg.upstreams, &mut diag);
    let cache = CacheSpec::build(
        cfg.cache.as_ref(),
        &cfg.routes,
        cfg.redis.is_some(),
        &mut diag,
    );
    let inputs = crate::route::RouteInputs {
        config: cfg,
        names: &names,
        defaults: defaults.as_ref(),
        base: &config_dir,
    };
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| crate::route::build(r, i, &inputs, &mut edge, &mut diag))
        .collect();
    diag.duplicates(
        "route",
        cfg.routes
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.name, format!("routes[{i}].name"))),
    );
    check_shadowing(cfg, &mut diag);
    check_unreachable_regex(cfg, &mut diag);

    let built = (|| {
        let (matchers, routes): (Vec<_>, Vec<_>) = routes
            .into_iter()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .unzip();
        let router = Router::build(matchers, &mut diag)?;
        Some(Compiled {
            source: doc.source.clone(),
            checksum: doc.checksum.clone(),
            listeners,
            admin: admin?,
            dns: dns?,
            upstreams: upstreams?,
            auth: auth?,
            rate_limits: rate_limits?,
            plans: plans?,
            consumers: consumers?,
            tenants: tenants?,
            redis: redis.map(|r| r.ok_or(())).transpose().ok()?,
            observe: observe?,
            defaults: defaults?,
            edge,
            router,
            routes,
            cache: cache?,
            routes_json: routes_document(cfg),
            warnings: Vec::new(),
        })
    })();
    let warnings = diag.finish(&doc.text)?;
    // `finish` passed: nothing was reported, so every builder returned its section.
    built.map(|c| Compiled { warnings, ..c }).ok_or_else(|| {
        ConfigErrors(vec![config::ConfigError {
            file: doc.source.clone(),
            line: 0,
            key: String::new(),
            message: "internal error: a section failed to build without reporting why".into(),
        }])
    })
}

/// Header names whose configured values are secrets and are never shown by the admin API.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "cookie"
        || ["token", "secret", "key", "password", "auth"]
            .iter()
            .any(|s| n.contains(s))
}

fn routes_document(cfg: &config::Config) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = cfg
        .routes
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.value).unwrap_or_default();
            // Redact configured header values that carry credentials.
            for (dir, op) in [
                ("request", "set"),
                ("request", "add"),
                ("response", "set"),
                ("response", "add"),
            ] {
                if let Some(set) = v
                    .pointer_mut(&format!("/headers/{dir}/{op}"))
                    .and_then(|s| s.as_object_mut())
                {
                    for (k, val) in set.iter_mut() {
                        if is_secret_header(k) {
                            *val = serde_json::Value::String("<redacted>".into());
                        }
                    }
                }
            }
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "timeout_ms".into(),
                    serde_json::json!(r
                        .timeout_ms
                        .as_ref()
                        .map_or(cfg.defaults.timeout_ms.value, |t| t.value)),
                );
                obj.retain(|_, val| !val.is_null());
            }
            v
        })
        .collect();
    serde_json::json!({ "routes": routes })
}

/// Test helper: every error of a whole document as (line, key, message); empty when it compiles.
#[cfg(test)]
pub fn errors_of(text: &str) -> Vec<(u32, String, String)> {
    match self::text(text, "t.yaml") {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.into_iter()
                .map(|e| (e.line, e.key, e.message))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every builder that returns `None` has reported why: a valid file compiles, and each
    /// error keeps its file, line and key.
    #[test]
    fn a_valid_file_compiles_and_an_invalid_one_reports_each_error() {
        let ok = "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nadmin: { address: \"127.0.0.1:0\" }\ndefaults: { auth: none }\nupstreams:\n  - name: app\n    targets: [{ address: \"127.0.0.1:9\" }]\nroutes:\n  - name: a\n    match: { path: { prefix: / } }\n    upstream: app\n";
        let c = text(ok, "ok.yaml").unwrap();
        assert_eq!(c.routes.len(), 1);
        assert!(c.checksum.starts_with("sha256:"));
        let bad = ok.replace("upstream: app", "upstream: nope");
        let Err(e) = text(&bad, "bad.yaml") else {
            panic!("an unknown upstream must be refused")
        };
        let e = e.0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].to_string(),
            "bad.yaml:10: routes[0].upstream: unknown upstream `nope`"
        );
    }
}
