//! The `portcullis` command: run, validate, explain.

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::compile;
use portcullis::gateway::Gateway;
use portcullis::router::explain::explain;
use portcullis::router::normalize::{normalize_path, routing_host};
use portcullis::router::RequestView;
use portcullis::server::upgrade;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Run the gateway, on a config file (`-c`) or following the config store (`--store`).
    Run {
        /// Config file (YAML).
        #[arg(
            short,
            long,
            required_unless_present = "store",
            conflicts_with = "store"
        )]
        config: Option<PathBuf>,
        /// Request-handling threads (default: one per CPU core).
        #[arg(long, env = "PORTCULLIS_WORKER_THREADS")]
        worker_threads: Option<usize>,
        /// Binary upgrades: a Unix socket where this process hands its listening sockets to
        /// the next one started with the same option (which takes them over from a running
        /// gateway first, if one listens there).
        #[arg(long, env = "PORTCULLIS_UPGRADE_SOCKET")]
        upgrade_socket: Option<PathBuf>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// The versioned config store: push, list, show, diff, activate (with canary), rollback,
    /// status.
    Config {
        /// Store URL: an SQLite file (`sqlite://PATH` or a plain path) or `postgres://…`.
        #[arg(
            long,
            env = "PORTCULLIS_STORE",
            default_value = "sqlite://portcullis-store.db"
        )]
        store: String,
        #[arg(long, env = "PORTCULLIS_ENVIRONMENT", default_value = "default")]
        environment: String,
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Check a config file; prints every error with file:line and exits 1 if there are any.
    /// Warnings (accepted, but probably not meant) are printed too; `--strict` refuses them.
    Validate {
        file: PathBuf,
        /// Treat warnings as errors (for CI).
        #[arg(long)]
        strict: bool,
    },
    /// Move ROUTE's traffic to another upstream in steps, each a config version in the store,
    /// watching the new upstream between steps and rolling back on a breach. `rollout status`
    /// shows every route rollout of the environment.
    #[command(args_conflicts_with_subcommands = true)]
    Rollout {
        #[command(subcommand)]
        status: Option<RolloutStatus>,
        #[command(flatten)]
        args: RolloutArgs,
        #[arg(
            long,
            global = true,
            env = "PORTCULLIS_STORE",
            default_value = "sqlite://portcullis-store.db"
        )]
        store: String,
        #[arg(
            long,
            global = true,
            env = "PORTCULLIS_ENVIRONMENT",
            default_value = "default"
        )]
        environment: String,
    },
    /// Shadow traffic: `shadow report ROUTE` prints a running gateway's comparison report.
    Shadow {
        #[command(subcommand)]
        action: ShadowAction,
    },
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
        /// The connection's peer address (for trusted proxies and IP rules).
        #[arg(long, default_value = "127.0.0.1")]
        peer: std::net::IpAddr,
        /// The listener the request arrives on (default: the first).
        #[arg(long)]
        listener: Option<String>,
    },
}

/// How a gateway follows the store.
#[derive(clap::Args)]
struct FollowArgs {
    /// Follow this config store (`sqlite://PATH` or `postgres://…`) instead of a file.
    #[arg(long, env = "PORTCULLIS_STORE")]
    store: Option<String>,
    /// This instance's id: its name in the store, and in access logs, spans, `target_info` and
    /// the optional instance response header (default: the host name).
    #[arg(long, env = "PORTCULLIS_INSTANCE_ID")]
    instance_id: Option<String>,
    /// `key=value,…` labels (canary rollouts select instances by one of them).
    #[arg(long, env = "PORTCULLIS_INSTANCE_LABELS", default_value = "")]
    instance_labels: String,
    #[arg(long, env = "PORTCULLIS_ENVIRONMENT", default_value = "default")]
    environment: String,
    /// Where the last applied version is kept, to start from when the store is unreachable.
    #[arg(long, default_value = "portcullis-last-known-good.json")]
    last_known_good: PathBuf,
    /// How often the store is read (and a heartbeat written) when no notification arrives, in
    /// milliseconds (100–5000: `config status` calls an instance silent after 10 s without a
    /// heartbeat). PostgreSQL stores also wake the gateway at once through LISTEN/NOTIFY.
    #[arg(long, env = "PORTCULLIS_STORE_POLL_MS", default_value_t = portcullis::control::agent::POLL_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=5_000))]
    store_poll_ms: u64,
}

#[derive(Subcommand)]
enum RolloutStatus {
    /// Every route rollout of the environment and its state.
    Status,
}

