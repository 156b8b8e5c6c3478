//! The data plane's side of the control plane: a gateway run with `--store` follows the version
//! its environment (and, during a canary, its labels) asks for. Each new version goes through the
//! same validate → compile → atomic swap as a file reload, is written to the last-known-good file,
//! and is reported back with a heartbeat (applied version and request / 5xx counters, which
//! canary rollouts watch). Store outages are survived: the gateway keeps serving what it has,
//! retries quietly, and logs once per change of state.

use super::store::{now_ms, InstanceReport, Labels, Store, NOTIFY_CHANNEL};
use crate::gateway::Gateway;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a gateway looks at the store (and heartbeats) when no notification arrives, unless
/// `--store-poll-ms` says otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Who this instance is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub environment: String,
    pub labels: Labels,
}

/// A version as kept in the last-known-good file.
#[derive(Debug, Serialize, Deserialize)]
pub struct KnownGood {
    pub version: i64,
    pub environment: String,
    pub document: String,
}

impl KnownGood {
    pub fn read(path: &Path) -> Result<KnownGood, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Written to a temporary file and renamed over the old one, so a crash mid-write never
    /// leaves a torn file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

/// What `/admin/config-version` and `/metrics` show about the store.
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// The store version running (0: none yet).
    pub version: AtomicI64,
    /// Running from the last-known-good file, not (yet) from the store.
    pub last_known_good: AtomicBool,
    /// The store answered the last poll.
    pub up: AtomicBool,
    pub errors: AtomicU64,
    pub applied: AtomicU64,
    pub apply_failures: AtomicU64,
    /// A version this instance could not apply, and why.
    failed: Mutex<Option<(i64, String)>>,
}

impl StoreStatus {
    /// This instance's store families for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::observe::metrics::family;
        use std::sync::atomic::Ordering::Relaxed;
        let s = self;
        let one = |v: f64| [(String::new(), v)];
        family(
            out,
            "portcullis_config_store_up",
            "gauge",
            "1 when the config store answered the last poll.",
            &one(f64::from(u8::from(s.up.load(Relaxed)))),
        );
        family(
            out,
            "portcullis_config_store_errors_total",
            "counter",
            "Polls or heartbeats the config store did not answer.",
            &one(s.errors.load(Relaxed) as f64),
        );
        family(
            out,
            "portcullis_config_store_version",
            "gauge",
            "The store version this instance runs.",
            &one(s.version.load(Relaxed) as f64),
        );
        family(
            out,
            "portcullis_config_last_known_good",
            "gauge",
            "1 while running from the last-known-good file.",
            &one(f64::from(u8::from(s.last_known_good.load(Relaxed)))),
        );
        family(
            out,
            "portcullis_config_store_apply_failures_total",
            "counter",
            "Store versions this instance refused (invalid for it).",
            &one(s.apply_failures.load(Relaxed) as f64),
        );
    }

    /// The version this instance could not apply, and why.
    pub fn failed(&self) -> Option<(i64, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failed(&self, failed: Option<(i64, String)>) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = failed;
    }
}

/// The first config of a gateway started with `--store`: the version the store asks for, or —
/// when the store cannot be reached — the last-known-good file.
pub async fn initial_document(
    url: &str,
    identity: &Identity,
    lkg_path: &Path,
) -> Result<(KnownGood, bool), String> {
    let from_store = async {
        let store = tokio::time::timeout(Duration::from_secs(5), Store::connect(url))
            .await
            .map_err(|_| "store did not answer within 5 s".to_string())?
            .map_err(|e| e.to_string())?;
        let rollout = store
            .rollout(&identity.environment)
            .await
            .map_err(|e| e.to_string())?;
        let version = rollout
            .version_for(&identity.labels)
            .ok_or_else(|| format!("environment {} has no active version", identity.environment))?;
        let document = store
            .document(version)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("version {version} is missing"))?;
        Ok::<_, String>(KnownGood {
            version,
            environment: identity.environment.clone(),
            document,
        })
    };
    match from_store.await {
        Ok(k) => Ok((k, false)),
        Err(store_error) => match KnownGood::read(lkg_path) {
            Ok(k) => {
                tracing::warn!(error = %store_error, file = %lkg_path.display(), version = k.version,
                    "store unavailable at start: serving the last-known-good config");
                Ok((k, true))
            }
            Err(lkg_error) => Err(format!(
                "cannot load a config: store: {store_error}; last-known-good: {lkg_error}"
            )),
        },
    }
}

