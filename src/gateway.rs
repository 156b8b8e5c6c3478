//! The running gateway's state: the current snapshot behind an `ArcSwap`, and reload
//! (read → validate → compile → atomic swap). Reloads are serialised; requests never wait on
//! them.

use crate::config::{self, AccessLogConfig, ConfigError, ConfigErrors, OtlpConfig, ValidConfig};
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
    config_path: PathBuf,
    /// Held while a reload compiles; also guards the pool registry and the version counter.
    reload_state: Mutex<ReloadState>,
    /// Serialises reloads without blocking a runtime thread.
    reload_gate: tokio::sync::Mutex<()>,
    ready: AtomicBool,
}

struct ReloadState {
    registries: Registries,
    /// The running access log and span exporter, each with the config it was started with.
    access_log: Running<AccessLogConfig, AccessLog>,
    spans: Running<OtlpConfig, SpanExporter>,
    health: HealthCheckers,
    last_version: u64,
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
        let valid = config::load_file(&config_path)?;
        let mut registries = Registries::default();
        let (access_log, spans) = sinks_for(&valid, None, None)?;
        let (tls, tls_fingerprint) = crate::tls::build_all(&valid)?;
        let metrics = Arc::new(Metrics::default());
        let prepared = Prepared {
            sinks: sinks(&access_log, &spans),
            tls,
            tls_fingerprint,
        };
        let snap = snapshot::compile(&valid, 1, &mut registries, prepared, &metrics);
        Ok(Arc::new(Gateway {
            current: ArcSwap::from_pointee(snap),
            metrics,
            config_path,
            reload_state: Mutex::new(ReloadState {
                registries,
                access_log,
                spans,
                health: HealthCheckers::default(),
                last_version: 1,
            }),
            reload_gate: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
        }))
    }

    /// The snapshot a request should use from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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
        let result = self.reload_file().await;
        let counter = if result.is_ok() {
            &self.metrics.reloads_ok
        } else {
            &self.metrics.reloads_failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let applied = result?;
        if applied.changed {
            self.sync_health_checks();
        }
        Ok(applied)
    }

    async fn reload_file(self: &Arc<Self>) -> Result<Applied, ConfigErrors> {
        let _gate = self.reload_gate.lock().await;
        let this = Arc::clone(self);
        // Reading, parsing and compiling are blocking work: keep them off the request threads.
        tokio::task::spawn_blocking(move || {
            let valid = config::load_file(&this.config_path)?;
            this.apply(valid)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors(vec![ConfigError {
                file: self.config_path.display().to_string(),
                line: 0,
                key: String::new(),
                message: format!("reload task failed: {e}"),
            }]))
        })
    }

    fn apply(&self, valid: ValidConfig) -> Result<Applied, ConfigErrors> {
        let current = self.snapshot();
        // Certificate files are read on every reload: rotated files swap in even when the
        // config text did not change; a file that does not load refuses the reload.
        let (tls, tls_fingerprint) = crate::tls::build_all(&valid)?;
        if valid.checksum == current.checksum && tls_fingerprint == current.tls_fingerprint {
            return Ok(Applied {
                version: current.version,
                checksum: current.checksum.clone(),
                changed: false,
            });
        }
        check_fixed_at_start(&current, &valid)?;
        let mut state = self.reload_state.lock().unwrap_or_else(|p| p.into_inner());
        let version = state.last_version + 1;
        let (access_log, spans) = sinks_for(&valid, state.access_log.clone(), state.spans.clone())?;
        let prepared = Prepared {
            sinks: sinks(&access_log, &spans),
            tls,
            tls_fingerprint,
        };
        state.access_log = access_log;
        state.spans = spans;
        let state = &mut *state;
        let snap = snapshot::compile(
            &valid,
            version,
            &mut state.registries,
            prepared,
            &self.metrics,
        );
        state.last_version = version;
        self.current.store(Arc::new(snap));
        Ok(Applied {
            version,
            checksum: valid.checksum,
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

/// The access log and span exporter for `valid`: the running ones where their settings did not
/// change, new ones otherwise.
#[allow(clippy::type_complexity)]
fn sinks_for(
    valid: &ValidConfig,
    access_log: Running<AccessLogConfig, AccessLog>,
    spans: Running<OtlpConfig, SpanExporter>,
) -> Result<
    (
        Running<AccessLogConfig, AccessLog>,
        Running<OtlpConfig, SpanExporter>,
    ),
    ConfigErrors,
> {
    let o = &valid.config.observability;
    let access_log = keep_or_start(
        valid,
        o.access_log.as_ref(),
        access_log,
        |c| AccessLog::start(c).map_err(|e| format!("cannot open `{}`: {e}", c.destination)),
        "observability.access_log.destination",
    )?;
    let spans = keep_or_start(
        valid,
        o.otlp.as_ref(),
        spans,
        |c| SpanExporter::start(c).map_err(|e| format!("cannot start the exporter: {e}")),
        "observability.otlp",
    )?;
    Ok((access_log, spans))
}

fn keep_or_start<C: Clone + PartialEq, T>(
    valid: &ValidConfig,
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
            file: valid.source.clone(),
            line: 0,
            key: key.into(),
            message: e,
        }])),
    }
}

/// Listener and admin addresses are bound once at start; a reload that changes them is refused
/// (restart to move a listener) rather than half-applied.
fn check_fixed_at_start(current: &Snapshot, valid: &ValidConfig) -> Result<(), ConfigErrors> {
    let cfg = &valid.config;
    let mut errors = Vec::new();
    let err = |line: u32, key: String, message: String| ConfigError {
        file: valid.source.clone(),
        line,
        key,
        message,
    };
    let same_set = cfg.listeners.len() == current.listeners.len()
        && cfg.listeners.iter().all(|l| {
            current
                .listener(&l.name)
                .is_some_and(|c| l.address.parse::<std::net::SocketAddr>().ok() == Some(c.address))
        });
    if !same_set {
        errors.push(err(
            0,
            "listeners".into(),
            "listener names or addresses changed: restart the gateway to rebind listeners".into(),
        ));
    }
    if cfg.admin.address.parse::<std::net::SocketAddr>().ok() != Some(current.admin_address) {
        errors.push(err(
            cfg.admin.address.line,
            "admin.address".into(),
            "the admin address changed: restart the gateway to rebind it".into(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
