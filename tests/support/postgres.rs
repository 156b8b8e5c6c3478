//! A real PostgreSQL server for the control-plane tests.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

/// A PostgreSQL server from Debian's package on 127.0.0.1 and a free port, in a temporary
/// data directory. Panics (never skips) when PostgreSQL is not installed: scripts/test
/// installs it.
pub struct PostgresServer {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// `ssl = on` with this data directory's server.crt / server.key, TLS-only connections.
    tls: bool,
}

impl PostgresServer {
    /// `name` from the newest installed PostgreSQL, chosen by its numeric major version
    /// (a plain sort would put 9 after 15).
    fn bin(name: &str) -> std::path::PathBuf {
        let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let version = e.file_name().to_str()?.parse().ok()?;
                        Some((version, e.path().join("bin").join(name)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.retain(|(_, p)| p.exists());
        found.sort();
        found.pop().map(|(_, p)| p).unwrap_or_else(|| {
            panic!("PostgreSQL's {name} not found under /usr/lib/postgresql: install the postgresql package (scripts/test does)")
        })
    }

    /// PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
    fn as_server_user(cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_ids();
            cmd.uid(uid).gid(gid);
        }
    }

    pub fn start() -> PostgresServer {
        Self::start_with(None)
    }

    /// A server that accepts TLS connections only (`hostssl` rules; plain ones are rejected),
    /// with this certificate chain and key.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PostgresServer {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PostgresServer {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = std::process::Command::new(Self::bin("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "portcullis",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .stdin(std::process::Stdio::null());
        Self::as_server_user(&mut initdb);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, contents) in [("server.crt", cert), ("server.key", key)] {
                let p = data.join(name);
                std::fs::write(&p, contents).unwrap();
                // PostgreSQL refuses a key others can read.
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    let (uid, gid) = postgres_ids();
                    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
        }
        let mut server = PostgresServer {
            child: None,
            dir,
            port: 0,
            tls: tls.is_some(),
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_addr().port();
            match server.try_launch() {
                Ok(()) => return server,
                // Another process took the port in the moment it was free: a new one.
                Err(log) if log.contains("could not bind") || log.contains("already in use") => {
                    server.stop();
                }
                Err(log) => server.failed(&log),
            }
        }
        panic!("PostgreSQL found no free port in {PORT_ATTEMPTS} attempts");
    }

    fn failed(&self, log: &str) -> ! {
        panic!(
            "PostgreSQL did not start on port {}; its log:\n{log}",
            self.port
        );
    }

    /// (Re)starts the server on its port, or panics with its log.
    fn launch(&mut self) {
        if let Err(log) = self.try_launch() {
            self.failed(&log);
        }
    }

    /// Starts the server on `self.port`; its log if it does not answer a query.
    fn try_launch(&mut self) -> Result<(), String> {
        let mut cmd = std::process::Command::new(Self::bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(if self.tls { &["-c", "ssl=on"][..] } else { &[] })
            .stdout(std::process::Stdio::null())
            // The server's log goes to a file that a failed start prints.
            .stderr(std::fs::File::create(self.dir.path().join("server.log")).unwrap());
        Self::as_server_user(&mut cmd);
        self.child = Some(cmd.spawn().expect("start postgres"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // Accepting TCP is not enough: wait until a query succeeds.
        loop {
            if std::process::Command::new(Self::bin("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "portcullis",
                ])
                .args(["-d", "postgres", "-tAc", "SELECT 1"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || std::time::Instant::now() >= deadline {
                return Err(
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("the postgres user exists (created by the postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}