#[derive(clap::Args)]
struct RolloutArgs {
    /// The route whose traffic moves.
    route: Option<String>,
    /// The upstream it moves to.
    #[arg(long)]
    to: Option<String>,
    /// Percentages of traffic to the new upstream, one config version each.
    #[arg(long, default_value = "5,25,50,75,100")]
    steps: String,
    /// How long each step is watched before the next (default 60; with --resume, replaces
    /// the recorded interval).
    #[arg(long)]
    interval_s: Option<u64>,
    /// Highest failed-try ratio (5xx or no answer, 0–1) of the new upstream.
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Highest p99 latency (ms) of the new upstream.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// A step is judged once the new upstream had this many tries.
    #[arg(long, default_value_t = 20)]
    min_requests: u64,
    /// How long every live instance gets to apply a step's version.
    #[arg(long, default_value_t = 30)]
    apply_timeout_s: u64,
    /// A YAML file of synthetic checks sent to every instance after each step is applied.
    #[arg(long)]
    checks: Option<PathBuf>,
    /// Stop the running rollout of ROUTE at its next check (the weight stays).
    #[arg(long, conflicts_with_all = ["to", "resume"])]
    pause: bool,
    /// Continue a paused or interrupted rollout of ROUTE with its recorded plan.
    #[arg(long, conflicts_with = "to")]
    resume: bool,
    #[arg(long, env = "USER", default_value = "unknown")]
    actor: String,
}

