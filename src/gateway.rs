//! The running gateway's state: the current snapshot behind an `ArcSwap`, and reload
//! (read → compile → assemble a snapshot → atomic swap). Reloads are serialised; requests never wait on
//! them.

use crate::compile::{self, Compiled};
use crate::config::{AccessLogConfig, ConfigError, ConfigErrors, OtlpConfig};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::otlp::SpanExporter;
use crate::observe::Sinks;
use crate::snapshot::{self, Prepared, Registries, Snapshot};
use crate::upstream::health::HealthCheckers;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Gateway {
    current: ArcSwap<Snapshot>,
    /// Metric series, carried across reloads.
    pub metrics: Arc<Metrics>,
    source: ConfigSource,
    /// Held while a reload compiles; also guards the pool registry and the version counter.
    reload_state: Mutex<ReloadState>,
    /// Serialises reloads without blocking a runtime thread.
    reload_gate: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    /// SIGTERM arrived: readiness is 503 and HTTP/1.1 responses close their connection.
    draining: AtomicBool,
    /// Set when the config comes from the control plane's store.
    pub store_status: std::sync::OnceLock<Arc<crate::control::agent::StoreStatus>>,
    /// The outcome of the latest reload attempt, for the admin API and the dashboard.
    last_reload: Mutex<Option<ReloadRecord>>,
    /// Per-second samples of the route counters (the dashboard's charts).
    pub series: crate::admin::series::Series,
}

/// One reload attempt as the admin API reports it.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: std::time::SystemTime,
    /// `reloaded`, `unchanged` or `failed`.
    pub result: &'static str,
    pub version: u64,
    pub errors: Vec<String>,
}

struct ReloadState {
    registries: Registries,
    /// The running access log and span exporter, each with the config it was started with.
    access_log: Running<AccessLogConfig, AccessLog>,
    spans: Running<OtlpConfig, SpanExporter>,
    health: HealthCheckers,
    last_version: u64,
}

/// Where the running config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A YAML file, re-read on reload (SIGHUP, admin API).
    File(PathBuf),
    /// The control plane's store: new versions arrive through `apply_document`.
    Store,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub version: u64,
    pub checksum: String,
    /// False when the file was identical (same checksum) and nothing was swapped.
    pub changed: bool,
}

impl Gateway {
    /// Loads and compiles the config file for a first start.
    pub fn load(config_path: PathBuf) -> Result<Arc<Gateway>, ConfigErrors> {
        let compiled = compile::file(&config_path)?;
        Self::start_with(compiled, ConfigSource::File(config_path))
    }

    /// Compiles a config document (from the store, or a last-known-good copy) for a first start.
    pub fn load_document(text: &str, name: &str) -> Result<Arc<Gateway>, ConfigErrors> {
        let compiled = compile::text(text, name)?;
        Self::start_with(compiled, ConfigSource::Store)
    }

    fn start_with(compiled: Compiled, source: ConfigSource) -> Result<Arc<Gateway>, ConfigErrors> {
        let mut registries = Registries::default();
        let (access_log, spans) = sinks_for(&compiled, None, None)?;
        let (tls, tls_fingerprint) = crate::tls::build_all(&compiled.listeners, &compiled.source)?;
        let tls_fingerprint = tls_fingerprint + &compiled.files_fingerprint();
        let metrics = Arc::new(Metrics::default());
        let prepared = Prepared {
            sinks: sinks(&access_log, &spans),
            tls,
            tls_fingerprint,
        };
        let snap = snapshot::assemble(compiled, 1, &mut registries, prepared, &metrics);
        Ok(Arc::new(Gateway {
            current: ArcSwap::from_pointee(snap),
            metrics,
            source,
            reload_state: Mutex::new(ReloadState {
                registries,
                access_log,
                spans,
                health: HealthCheckers::default(),
                last_version: 1,
            }),
            reload_gate: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            store_status: std::sync::OnceLock::new(),
            last_reload: Mutex::new(None),
            series: crate::admin::series::Series::default(),
        }))
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The latest reload attempt (`None` until one is made).
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The first step of a shutdown: tell load balancers (readiness) and clients
    /// (`Connection: close`) to go elsewhere, while still serving.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts, restarts or stops health checkers to match the current snapshot. Runs inside the
    /// runtime (at start and after each reload).
    pub fn sync_health_checks(&self) {
        let snapshot = self.snapshot();
        let mut state = self.reload_state.lock().unwrap_or_else(|p| p.into_inner());
        state.health.sync(&snapshot.upstreams);
    }

    /// Reopens the access log file (SIGUSR1, after log rotation).
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.snapshot().sinks.access_log {
            log.reopen();
        }
    }