/// Follows the store until the process ends.
pub struct Agent {
    pub url: String,
    pub identity: Identity,
    pub lkg_path: PathBuf,
    pub gateway: Arc<Gateway>,
    pub status: Arc<StoreStatus>,
    /// Time between reads of the store when no notification arrives.
    pub poll_interval: Duration,
}

impl Agent {
    pub async fn run(self) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut store: Option<Store> = None;
        let mut listening = false;
        loop {
            if store.is_none() {
                match tokio::time::timeout(Duration::from_secs(5), Store::connect(&self.url)).await
                {
                    Ok(Ok(s)) => store = Some(s),
                    Ok(Err(e)) => self.store_failed(&e.to_string()),
                    Err(_) => self.store_failed("store did not answer within 5 s"),
                }
            }
            if let Some(s) = &store {
                if s.is_postgres() && !listening {
                    listening = true;
                    tokio::spawn(listen(self.url.clone(), Arc::clone(&wake)));
                }
                if let Err(e) = self.sync(s).await {
                    self.store_failed(&e);
                } else if !self.status.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %s.url(), "config store reachable");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = wake.notified() => {}
            }
        }
    }

    fn store_failed(&self, error: &str) {
        self.status.errors.fetch_add(1, Ordering::Relaxed);
        // One line per change of state, not per retry.
        if self.status.up.swap(false, Ordering::Relaxed)
            || self.status.errors.load(Ordering::Relaxed) == 1
        {
            tracing::warn!(error = %error, "config store unreachable; serving the current config and retrying");
        }
    }

    /// One round: apply the wanted version if it differs, then report.
    async fn sync(&self, store: &Store) -> Result<(), String> {
        let rollout = store
            .rollout(&self.identity.environment)
            .await
            .map_err(|e| e.to_string())?;
        let running = self.status.version.load(Ordering::Relaxed);
        let failed_before = self.status.failed().map(|(v, _)| v);
        if let Some(wanted) = rollout.version_for(&self.identity.labels) {
            // A version that failed here is not retried until another one is asked for.
            if wanted != running && Some(wanted) != failed_before {
                self.apply(store, wanted).await?;
            }
        }
        let (requests, errors) = self.gateway.metrics.request_totals();
        let failed = self.status.failed();
        let version = self.status.version.load(Ordering::Relaxed);
        store
            .report(&InstanceReport {
                instance_id: self.identity.instance_id.clone(),
                environment: self.identity.environment.clone(),
                labels: self.identity.labels.to_text(),
                applied_version: (version > 0).then_some(version),
                heartbeat_ms: now_ms(),
                requests: requests as i64,
                errors_5xx: errors as i64,
                last_known_good: self.status.last_known_good.load(Ordering::Relaxed),
                failed_version: failed.as_ref().map(|(v, _)| *v),
                last_error: failed.map(|(_, e)| e),
                stats: Some(super::stats::HeartbeatStats::collect(&self.gateway).to_text()),
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn apply(&self, store: &Store, version: i64) -> Result<(), String> {
        let document = store
            .document(version)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("version {version} is missing from the store"))?;
        match self
            .gateway
            .apply_document(document.clone(), format!("store version {version}"))
            .await
        {
            Ok(applied) => {
                self.status.version.store(version, Ordering::Relaxed);
                self.status.last_known_good.store(false, Ordering::Relaxed);
                self.status.applied.fetch_add(1, Ordering::Relaxed);
                self.status.set_failed(None);
                tracing::info!(
                    store_version = version,
                    config_version = applied.version,
                    changed = applied.changed,
                    "applied config from the store"
                );
                let lkg = KnownGood {
                    version,
                    environment: self.identity.environment.clone(),
                    document,
                };
                let path = self.lkg_path.clone();
                // File I/O off the runtime threads.
                let written = tokio::task::spawn_blocking(move || lkg.write(&path)).await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::warn!(file = %self.lkg_path.display(), "cannot write the last-known-good file");
                }
            }
            Err(errors) => {
                self.status.apply_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(store_version = version, errors = %errors,
                    "store version refused; the running config keeps serving");
                self.status.set_failed(Some((version, errors.to_string())));
            }
        }
        Ok(())
    }
}