#[derive(Subcommand)]
enum ShadowAction {
    /// The comparison report of ROUTE (every mirrored route when omitted), from the admin API.
    Report {
        route: Option<String>,
        /// The gateway's admin listener.
        #[arg(
            long,
            env = "PORTCULLIS_ADMIN",
            default_value = "http://127.0.0.1:9901"
        )]
        admin: String,
        /// The admin token, when the admin API has one.
        #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN")]
        token: Option<String>,
        /// Print the JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE and store it as a new version (an invalid file is stored as REJECTED).
    Push {
        file: PathBuf,
        #[arg(short, long, default_value = "")]
        message: String,
        /// Recorded as the version's author (default: $USER).
        #[arg(long, env = "USER", default_value = "unknown")]
        created_by: String,
    },
    /// Every version of the environment with its status.
    List,
    /// One version's details and document.
    Show { version: i64 },
    /// A unified diff between two versions' documents.
    Diff { a: i64, b: i64 },
    /// Make a version active: everywhere at once, or first on a canary that is watched and
    /// then promoted or rolled back automatically.
    Activate {
        version: i64,
        /// LABEL=VALUE: instances with this label get the version first.
        #[arg(long)]
        canary: Option<String>,
        /// How long the canaries are watched before promotion.
        #[arg(long, default_value_t = 60)]
        watch_s: u64,
        /// Highest 5xx ratio (0–1) the canaries may show.
        #[arg(long, default_value_t = 0.01)]
        max_error_rate: f64,
        /// How long canaries get to apply the version.
        #[arg(long, default_value_t = 30)]
        apply_timeout_s: u64,
        /// Highest p99 latency (ms) of the canaries' requests (judged from 20 requests on).
        #[arg(long)]
        max_p99_ms: Option<f64>,
        /// A YAML file of synthetic checks sent to every canary before promotion.
        #[arg(long)]
        checks: Option<PathBuf>,
        #[arg(long, env = "USER", default_value = "unknown")]
        actor: String,
    },
    /// Go back to the version that was active before the current one.
    Rollback {
        #[arg(long, env = "USER", default_value = "unknown")]
        actor: String,
    },
    /// Which instance runs which version; who is behind, failing or silent (exit 2 if any).
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, strict } => validate(&file, strict),
        Command::Rollout {
            status,
            args,
            store,
            environment,
        } => match rollout_cmd(&store, &environment, status.is_some(), args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Shadow {
            action:
                ShadowAction::Report {
                    route,
                    admin,
                    token,
                    json,
                },
        } => match shadow_report(route.as_deref(), &admin, token.as_deref(), json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Explain {
            config,
            method,
            url,
            headers,
            peer,
            listener,
        } => match explain_cmd(&config, &method, &url, &headers, peer, listener.as_deref()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Config {
            store,
            environment,
            action,
        } => match config_cmd(&store, &environment, action) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            worker_threads,
            upgrade_socket,
            follow,
        } => {
            if let Some(id) = &follow.instance_id {
                portcullis::observe::instance::set(id);
            }
            match run(config, follow, worker_threads, upgrade_socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn validate(file: &std::path::Path, strict: bool) -> ExitCode {
    match compile::file(file) {
        Ok(compiled) if strict && !compiled.warnings.is_empty() => {
            for w in &compiled.warnings {
                println!("{w}");
            }
            eprintln!(
                "{} warning(s) in {} (refused: --strict)",
                compiled.warnings.len(),
                file.display()
            );
            ExitCode::from(1)
        }
        Ok(compiled) => {
            for w in &compiled.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes; {})",
                file.display(),
                compiled.listeners.len(),
                compiled.upstreams.len(),
                compiled.routes.len(),
                compiled.checksum
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

fn rollout_cmd(
    store_url: &str,
    environment: &str,
    status: bool,
    args: RolloutArgs,
) -> anyhow::Result<u8> {
    use portcullis::control::rollout::{self, Outcome, Plan};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let store = portcullis::control::store::Store::connect(store_url).await?;
        if status {
            let all = store.route_rollouts(environment).await?;
            if all.is_empty() {
                println!("no route rollout in environment {environment}");
            }
            for r in &all {
                println!("{}", rollout::describe(r));
            }
            return Ok(0);
        }
        let route = args
            .route
            .clone()
            .ok_or_else(|| anyhow::anyhow!("give the ROUTE to roll out (or `rollout status`)"))?;
        if args.pause {
            return Ok(if store.pause_route_rollout(environment, &route).await? {
                println!("rollout of {route} will stop at its next check");
                0
            } else {
                eprintln!("no running rollout of {route}");
                1
            });
        }
        let checks = match &args.checks {
            Some(f) => portcullis::control::checks::load(f).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let plan = if args.resume {
            let recorded = store
                .route_rollouts(environment)
                .await?
                .into_iter()
                .find(|r| r.route == route)
                .ok_or_else(|| anyhow::anyhow!("no recorded rollout of {route} to resume"))?;
            if recorded.state == "DONE" || recorded.state == "ROLLED_BACK" {
                anyhow::bail!(
                    "the rollout of {route} ended ({}); start a new one",
                    recorded.state
                );
            }
            let mut plan: Plan =
                serde_json::from_str(&recorded.plan).context("the recorded plan is unreadable")?;
            plan.checks = checks;
            if let Some(s) = args.interval_s {
                plan.interval_s = s;
            }
            plan
        } else {
            let to = args
                .to
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--to UPSTREAM is required"))?;
            Plan {
                route: route.clone(),
                to,
                steps: rollout::parse_steps(&args.steps)
                    .map_err(anyhow::Error::msg)
                    .context("--steps")?,
                interval_s: args.interval_s.unwrap_or(60),
                max_error_rate: args.max_error_rate,
                max_p99_ms: args.max_p99_ms,
                min_requests: args.min_requests,
                apply_timeout_s: args.apply_timeout_s,
                checks,
            }
        };
        let outcome = rollout::run(&store, environment, &plan, &args.actor, &mut |l| {
            println!("{l}")
        })
        .await?;
        Ok(match outcome {
            Outcome::Done => {
                println!("rollout of {route} done: 100% to {}", plan.to);
                0
            }
            Outcome::RolledBack(why) => {
                eprintln!("rollout of {route} rolled back to 0%: {why}");
                1
            }
            Outcome::Stopped(why) => {
                eprintln!("rollout of {route} stopped: {why}");
                1
            }
        })
    })
}

fn shadow_report(
    route: Option<&str>,
    admin: &str,
    token: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let path = match route {
        Some(r) => format!("/admin/shadow?route={r}"),
        None => "/admin/shadow".to_string(),
    };
    let endpoint = portcullis::outbound::Endpoint::parse(admin, None)
        .map_err(anyhow::Error::msg)
        .context("--admin")?;
    let endpoint = portcullis::outbound::Endpoint { path, ..endpoint };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = runtime.block_on(async {
        let mut req = endpoint.request(http::Method::GET);
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::new()))?;
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            endpoint.send(req, 16 * 1024 * 1024),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {admin} within 10 s"))?
        .map_err(anyhow::Error::msg)
    })?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "{admin} answered {}: {}",
            resp.status(),
            String::from_utf8_lossy(resp.body())
        );
    }
    let doc: serde_json::Value =
        serde_json::from_slice(resp.body()).context("the admin API's answer is not JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", portcullis::shadow::admin::text_report(&doc));
    }
    Ok(())
}