    pub fn stop_health_checks(&self) {
        let mut state = self.reload_state.lock().unwrap_or_else(|p| p.into_inner());
        state.health.stop_all();
    }

    /// Re-reads the config file and swaps it in if valid. On any error the running config keeps
    /// serving and the errors are returned.
    pub async fn reload(self: &Arc<Self>) -> Result<Applied, ConfigErrors> {
        let result = match &self.source {
            ConfigSource::File(path) => {
                let path = path.clone();
                self.apply_in_background(path.display().to_string(), move || compile::file(&path))
                    .await
            }
            ConfigSource::Store => Err(ConfigErrors(vec![ConfigError {
                file: "store".into(),
                line: 0,
                key: String::new(),
                message: "this gateway's config comes from the store: activate a version with \
                          `portcullis config activate`"
                    .into(),
            }])),
        };
        self.count_and_sync(result)
    }

    /// Validates, compiles and swaps in a config document (a version from the store). On any
    /// error the running config keeps serving and the errors are returned.
    pub async fn apply_document(
        self: &Arc<Self>,
        text: String,
        name: String,
    ) -> Result<Applied, ConfigErrors> {
        let source = name.clone();
        let result = self
            .apply_in_background(source, move || compile::text(&text, &name))
            .await;
        self.count_and_sync(result)
    }

    fn count_and_sync(
        self: &Arc<Self>,
        result: Result<Applied, ConfigErrors>,
    ) -> Result<Applied, ConfigErrors> {
        let counter = if result.is_ok() {
            &self.metrics.reloads_ok
        } else {
            &self.metrics.reloads_failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = match &result {
            Ok(a) => ReloadRecord {
                at: std::time::SystemTime::now(),
                result: if a.changed { "reloaded" } else { "unchanged" },
                version: a.version,
                errors: Vec::new(),
            },
            Err(e) => ReloadRecord {
                at: std::time::SystemTime::now(),
                result: "failed",
                version: self.snapshot().version,
                errors: e.0.iter().map(|e| e.to_string()).collect(),
            },
        };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
        let applied = result?;
        if applied.changed {
            self.sync_health_checks();
        }
        Ok(applied)
    }

    async fn apply_in_background(
        self: &Arc<Self>,
        source: String,
        load: impl FnOnce() -> Result<Compiled, ConfigErrors> + Send + 'static,
    ) -> Result<Applied, ConfigErrors> {
        let _gate = self.reload_gate.lock().await;
        let this = Arc::clone(self);
        // Reading, parsing and compiling are blocking work: keep them off the request threads.
        tokio::task::spawn_blocking(move || this.apply(load()?))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigErrors(vec![ConfigError {
                    file: source,
                    line: 0,
                    key: String::new(),
                    message: format!("reload task failed: {e}"),
                }]))
            })
    }

    fn apply(&self, compiled: Compiled) -> Result<Applied, ConfigErrors> {
        let current = self.snapshot();
        // Certificate files are read on every reload: rotated files swap in even when the
        // config text did not change; a file that does not load refuses the reload.
        let (tls, tls_fingerprint) = crate::tls::build_all(&compiled.listeners, &compiled.source)?;
        // IP and user-agent list files count like certificates: a changed list swaps.
        let tls_fingerprint = tls_fingerprint + &compiled.files_fingerprint();
        if compiled.checksum == current.checksum && tls_fingerprint == current.tls_fingerprint {
            return Ok(Applied {
                version: current.version,
                checksum: current.checksum.clone(),
                changed: false,
            });
        }
        check_fixed_at_start(&current, &compiled)?;
        let mut state = self.reload_state.lock().unwrap_or_else(|p| p.into_inner());
        let version = state.last_version + 1;
        let (access_log, spans) =
            sinks_for(&compiled, state.access_log.clone(), state.spans.clone())?;
        let prepared = Prepared {
            sinks: sinks(&access_log, &spans),
            tls,
            tls_fingerprint,
        };
        state.access_log = access_log;
        state.spans = spans;
        let state = &mut *state;
        let checksum = compiled.checksum.clone();
        let snap = snapshot::assemble(
            compiled,
            version,
            &mut state.registries,
            prepared,
            &self.metrics,
        );
        state.last_version = version;
        self.current.store(Arc::new(snap));
        Ok(Applied {
            version,
            checksum,
            changed: true,
        })
    }
}

