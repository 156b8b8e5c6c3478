//! A real Redis server for the tests that share state across instances.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A real Redis server (Debian's `redis-server`) on 127.0.0.1 and a random port, without
/// persistence. Panics if the binary is missing: `scripts/test` installs it.
pub struct RedisServer {
    pub port: u16,
    /// With `start_tls`: a TLS port beside the plain one (which the test's own commands use).
    pub tls_port: Option<u16>,
    /// More `redis-server` arguments (`--replicaof …`).
    extra: Vec<String>,
    /// Sentinel mode, with this config file (the sentinel rewrites it).
    sentinel_conf: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(Vec::new(), None).await
    }

    /// Three masters forming a Redis Cluster (`redis-cli --cluster create`), ready once every
    /// node says `cluster_state:ok`.
    pub async fn start_cluster() -> Vec<RedisServer> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                Self::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ]
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                    None,
                )
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (redis-tools) is installed with redis-server");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ready = std::time::Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n
                .bulk(&["CLUSTER", "INFO"])
                .await
                .is_some_and(|i| i.contains("cluster_state:ok"))
            {
                assert!(
                    std::time::Instant::now() < ready,
                    "the cluster never became ok"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        nodes
    }

    /// A replica of `master`.
    pub async fn start_replica_of(master: &RedisServer) -> RedisServer {
        Self::start_with(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
            None,
        )
        .await
    }

    /// A sentinel watching `master` as `name` (quorum 2, down after 1 s).
    pub async fn start_sentinel(name: &str, master: &RedisServer) -> RedisServer {
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {} 2\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\nsentinel parallel-syncs {name} 1\n",
            master.port
        );
        Self::start_with(Vec::new(), Some(conf)).await
    }

    async fn start_with(extra: Vec<String>, sentinel: Option<String>) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let sentinel_conf = sentinel.map(|text| {
            let p = dir.path().join("sentinel.conf");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut r = RedisServer {
            port: 0,
            tls_port: None,
            extra,
            sentinel_conf,
            child: None,
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            r.port = free_addr().port();
            match r.launch().await {
                Ok(()) => return r,
                // Another process took the port in the moment it was free: a new one.
                Err(log) if log.contains("Address already in use") => r.kill(),
                Err(log) => r.failed(&log),
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// Also listening with TLS (`tls-port`) on this certificate and key; clients are not asked
    /// for certificates.
    pub async fn start_tls(cert_pem: &str, key_pem: &str, ca_pem: &str) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("tls.crt", cert_pem),
            ("tls.key", key_pem),
            ("ca.crt", ca_pem),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut r = RedisServer {
            port: 0,
            tls_port: None,
            extra: Vec::new(),
            sentinel_conf: None,
            child: None,
            dir,
        };
        for _ in 0..PORT_ATTEMPTS {
            r.port = free_addr().port();
            r.tls_port = Some(free_addr().port());
            match r.launch().await {
                Ok(()) => return r,
                Err(log) if log.contains("Address already in use") => r.kill(),
                Err(log) => r.failed(&log),
            }
        }
        panic!("redis-server found no free ports in {PORT_ATTEMPTS} attempts");
    }

    /// `rediss://` to the TLS port.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/0",
            self.tls_port.expect("started with start_tls")
        )
    }

    fn failed(&self, log: &str) -> ! {
        panic!(
            "redis-server on port {} did not answer PING; its log:\n{log}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        if let Err(log) = self.launch().await {
            self.failed(&log);
        }
    }

    /// Starts the server on `self.port`; its log if it does not answer PING.
    async fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = std::process::Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            cmd.arg(conf).arg("--sentinel");
        }
        cmd.args(&self.extra);
        if let Some(tls_port) = self.tls_port {
            let d = self.dir.path();
            cmd.args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(d.join("tls.crt"))
                .arg("--tls-key-file")
                .arg(d.join("tls.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        }
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]);
        if self.sentinel_conf.is_none() {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        let child = cmd
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); scripts/test installs it (apt package redis-server)")
            });
        self.child = Some(child);
        for _ in 0..200 {
            // Ours, not another server that holds the port: INFO names the process.
            let pid = self.child.as_ref().map(|c| c.id());
            if self.command(&["PING"]).await.as_deref() == Some("+PONG")
                && self.server_pid().await == pid
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(std::fs::read_to_string(log).unwrap_or_default())
    }

    /// Kills the server (SIGKILL, by the PID this test started).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP to the PID this test started): connections stay open and
    /// nothing answers, so a client meets its timeout rather than a refusal.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// The process id the server on the port reports (`INFO server`).
    async fn server_pid(&self) -> Option<u32> {
        self.info("server")
            .await?
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The text of `INFO section`, read whole.
    pub async fn info(&self, section: &str) -> Option<String> {
        self.bulk(&["INFO", section]).await
    }

    /// A command whose reply is one bulk string (`INFO`, `CLUSTER INFO`), read whole.
    pub async fn bulk(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16384];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..read]);
            // `$<len>\r\n<text>\r\n`: done once the whole bulk string is here.
            let text = String::from_utf8_lossy(&buf);
            let (head, body) = text.split_once("\r\n")?;
            let len: usize = head.strip_prefix('$')?.parse().ok()?;
            if body.len() >= len {
                return Some(body[..len].to_string());
            }
        }
        None
    }

    /// Sends one command (inline protocol) and returns the first reply line.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .map(str::to_string)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
