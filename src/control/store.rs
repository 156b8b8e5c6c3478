//! The config store: every version of the config document with its status, the rollout state
//! of each environment (active version, canary), the activation history rollback walks back
//! through, and what each gateway instance reports. One schema, written in SQL both SQLite and
//! PostgreSQL accept, reached through sqlx's `Any` driver.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// A version's lifecycle. Only VALIDATED (or previously active) versions can become ACTIVE;
/// a version is never edited, a change is a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Draft,
    Validated,
    Active,
    RolledBack,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "DRAFT",
            Status::Validated => "VALIDATED",
            Status::Active => "ACTIVE",
            Status::RolledBack => "ROLLED_BACK",
            Status::Rejected => "REJECTED",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "VALIDATED" => Status::Validated,
            "ACTIVE" => Status::Active,
            "ROLLED_BACK" => Status::RolledBack,
            "REJECTED" => Status::Rejected,
            _ => Status::Draft,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub version: i64,
    pub environment: String,
    pub checksum: String,
    pub status: Status,
    pub created_by: String,
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    pub message: String,
    /// Validation errors (REJECTED) or why it was rolled back.
    pub reason: Option<String>,
}

/// What an environment's instances should run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub active_version: Option<i64>,
    pub canary_version: Option<i64>,
    /// `label=value`: instances carrying it run the canary version.
    pub canary_selector: Option<String>,
}

impl Rollout {
    /// The version an instance with `labels` should run.
    pub fn version_for(&self, labels: &Labels) -> Option<i64> {
        match (&self.canary_version, &self.canary_selector) {
            (Some(v), Some(sel)) if labels.matches(sel) => Some(*v),
            _ => self.active_version,
        }
    }
}

/// An instance's `key=value` labels, kept sorted so their text form is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Parses `k=v,k2=v2` (empty: no labels).
    pub fn parse(s: &str) -> Result<Labels, String> {
        let mut pairs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("label `{part}` is not key=value"))?;
            if k.trim().is_empty() {
                return Err(format!("label `{part}` has an empty key"));
            }
            pairs.push((k.trim().to_string(), v.trim().to_string()));
        }
        pairs.sort();
        Ok(Labels(pairs))
    }

    /// True when `selector` (`key=value`) is one of the labels.
    pub fn matches(&self, selector: &str) -> bool {
        selector
            .split_once('=')
            .is_some_and(|(k, v)| self.0.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    pub fn to_text(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What one gateway instance last reported.
#[derive(Debug, Clone)]
pub struct InstanceReport {
    pub instance_id: String,
    pub environment: String,
    pub labels: String,
    pub applied_version: Option<i64>,
    pub heartbeat_ms: i64,
    pub requests: i64,
    pub errors_5xx: i64,
    /// Serving from its last-known-good file (the store was unreachable when it started).
    pub last_known_good: bool,
    /// A version it could not apply, and why.
    pub failed_version: Option<i64>,
    pub last_error: Option<String>,
    /// Latency and per-upstream counters (`control::stats::HeartbeatStats` as JSON).
    pub stats: Option<String>,
}

/// A progressive rollout of one route (`portcullis rollout`), as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRollout {
    pub environment: String,
    pub route: String,
    pub from_upstream: String,
    pub to_upstream: String,
    /// The plan as given (steps, interval, gates), JSON.
    pub plan: String,
    /// The share of the route's traffic the new upstream has now, in percent.
    pub percent: i64,
    /// RUNNING, PAUSED, DONE, ROLLED_BACK, FAILED.
    pub state: String,
    pub reason: Option<String>,
    /// The version that set `percent`.
    pub version: Option<i64>,
    pub started_at_ms: i64,
    /// The rollout process writes this at every check: a RUNNING rollout whose time stops
    /// moving was interrupted.
    pub updated_at_ms: i64,
}

pub const NOTIFY_CHANNEL: &str = "portcullis_config";

/// Schema changes, applied in order, each once; the number applied is kept in
/// `portcullis_schema`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE config_versions (
        version BIGINT PRIMARY KEY,
        environment TEXT NOT NULL,
        document TEXT NOT NULL,
        checksum TEXT NOT NULL,
        status TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        activated_at BIGINT,
        message TEXT NOT NULL,
        reason TEXT
    );
    CREATE TABLE rollouts (
        environment TEXT PRIMARY KEY,
        active_version BIGINT,
        canary_version BIGINT,
        canary_selector TEXT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE activations (
        seq BIGINT PRIMARY KEY,
        environment TEXT NOT NULL,
        version BIGINT NOT NULL,
        actor TEXT NOT NULL,
        at BIGINT NOT NULL
    );
    CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        environment TEXT NOT NULL,
        labels TEXT NOT NULL,
        applied_version BIGINT,
        heartbeat_at BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        errors_5xx BIGINT NOT NULL,
        last_known_good BIGINT NOT NULL,
        failed_version BIGINT,
        last_error TEXT
    )",
    "ALTER TABLE instances ADD COLUMN stats TEXT;
    CREATE TABLE route_rollouts (
        environment TEXT NOT NULL,
        route TEXT NOT NULL,
        from_upstream TEXT NOT NULL,
        to_upstream TEXT NOT NULL,
        plan TEXT NOT NULL,
        percent BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        version BIGINT,
        started_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (environment, route)
    )",
];

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    url: String,
    postgres: bool,
}