fn explain_cmd(
    file: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[String],
    peer: std::net::IpAddr,
    listener: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let compiled = match compile::file(file) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
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
    // The same host normalization as live routing: the URL's authority, else the Host header.
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            header_map
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let host = routing_host(&authority).into_owned();
    let listener = match listener {
        Some(name) => compiled
            .listeners
            .iter()
            .find(|l| l.name == name)
            .with_context(|| format!("no listener named {name}"))?,
        None => compiled.listeners.first().context("no listener")?,
    };
    // Edge protection first, as live requests meet it: client address, IP and built-in rules.
    let mut edge_text = String::new();
    let (client, refused) = portcullis::edge::explain_before_routing(
        &compiled.edge,
        listener,
        peer,
        &method,
        uri.path(),
        &header_map,
        &mut edge_text,
    );
    if let Some(status) = refused {
        print!(
            "request: {method} host={host} path={}\n{edge_text}refused: {status} before routing\n",
            uri.path()
        );
        return Ok(ExitCode::from(2));
    }
    let path = match normalize_path(uri.path(), compiled.defaults.allow_encoded_slashes) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "request: {method} host={host} path={}\n{edge_text}refused: 400 ({e})",
                uri.path()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let (chosen, text) = explain(
        &compiled.router,
        &RequestView {
            host: &host,
            path: &path,
            method: &method,
            any_method: false,
            headers: &header_map,
            query: uri.query(),
        },
    );
    let (request_line, rest) = text.split_once('\n').unwrap_or((&text, ""));
    print!("{request_line}\n{edge_text}{rest}");
    let Some(route) = chosen else {
        return Ok(ExitCode::from(2));
    };
    let mut route_text = String::new();
    let refused = portcullis::edge::explain_route(
        &compiled.edge,
        &compiled.routes[route],
        client.ip,
        &path,
        uri.query(),
        &header_map,
        &mut route_text,
    );
    print!("{route_text}");
    let scheme = uri.scheme_str().unwrap_or("http");
    let url = portcullis::cache::key::UrlParts {
        scheme,
        host: &host,
        path: &path,
        query: uri.query(),
    };
    println!(
        "{}",
        portcullis::cache::explain(&compiled.routes[route], &method, &url)
    );
    let rules = &compiled.routes[route];
    if let portcullis::route::Action::Redirect(r) = &rules.action {
        println!(
            "{}",
            r.explain(&portcullis::policy::redirect::Requested {
                scheme,
                authority: &authority,
                path: &path,
                query: uri.query(),
            })
        );
    }
    for (direction, ops) in [
        ("request", &rules.request_headers),
        ("response", &rules.response_headers),
    ] {
        for t in ops.describe_templates() {
            println!("{direction} header template: {t}");
        }
    }
    if let Some(m) = &rules.mirror {
        println!("{}", m.explain(&method));
    }
    if let Some(f) = &rules.fault {
        println!("fault injection: {}", f.describe());
    }
    Ok(match refused {
        Some(status) => {
            println!("refused: {status} before authentication");
            ExitCode::from(2)
        }
        None => ExitCode::SUCCESS,
    })
}

fn config_cmd(store_url: &str, environment: &str, action: ConfigAction) -> anyhow::Result<u8> {
    use portcullis::control::commands;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let store = portcullis::control::store::Store::connect(store_url).await?;
        let code = match action {
            ConfigAction::Push {
                file,
                message,
                created_by,
            } => commands::push(&store, environment, &file, &message, &created_by).await?,
            ConfigAction::List => commands::list(&store, environment).await?,
            ConfigAction::Show { version } => commands::show(&store, version).await?,
            ConfigAction::Diff { a, b } => commands::diff(&store, a, b).await?,
            ConfigAction::Activate {
                version,
                canary,
                watch_s,
                max_error_rate,
                apply_timeout_s,
                max_p99_ms,
                checks,
                actor,
            } => {
                let checks = match &checks {
                    Some(f) => portcullis::control::checks::load(f).map_err(anyhow::Error::msg)?,
                    None => Vec::new(),
                };
                let options = commands::ActivateOptions {
                    canary,
                    watch_s,
                    max_error_rate,
                    apply_timeout_s,
                    max_p99_ms,
                    checks,
                };
                commands::activate(&store, version, &options, &actor).await?
            }
            ConfigAction::Rollback { actor } => {
                commands::rollback(&store, environment, &actor).await?
            }
            ConfigAction::Status => commands::status(&store, environment).await?,
        };
        Ok(code)
    })
}

/// `RUST_LOG` (default `info`). sqlx's own pool warnings (slow acquires while the store is
/// down) would repeat on every retry; the agent logs store outages once per change of state,
/// so sqlx is held to errors unless `RUST_LOG` names it.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if spec.contains("sqlx") {
        filter
    } else {
        filter.add_directive("sqlx=error".parse().expect("static directive"))
    }
}