/// PostgreSQL `LISTEN`: wakes the agent on every activation. Reconnects after failures.
async fn listen(url: String, wake: Arc<tokio::sync::Notify>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => {
                if l.listen(NOTIFY_CHANNEL).await.is_ok() {
                    // A notification may have been missed while (re)connecting.
                    wake.notify_one();
                    while l.recv().await.is_ok() {
                        wake.notify_one();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            instance_id: "gw-1".into(),
            environment: "prod".into(),
            labels: Labels::parse("zone=a").unwrap(),
        }
    }

    #[test]
    fn the_last_known_good_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.json");
        for version in [3, 4] {
            KnownGood {
                version,
                environment: "prod".into(),
                document: format!("routes: [] # v{version}"),
            }
            .write(&path)
            .unwrap();
            let back = KnownGood::read(&path).unwrap();
            assert_eq!(
                (back.version, back.environment.as_str(), back.document),
                (version, "prod", format!("routes: [] # v{version}"))
            );
        }
        // Only the file itself is left: the temporary one was renamed over it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lkg.json"]);
        // A torn or foreign file is an error naming the file, never a default config.
        std::fs::write(&path, b"{\"version\": 5, \"environ").unwrap();
        let e = KnownGood::read(&path).err().unwrap();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_gateway_starts_from_the_last_known_good_file_when_the_store_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let lkg = dir.path().join("lkg.json");
        // A store that cannot be opened (its directory does not exist).
        let down = format!("sqlite://{}/missing/store.db", dir.path().display());
        let down = down.as_str();
        let e = initial_document(down, &identity(), &lkg)
            .await
            .err()
            .unwrap();
        assert!(
            e.contains("store:") && e.contains("last-known-good:") && e.contains("lkg.json"),
            "both causes are reported: {e}"
        );
        KnownGood {
            version: 7,
            environment: "prod".into(),
            document: "routes: []".into(),
        }
        .write(&lkg)
        .unwrap();
        let (k, from_lkg) = initial_document(down, &identity(), &lkg).await.unwrap();
        assert!(from_lkg);
        assert_eq!((k.version, k.document.as_str()), (7, "routes: []"));
    }

    #[test]
    fn store_status_metrics_show_each_state() {
        let s = StoreStatus::default();
        s.up.store(true, Ordering::Relaxed);
        s.version.store(12, Ordering::Relaxed);
        s.errors.store(3, Ordering::Relaxed);
        s.apply_failures.store(1, Ordering::Relaxed);
        s.set_failed(Some((13, "admin address moved".into())));
        let mut out = String::new();
        s.render_metrics(&mut out);
        for line in [
            "portcullis_config_store_up 1",
            "portcullis_config_store_errors_total 3",
            "portcullis_config_store_version 12",
            "portcullis_config_last_known_good 0",
            "portcullis_config_store_apply_failures_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        }
        assert_eq!(s.failed(), Some((13, "admin address moved".to_string())));
    }
}