impl Store {
    /// Connects (creating an SQLite file if needed) and brings the schema up to date. A plain
    /// path is an SQLite file.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let full = if postgres {
            url.to_string()
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            format!("sqlite://{path}?mode=rwc")
        };
        let shown = redact(url);
        let db = |source| StoreError::Database {
            url: shown.clone(),
            source,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&full)
            .await
            .map_err(db)?;
        let store = Store {
            pool,
            url: shown.clone(),
            postgres,
        };
        if !postgres {
            // Several processes share the file: readers must not block the writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await
                .map_err(db)?;
        }
        store.migrate().await?;
        Ok(store)
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// A transaction that writes. On SQLite it takes the write lock at `BEGIN` (`IMMEDIATE`):
    /// a deferred transaction that reads, then writes after another connection (a gateway's
    /// heartbeat) committed, fails at once with "database is locked" instead of waiting.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        };
        tx.map_err(|e| self.err(e))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database {
            url: self.url.clone(),
            source,
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if self.postgres {
            // Gateways of a fleet starting together against an empty database: one migrates,
            // the others wait and then find the schema current.
            sqlx::query("SELECT pg_advisory_xact_lock(7261637)")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS portcullis_schema (applied BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        let applied: Option<i64> = sqlx::query("SELECT applied FROM portcullis_schema")
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .map(|r| r.get(0));
        let applied = match applied {
            Some(n) => n,
            None => {
                sqlx::query("INSERT INTO portcullis_schema (applied) VALUES (0)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                0
            }
        };
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            for statement in migration.split(';').filter(|s| !s.trim().is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            sqlx::query("UPDATE portcullis_schema SET applied = $1")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Stores a new version and returns its number.
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &self,
        environment: &str,
        document: &str,
        checksum: &str,
        status: Status,
        created_by: &str,
        message: &str,
        reason: Option<&str>,
    ) -> Result<i64, StoreError> {
        // Version numbers are global; two concurrent pushes may pick the same one, and the
        // loser tries again.
        let mut attempt = 0;
        loop {
            let r = sqlx::query(
                "INSERT INTO config_versions
                   (version, environment, document, checksum, status, created_by, created_at, message, reason)
                 SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8 FROM config_versions
                 RETURNING version",
            )
            .bind(environment)
            .bind(document)
            .bind(checksum)
            .bind(status.as_str())
            .bind(created_by)
            .bind(now_ms())
            .bind(message)
            .bind(reason)
            .fetch_one(&self.pool)
            .await;
            match r {
                Ok(row) => return Ok(row.get(0)),
                Err(e) if attempt < 5 && is_conflict(&e) => attempt += 1,
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    pub async fn list(&self, environment: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM config_versions WHERE environment = $1 ORDER BY version"
        ))
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(version_info).collect())
    }

    /// One version and its document.
    pub async fn get(&self, version: i64) -> Result<Option<(VersionInfo, String)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS}, document FROM config_versions WHERE version = $1"
        ))
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(row.map(|r| (version_info(&r), r.get::<String, _>(9))))
    }

    /// The document of `version`, for a gateway about to apply it.
    pub async fn document(&self, version: i64) -> Result<Option<String>, StoreError> {
        Ok(self.get(version).await?.map(|(_, d)| d))
    }

    pub async fn rollout(&self, environment: &str) -> Result<Rollout, StoreError> {
        let row = sqlx::query(
            "SELECT active_version, canary_version, canary_selector FROM rollouts WHERE environment = $1",
        )
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(row.map_or_else(Rollout::default, |r| Rollout {
            active_version: r.get(0),
            canary_version: r.get(1),
            canary_selector: r.get(2),
        }))
    }

    /// The version's details if it may become ACTIVE (REJECTED and DRAFT versions never may).
    async fn activatable(&self, version: i64) -> Result<VersionInfo, StoreError> {
        let Some((info, _)) = self.get(version).await? else {
            return Err(StoreError::Refused(format!("no version {version}")));
        };
        if matches!(info.status, Status::Rejected | Status::Draft) {
            return Err(StoreError::Refused(format!(
                "version {version} is {} and can never become ACTIVE",
                info.status.as_str()
            )));
        }
        Ok(info)
    }

    /// Makes `version` the active version of its environment for every instance (ending any
    /// canary). Returns the version that was active before.
    pub async fn activate(&self, version: i64, actor: &str) -> Result<Option<i64>, StoreError> {
        let info = self.activatable(version).await?;
        let env = info.environment.as_str();
        let mut tx = self.begin_write().await?;
        let previous: Option<i64> =
            sqlx::query("SELECT active_version FROM rollouts WHERE environment = $1")
                .bind(env)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .and_then(|r| r.get(0));
        let now = now_ms();
        sqlx::query(
            "UPDATE config_versions SET status = 'VALIDATED'
             WHERE environment = $1 AND status = 'ACTIVE' AND version <> $2",
        )
        .bind(env)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query(
            "UPDATE config_versions SET status = 'ACTIVE', activated_at = $1, reason = NULL
             WHERE version = $2",
        )
        .bind(now)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO rollouts (environment, active_version, canary_version, canary_selector, updated_at)
             VALUES ($1, $2, NULL, NULL, $3)
             ON CONFLICT (environment) DO UPDATE SET active_version = $2, canary_version = NULL,
               canary_selector = NULL, updated_at = $3",
        )
        .bind(env)
        .bind(version)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if previous != Some(version) {
            sqlx::query(
                "INSERT INTO activations (seq, environment, version, actor, at)
                 SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4 FROM activations",
            )
            .bind(env)
            .bind(version)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        self.notify(env).await;
        Ok(previous)
    }

    /// Sends `version` to the instances matching `selector` only.
    pub async fn start_canary(&self, version: i64, selector: &str) -> Result<(), StoreError> {
        let info = self.activatable(version).await?;
        let env = info.environment.as_str();
        let rollout = self.rollout(env).await?;
        if rollout.active_version.is_none() {
            return Err(StoreError::Refused(format!(
                "environment {env} has no active version to fall back to; activate one without --canary first"
            )));
        }
        sqlx::query(
            "UPDATE rollouts SET canary_version = $1, canary_selector = $2, updated_at = $3
             WHERE environment = $4",
        )
        .bind(version)
        .bind(selector)
        .bind(now_ms())
        .bind(env)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        self.notify(env).await;
        Ok(())
    }

    /// Ends a canary of `version` by sending its instances back to the active version and
    /// marking it ROLLED_BACK with `reason`.
    pub async fn abort_canary(&self, version: i64, reason: &str) -> Result<(), StoreError> {
        let Some((info, _)) = self.get(version).await? else {
            return Err(StoreError::Refused(format!("no version {version}")));
        };
        let env = info.environment.as_str();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE rollouts SET canary_version = NULL, canary_selector = NULL, updated_at = $1
             WHERE environment = $2 AND canary_version = $3",
        )
        .bind(now_ms())
        .bind(env)
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        self.mark_rolled_back(&mut tx, version, reason).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        self.notify(env).await;
        Ok(())
    }

    /// Rolls the environment back to the version active before the current one: the current
    /// one becomes ROLLED_BACK. Returns (from, to).
    pub async fn rollback(&self, environment: &str, actor: &str) -> Result<(i64, i64), StoreError> {
        let rollout = self.rollout(environment).await?;
        let Some(current) = rollout.active_version else {
            return Err(StoreError::Refused(format!(
                "environment {environment} has no active version"
            )));
        };
        // The most recent earlier activation of a version that is still usable.
        let target: Option<i64> = sqlx::query(
            "SELECT a.version FROM activations a JOIN config_versions v ON v.version = a.version
             WHERE a.environment = $1 AND a.version <> $2
               AND v.status NOT IN ('ROLLED_BACK', 'REJECTED')
             ORDER BY a.seq DESC LIMIT 1",
        )
        .bind(environment)
        .bind(current)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?
        .map(|r| r.get(0));
        let Some(target) = target else {
            return Err(StoreError::Refused(format!(
                "environment {environment} has no earlier active version to roll back to"
            )));
        };
        self.activate(target, actor).await?;
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        let reason = format!("rolled back to version {target} by {actor}");
        self.mark_rolled_back(&mut conn, current, &reason).await?;
        Ok((current, target))
    }

    async fn mark_rolled_back(
        &self,
        conn: &mut sqlx::AnyConnection,
        version: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE config_versions SET status = 'ROLLED_BACK', reason = $1 WHERE version = $2",
        )
        .bind(reason)
        .bind(version)
        .execute(conn)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records an instance's state (its heartbeat).
    pub async fn report(&self, r: &InstanceReport) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (instance_id, environment, labels, applied_version, heartbeat_at,
                 requests, errors_5xx, last_known_good, failed_version, last_error, stats)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (instance_id) DO UPDATE SET environment = $2, labels = $3,
                 applied_version = $4, heartbeat_at = $5, requests = $6, errors_5xx = $7,
                 last_known_good = $8, failed_version = $9, last_error = $10, stats = $11",
        )
        .bind(&r.instance_id)
        .bind(&r.environment)
        .bind(&r.labels)
        .bind(r.applied_version)
        .bind(r.heartbeat_ms)
        .bind(r.requests)
        .bind(r.errors_5xx)
        .bind(i64::from(r.last_known_good))
        .bind(r.failed_version)
        .bind(&r.last_error)
        .bind(&r.stats)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn instances(&self, environment: &str) -> Result<Vec<InstanceReport>, StoreError> {
        let rows = sqlx::query(
            "SELECT instance_id, environment, labels, applied_version, heartbeat_at, requests,
                    errors_5xx, last_known_good, failed_version, last_error, stats
             FROM instances WHERE environment = $1 ORDER BY instance_id",
        )
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| InstanceReport {
                instance_id: r.get(0),
                environment: r.get(1),
                labels: r.get(2),
                applied_version: r.get(3),
                heartbeat_ms: r.get(4),
                requests: r.get(5),
                errors_5xx: r.get(6),
                last_known_good: r.get::<i64, _>(7) != 0,
                failed_version: r.get(8),
                last_error: r.get(9),
                stats: r.get(10),
            })
            .collect())
    }

    /// Starts (or takes over) the rollout of `r.route`: refused while another one is RUNNING
    /// and was touched within `stale_ms`.
    pub async fn begin_route_rollout(
        &self,
        r: &RouteRollout,
        stale_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query(
            "SELECT state, updated_at FROM route_rollouts WHERE environment = $1 AND route = $2",
        )
        .bind(&r.environment)
        .bind(&r.route)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        if let Some(row) = existing {
            let state: String = row.get(0);
            let updated: i64 = row.get(1);
            if state == "RUNNING" && now_ms() - updated < stale_ms {
                return Err(StoreError::Refused(format!(
                    "a rollout of route {} is already running (see `portcullis rollout status`)",
                    r.route
                )));
            }
        }
        sqlx::query("DELETE FROM route_rollouts WHERE environment = $1 AND route = $2")
            .bind(&r.environment)
            .bind(&r.route)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO route_rollouts (environment, route, from_upstream, to_upstream, plan,
                 percent, state, reason, version, started_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&r.environment)
        .bind(&r.route)
        .bind(&r.from_upstream)
        .bind(&r.to_upstream)
        .bind(&r.plan)
        .bind(r.percent)
        .bind(&r.state)
        .bind(&r.reason)
        .bind(r.version)
        .bind(r.started_at_ms)
        .bind(r.updated_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Records a rollout's progress.
    pub async fn update_route_rollout(
        &self,
        environment: &str,
        route: &str,
        percent: i64,
        version: Option<i64>,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE route_rollouts SET percent = $1, version = $2, state = $3, reason = $4,
                 updated_at = $5
             WHERE environment = $6 AND route = $7",
        )
        .bind(percent)
        .bind(version)
        .bind(state)
        .bind(reason)
        .bind(now_ms())
        .bind(environment)
        .bind(route)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a RUNNING rollout's progress; false (and nothing written) when it is no longer
    /// RUNNING — paused by the operator in between, so a pause is never overwritten.
    pub async fn touch_route_rollout(
        &self,
        environment: &str,
        route: &str,
        percent: i64,
        version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE route_rollouts SET percent = $1, version = $2, updated_at = $3
             WHERE environment = $4 AND route = $5 AND state = 'RUNNING'",
        )
        .bind(percent)
        .bind(version)
        .bind(now_ms())
        .bind(environment)
        .bind(route)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a RUNNING rollout PAUSED (its process stops at its next check). False when none runs.
    pub async fn pause_route_rollout(
        &self,
        environment: &str,
        route: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE route_rollouts SET state = 'PAUSED', reason = 'paused by the operator',
                 updated_at = $1
             WHERE environment = $2 AND route = $3 AND state = 'RUNNING'",
        )
        .bind(now_ms())
        .bind(environment)
        .bind(route)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn route_rollouts(&self, environment: &str) -> Result<Vec<RouteRollout>, StoreError> {
        let rows = sqlx::query(
            "SELECT environment, route, from_upstream, to_upstream, plan, percent, state, reason,
                    version, started_at, updated_at
             FROM route_rollouts WHERE environment = $1 ORDER BY route",
        )
        .bind(environment)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|r| RouteRollout {
                environment: r.get(0),
                route: r.get(1),
                from_upstream: r.get(2),
                to_upstream: r.get(3),
                plan: r.get(4),
                percent: r.get(5),
                state: r.get(6),
                reason: r.get(7),
                version: r.get(8),
                started_at_ms: r.get(9),
                updated_at_ms: r.get(10),
            })
            .collect())
    }

    /// Wakes PostgreSQL listeners (gateways apply at once instead of at their next poll).
    async fn notify(&self, environment: &str) {
        if self.postgres {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(environment)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %e, "NOTIFY failed; gateways will see the change at their next poll");
            }
        }
    }
}

