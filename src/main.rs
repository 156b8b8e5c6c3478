//! The `portcullis` command: run, validate, explain.

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config;
use portcullis::gateway::Gateway;
use portcullis::router::explain::explain;
use portcullis::router::normalize::normalize_path;
use portcullis::router::{RequestView, Router};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A fast, safe-by-default API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Request-handling threads (default: one per CPU core).
        #[arg(long, env = "PORTCULLIS_WORKER_THREADS")]
        worker_threads: Option<usize>,
    },
    /// Check a config file; prints every error with file:line and exits 1 if there are any.
    Validate { file: PathBuf },
    /// Show which route a request would match, and why every other route did not.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        method: String,
        /// `http://host/path?query` or `/path?query` (then give Host with -H).
        url: String,
        /// Request header, `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Explain {
            config,
            method,
            url,
            headers,
        } => match explain_cmd(&config, &method, &url, &headers) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            worker_threads,
        } => match run(config, worker_threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match config::load_file(file) {
        Ok(valid) => {
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes; {})",
                file.display(),
                valid.config.listeners.len(),
                valid.config.upstreams.len(),
                valid.config.routes.len(),
                valid.checksum
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            eprintln!("{} error(s) in {}", errors.0.len(), file.display());
            ExitCode::from(1)
        }
    }
}

fn explain_cmd(
    file: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[String],
) -> anyhow::Result<ExitCode> {
    let valid = match config::load_file(file) {
        Ok(v) => v,
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let router = Router::compile(&valid.config);
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .context("invalid method")?;
    let uri: http::Uri = url.parse().context("invalid URL")?;
    let mut header_map = http::HeaderMap::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .context("headers are given as 'Name: value'")?;
        header_map.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).context("invalid header name")?,
            http::HeaderValue::from_str(value.trim()).context("invalid header value")?,
        );
    }
    let host = uri
        .host()
        .map(str::to_string)
        .or_else(|| {
            header_map
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_string())
        })
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let path = match normalize_path(uri.path(), valid.config.defaults.allow_encoded_slashes) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "request: {method} host={host} path={}\nrefused: 400 ({e})",
                uri.path()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let (chosen, text) = explain(
        &router,
        &RequestView {
            host: &host,
            path: &path,
            method: &method,
            headers: &header_map,
        },
    );
    print!("{text}");
    Ok(if chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn run(config_path: PathBuf, worker_threads: Option<usize>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One request thread: a current-thread runtime does the same work without the
    // work-stealing scheduler's cross-thread bookkeeping.
    let mut rt = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all();
    let rt = rt.build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let gateway = match Gateway::load(config_path.clone()) {
            Ok(g) => g,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                anyhow::bail!("{} error(s) in {}", errors.0.len(), config_path.display());
            }
        };
        let running = portcullis::server::start(gateway.clone()).await?;
        for (name, addr) in &running.listeners {
            tracing::info!(listener = %name, address = %addr, "listening");
        }
        tracing::info!(address = %running.admin, "admin API listening");
        let snapshot = gateway.snapshot();
        tracing::info!(version = snapshot.version, checksum = %snapshot.checksum, "config loaded");
        drop(snapshot);

        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        loop {
            tokio::select! {
                _ = hup.recv() => match gateway.reload().await {
                    Ok(a) => tracing::info!(version = a.version, changed = a.changed, checksum = %a.checksum, "config reloaded (SIGHUP)"),
                    Err(errors) => tracing::warn!(errors = %errors, "config reload refused; the running config keeps serving"),
                },
                _ = usr1.recv() => {
                    gateway.reopen_access_log();
                    tracing::info!("access log reopened (SIGUSR1)");
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let drain = gateway.snapshot().drain_timeout;
        tracing::info!(drain_timeout_ms = drain.as_millis() as u64, "shutting down: draining in-flight requests");
        if !running.shutdown(drain).await {
            tracing::warn!("drain timeout reached with connections still open");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

// glibc's malloc showed up at several percent of proxy CPU; mimalloc's per-thread free lists
// make the many small per-request allocations cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