/// The gateway's first config: the file, or the store's version for this instance (falling
/// back to the last-known-good file), with the agent that keeps following the store.
async fn first_config(
    config_path: Option<PathBuf>,
    follow: FollowArgs,
) -> anyhow::Result<(
    std::sync::Arc<Gateway>,
    Option<portcullis::control::agent::Agent>,
)> {
    use portcullis::control::agent::{self, Agent, Identity, StoreStatus};
    use portcullis::control::store::Labels;
    let report = |errors: portcullis::config::ConfigErrors, what: &str| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in {what}", errors.0.len())
    };
    let Some(url) = follow.store else {
        let path = config_path.context("either --config or --store is needed")?;
        let gateway =
            Gateway::load(path.clone()).map_err(|e| report(e, &path.display().to_string()))?;
        return Ok((gateway, None));
    };
    let identity = Identity {
        instance_id: portcullis::observe::instance::id().to_string(),
        environment: follow.environment,
        labels: Labels::parse(&follow.instance_labels).map_err(|e| anyhow::anyhow!(e))?,
    };
    let (known, from_lkg) = agent::initial_document(&url, &identity, &follow.last_known_good)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let name = format!("store version {}", known.version);
    let gateway = Gateway::load_document(&known.document, &name).map_err(|e| report(e, &name))?;
    let status = std::sync::Arc::new(StoreStatus::default());
    status
        .version
        .store(known.version, std::sync::atomic::Ordering::Relaxed);
    status
        .last_known_good
        .store(from_lkg, std::sync::atomic::Ordering::Relaxed);
    status
        .up
        .store(!from_lkg, std::sync::atomic::Ordering::Relaxed);
    if !from_lkg {
        if let Err(e) = known.write(&follow.last_known_good) {
            tracing::warn!(file = %follow.last_known_good.display(), error = %e, "cannot write the last-known-good file");
        }
    }
    let _ = gateway.store_status.set(std::sync::Arc::clone(&status));
    let agent = Agent {
        url,
        identity,
        lkg_path: follow.last_known_good,
        gateway: std::sync::Arc::clone(&gateway),
        status,
        poll_interval: std::time::Duration::from_millis(follow.store_poll_ms),
    };
    Ok((gateway, Some(agent)))
}

fn run(
    config_path: Option<PathBuf>,
    follow: FollowArgs,
    worker_threads: Option<usize>,
    upgrade_socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
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
        let (gateway, agent) = first_config(config_path, follow).await?;
        // A running gateway at the upgrade socket hands its listening sockets over.
        let handover = match upgrade_socket.clone() {
            Some(path) => tokio::task::spawn_blocking(move || upgrade::take_over(&path))
                .await?
                .context("cannot take the listening sockets over")?,
            None => None,
        };
        let mut inherited = HashMap::new();
        if let Some(h) = &handover {
            for (name, socket) in &h.sockets {
                inherited.insert(name.clone(), socket.try_clone()?);
            }
        }
        let running = portcullis::server::start_with(gateway.clone(), &mut inherited).await?;
        drop(inherited);
        if let Some(h) = handover {
            tokio::task::spawn_blocking(move || h.ready()).await??;
            tracing::info!("took the listening sockets over from the previous process");
        }
        let handed_over = std::sync::Arc::new(tokio::sync::Notify::new());
        if let Some(path) = upgrade_socket {
            tokio::spawn(upgrade::serve(
                path,
                running.sockets.clone(),
                std::sync::Arc::clone(&handed_over),
            ));
        }
        if let Some(agent) = agent {
            tokio::spawn(agent.run());
        }
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
        let upgraded = loop {
            tokio::select! {
                _ = hup.recv() => match gateway.reload().await {
                    Ok(a) => tracing::info!(version = a.version, changed = a.changed, checksum = %a.checksum, "config reloaded (SIGHUP)"),
                    Err(errors) => tracing::warn!(errors = %errors, "config reload refused; the running config keeps serving"),
                },
                _ = usr1.recv() => {
                    gateway.reopen_access_log();
                    tracing::info!("access log reopened (SIGUSR1)");
                }
                _ = term.recv() => break false,
                _ = int.recv() => break false,
                _ = handed_over.notified() => break true,
            }
        };
        gateway.start_draining();
        let delay = gateway.snapshot().drain_delay;
        if upgraded {
            // The new process accepts on the same sockets: stop accepting at once, answer what
            // was accepted with `Connection: close`, and give requests already on their way a
            // moment to arrive before connections are asked to finish.
            running.stop_accepting();
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else if !delay.is_zero() {
            // Readiness goes 503 first, while everything still serves, so a load balancer stops
            // sending before a connection is refused; a second signal skips the wait.
            tracing::info!(drain_delay_ms = delay.as_millis() as u64, "draining: readiness is 503, still serving");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
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