const VERSION_COLUMNS: &str =
    "version, environment, checksum, status, created_by, created_at, activated_at, message, reason";

fn version_info(r: &AnyRow) -> VersionInfo {
    VersionInfo {
        version: r.get(0),
        environment: r.get(1),
        checksum: r.get(2),
        status: Status::parse(&r.get::<String, _>(3)),
        created_by: r.get(4),
        created_at_ms: r.get(5),
        activated_at_ms: r.get(6),
        message: r.get(7),
        reason: r.get(8),
    }
}

fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operator's `activate` while gateways heartbeat into the same SQLite file: every write
    /// succeeds (a deferred transaction that read before another connection committed would
    /// fail at once with "database is locked").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writers_wait_for_each_other_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let operator = Store::connect(&url).await.unwrap();
        let gateway = Store::connect(&url).await.unwrap();
        let mut versions = Vec::new();
        for i in 0..2 {
            let doc = format!("# v{i}\n");
            versions.push(
                operator
                    .push(
                        "prod",
                        &doc,
                        &format!("sha256:{i}"),
                        Status::Validated,
                        "t",
                        "m",
                        None,
                    )
                    .await
                    .unwrap(),
            );
        }
        let heartbeats = tokio::spawn(async move {
            for n in 0..300 {
                let r = InstanceReport {
                    instance_id: format!("gw-{}", n % 3),
                    environment: "prod".into(),
                    labels: String::new(),
                    applied_version: None,
                    heartbeat_ms: n,
                    requests: n,
                    errors_5xx: 0,
                    last_known_good: false,
                    failed_version: None,
                    last_error: None,
                    stats: None,
                };
                gateway.report(&r).await.unwrap();
            }
        });
        for n in 0..40 {
            operator
                .activate(versions[n % 2], "operator")
                .await
                .unwrap_or_else(|e| panic!("activate {n}: {e}"));
        }
        heartbeats.await.unwrap();
    }

    #[test]
    fn labels_parse_and_match() {
        let l = Labels::parse("zone=b, canary=true,region=eu").unwrap();
        assert_eq!(l.to_text(), "canary=true,region=eu,zone=b");
        assert!(l.matches("canary=true"));
        assert!(!l.matches("canary=false"));
        assert!(!l.matches("canary"));
        assert!(Labels::parse("novalue").is_err());
        assert_eq!(Labels::parse("").unwrap().to_text(), "");
    }

    #[test]
    fn canary_selector_picks_the_version() {
        let r = Rollout {
            active_version: Some(3),
            canary_version: Some(4),
            canary_selector: Some("canary=true".into()),
        };
        assert_eq!(
            r.version_for(&Labels::parse("canary=true").unwrap()),
            Some(4)
        );
        assert_eq!(r.version_for(&Labels::parse("zone=a").unwrap()), Some(3));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:secret@127.0.0.1:5432/db"),
            "postgres://app:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