/// A telemetry sink and the settings it was started with.
type Running<C, T> = Option<(C, Arc<T>)>;

fn sinks(
    access_log: &Running<AccessLogConfig, AccessLog>,
    spans: &Running<OtlpConfig, SpanExporter>,
) -> Sinks {
    Sinks {
        access_log: access_log.as_ref().map(|(_, l)| Arc::clone(l)),
        spans: spans.as_ref().map(|(_, s)| Arc::clone(s)),
    }
}

/// The access log and span exporter for `compiled`: the running ones where their settings did not
/// change, new ones otherwise.
#[allow(clippy::type_complexity)]
fn sinks_for(
    compiled: &Compiled,
    access_log: Running<AccessLogConfig, AccessLog>,
    spans: Running<OtlpConfig, SpanExporter>,
) -> Result<
    (
        Running<AccessLogConfig, AccessLog>,
        Running<OtlpConfig, SpanExporter>,
    ),
    ConfigErrors,
> {
    let o = &compiled.observe;
    let access_log = keep_or_start(
        &compiled.source,
        o.access_log.as_ref(),
        access_log,
        |c| AccessLog::start(c).map_err(|e| format!("cannot open `{}`: {e}", c.destination)),
        "observability.access_log.destination",
    )?;
    let endpoint = o.otlp.as_ref().map(|(_, e)| e.clone());
    let spans = keep_or_start(
        &compiled.source,
        o.otlp.as_ref().map(|(c, _)| c),
        spans,
        |c| {
            let endpoint = endpoint.clone().ok_or("no collector endpoint")?;
            SpanExporter::start(c, endpoint).map_err(|e| format!("cannot start the exporter: {e}"))
        },
        "observability.otlp",
    )?;
    Ok((access_log, spans))
}

fn keep_or_start<C: Clone + PartialEq, T>(
    source: &str,
    wanted: Option<&C>,
    current: Running<C, T>,
    start: impl FnOnce(&C) -> Result<T, String>,
    key: &str,
) -> Result<Running<C, T>, ConfigErrors> {
    let Some(cfg) = wanted else {
        return Ok(None);
    };
    if let Some((c, running)) = current {
        if c == *cfg {
            return Ok(Some((c, running)));
        }
    }
    match start(cfg) {
        Ok(t) => Ok(Some((cfg.clone(), Arc::new(t)))),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: source.to_string(),
            line: 0,
            key: key.into(),
            message: e,
        }])),
    }
}

/// Listener and admin addresses are bound once at start; a reload that changes them is refused
/// (restart to move a listener) rather than half-applied.
fn check_fixed_at_start(current: &Snapshot, compiled: &Compiled) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let err = |line: u32, key: &str, message: &str| ConfigError {
        file: compiled.source.clone(),
        line,
        key: key.into(),
        message: message.into(),
    };
    let same_set = compiled.listeners.len() == current.listeners.len()
        && compiled.listeners.iter().all(|l| {
            current
                .listener(&l.name)
                .is_some_and(|c| l.address == c.address)
        });
    if !same_set {
        errors.push(err(
            0,
            "listeners",
            "listener names or addresses changed: restart the gateway to rebind listeners",
        ));
    }
    if compiled.admin.address != current.admin_address {
        errors.push(err(
            compiled.admin.address_line,
            "admin.address",
            "the admin address changed: restart the gateway to rebind it",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
