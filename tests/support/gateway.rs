//! The gateway under test: in-process from a YAML string (`TestGateway`, random ports), or the
//! real `portcullis` binary as a child process (`GatewayProcess`, for signals, exit codes and
//! the control plane).

use super::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis::gateway::Gateway;
use portcullis::server::Running;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A gateway started in-process from YAML, on random ports.
pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl TestGateway {
    pub async fn start(yaml: &str) -> TestGateway {
        Self::start_with_files(yaml, &[]).await
    }

    /// Starts with `files` (name, content) written beside the config first.
    pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let gateway = match Gateway::load(config_path.clone()) {
            Ok(g) => g,
            Err(e) => panic!("test config is invalid:\n{e}"),
        };
        let running = portcullis::server::start(gateway.clone()).await.unwrap();
        let addr = running.listeners[0].1;
        let admin = running.admin;
        TestGateway {
            gateway,
            running: Some(running),
            addr,
            admin,
            dir,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Writes a new config file (for a later reload).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }
}

/// The `portcullis` binary running as a child process.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl GatewayProcess {
    /// `yaml` may use `{LISTEN}` and `{ADMIN}`, replaced with free addresses.
    pub async fn spawn(yaml: &str, threads: usize) -> GatewayProcess {
        Self::spawn_with_args(yaml, threads, &[]).await
    }

    /// As `spawn`, with more arguments to `portcullis run`.
    pub async fn spawn_with_args(yaml: &str, threads: usize, args: &[&str]) -> GatewayProcess {
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let (addr, admin) = (free_addr(), free_addr());
            let config_path = dir.path().join("portcullis.yaml");
            std::fs::write(
                &config_path,
                yaml.replace("{LISTEN}", &addr.to_string())
                    .replace("{ADMIN}", &admin.to_string()),
            )
            .unwrap();
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
            cmd.args(["run", "-c"])
                .arg(&config_path)
                .args(["--worker-threads", &threads.to_string()])
                .args(args);
            if let Ok(p) = Self::launch(cmd, addr, admin, dir, config_path).await {
                return p;
            }
        }
        panic!("the gateway process could not bind free ports in {PORT_ATTEMPTS} attempts");
    }

    /// A gateway following the config store at `store` as `instance` with `labels`. Its
    /// listener and admin addresses reach the stored documents as `${GW_LISTEN}` and
    /// `${GW_ADMIN}`; `addrs` reuses those of an earlier process (a restart).
    pub async fn follow(
        store: &str,
        instance: &str,
        labels: &str,
        dir: tempfile::TempDir,
        addrs: Option<(SocketAddr, SocketAddr)>,
    ) -> GatewayProcess {
        Self::follow_with(store, instance, labels, dir, addrs, &[]).await
    }

    /// `follow` with extra `run` arguments (e.g. `--store-poll-ms`).
    pub async fn follow_with(
        store: &str,
        instance: &str,
        labels: &str,
        dir: tempfile::TempDir,
        addrs: Option<(SocketAddr, SocketAddr)>,
        extra: &[&str],
    ) -> GatewayProcess {
        // Given addresses (a restart) must be used as they are; new ones may be chosen again.
        let attempts = if addrs.is_some() { 1 } else { PORT_ATTEMPTS };
        let dir_path = dir.path().to_path_buf();
        let mut dir = Some(dir);
        for _ in 0..attempts {
            let (addr, admin) = addrs.unwrap_or_else(|| (free_addr(), free_addr()));
            let lkg = dir_path.join("last-known-good.json");
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
            cmd.args(["run", "--store", store, "--instance-id", instance])
                .args(["--instance-labels", labels, "--worker-threads", "1"])
                .arg("--last-known-good")
                .arg(&lkg)
                .args(extra)
                .env("GW_LISTEN", addr.to_string())
                .env("GW_ADMIN", admin.to_string());
            let d = dir.take().expect("the directory is handed back on failure");
            match Self::launch(cmd, addr, admin, d, lkg).await {
                Ok(p) => return p,
                Err(d) => dir = Some(d),
            }
        }
        panic!("gateway process {instance} did not become ready (its stderr is above)");
    }

    async fn launch(
        mut cmd: std::process::Command,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: tempfile::TempDir,
        config_path: std::path::PathBuf,
    ) -> Result<GatewayProcess, tempfile::TempDir> {
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start portcullis");
        let mut p = GatewayProcess {
            child,
            addr,
            admin,
            dir,
            config_path,
        };
        let c = client();
        for _ in 0..100 {
            let ready = tokio::time::timeout(
                Duration::from_millis(500),
                c.request(
                    Request::get(format!("http://{admin}/health/ready"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                ),
            )
            .await;
            if let Ok(Ok(r)) = ready {
                if r.status() == 200 {
                    return Ok(p);
                }
            }
            // Exited: most likely a port another process took after it was chosen (the
            // reason is on stderr); the caller may try new ports.
            if p.child.try_wait().ok().flatten().is_some() {
                return Err(std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway process did not become ready");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of a child this test started.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Resident memory (kB) and its peak, from /proc.
    pub fn rss_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(
            &self.config_path,
            yaml.replace("{LISTEN}", &self.addr.to_string())
                .replace("{ADMIN}", &self.admin.to_string()),
        )
        .unwrap();
    }

    /// `/admin/config-version` as JSON.
    pub async fn config_document(&self) -> serde_json::Value {
        get(
            &client(),
            &format!("http://{}/admin/config-version", self.admin),
            &[],
        )
        .await
        .json()
    }

    pub async fn config_version(&self) -> u64 {
        let r = get(
            &client(),
            &format!("http://{}/admin/config-version", self.admin),
            &[],
        )
        .await;
        r.json()["config_version"].as_u64().unwrap()
    }

    /// Stops the process (SIGTERM) and hands back its directory, for a restart that keeps it.
    pub fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGTERM);
        assert!(
            self.wait_exit(Duration::from_secs(10)).is_some(),
            "gateway did not stop"
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
