//! Upstream host names: resolved off the request path and re-resolved when their DNS TTL runs
//! out (never sooner than `dns.min_ttl_s`, never later than `dns.max_ttl_s`). A failed lookup
//! keeps the last good addresses; connections go to the addresses in hand.

use crate::config::{Diag, DnsConfig};
use arc_swap::ArcSwap;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The `dns` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSpec {
    /// Empty: the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub timeout: Duration,
}

impl Default for DnsSpec {
    fn default() -> Self {
        DnsSpec {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_millis(2000),
        }
    }
}

impl DnsSpec {
    pub fn build(cfg: &DnsConfig, diag: &mut Diag) -> Option<DnsSpec> {
        let mark = diag.mark();
        let mut nameservers = Vec::new();
        for n in &cfg.nameservers {
            match n.parse::<SocketAddr>() {
                Ok(a) => nameservers.push(a),
                Err(_) => diag.err(
                    0,
                    "dns.nameservers",
                    format!("`{n}` is not an IP:port address"),
                ),
            }
        }
        if cfg.min_ttl_s == 0 || cfg.min_ttl_s > cfg.max_ttl_s {
            diag.err(
                0,
                "dns.min_ttl_s",
                "must be at least 1 and at most max_ttl_s",
            );
        }
        if !(100..=30_000).contains(&cfg.timeout_ms) {
            diag.err(0, "dns.timeout_ms", "must be between 100 and 30000");
        }
        diag.ok_since(
            mark,
            DnsSpec {
                nameservers,
                min_ttl: Duration::from_secs(cfg.min_ttl_s),
                max_ttl: Duration::from_secs(cfg.max_ttl_s),
                timeout: Duration::from_millis(cfg.timeout_ms),
            },
        )
    }
}

/// The resolver the gateway uses for upstream host names.
pub struct Dns {
    resolver: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Dns {
    pub fn new(cfg: &DnsSpec) -> Result<Dns, String> {
        let mut builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Dns {
            resolver,
            min_ttl: cfg.min_ttl,
            max_ttl: cfg.max_ttl,
        })
    }

    /// Resolves `host`; returns the addresses (with `port`) and how long to keep them.
    pub async fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Duration), String> {
        let found = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no addresses"));
        }
        let ttl = found
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok((addrs, ttl.clamp(self.min_ttl, self.max_ttl)))
    }
}

/// A target given by host name: its last good addresses, kept fresh by a background task.
pub struct ResolvedTarget {
    host: String,
    port: u16,
    dns: Arc<Dns>,
    addrs: ArcSwap<Vec<SocketAddr>>,
    refresher: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl ResolvedTarget {
    pub fn new(host: &str, port: u16, dns: Arc<Dns>) -> Arc<ResolvedTarget> {
        let target = Arc::new(ResolvedTarget {
            host: host.to_string(),
            port,
            dns,
            addrs: ArcSwap::from_pointee(Vec::new()),
            refresher: std::sync::Mutex::new(None),
        });
        // Outside a runtime (never in the gateway itself) lookups simply happen at connect time.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&target);
            let task = handle.spawn(async move {
                loop {
                    let Some(t) = weak.upgrade() else { return };
                    let wait = t.refresh().await;
                    drop(t);
                    tokio::time::sleep(wait).await;
                }
            });
            *target.refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        target
    }

    /// One lookup; returns how long to wait before the next.
    async fn refresh(&self) -> Duration {
        match self.dns.lookup(&self.host, self.port).await {
            Ok((addrs, ttl)) => {
                if **self.addrs.load() != addrs {
                    tracing::info!(host = %self.host, addresses = ?addrs, "upstream host resolved");
                }
                self.addrs.store(Arc::new(addrs));
                ttl
            }
            Err(e) => {
                let kept = self.addrs.load().len();
                tracing::warn!(host = %self.host, error = %e, kept_addresses = kept, "DNS lookup failed; keeping the last good addresses");
                self.dns.min_ttl
            }
        }
    }

    /// The addresses in hand (possibly none yet).
    pub fn current(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// The addresses to connect to; looked up now if none is known yet.
    pub async fn addresses(&self) -> Result<Arc<Vec<SocketAddr>>, String> {
        let current = self.addrs.load_full();
        if !current.is_empty() {
            return Ok(current);
        }
        let (addrs, _) = self.dns.lookup(&self.host, self.port).await?;
        let addrs = Arc::new(addrs);
        self.addrs.store(Arc::clone(&addrs));
        Ok(addrs)
    }
}

impl Drop for ResolvedTarget {
    fn drop(&mut self) {
        if let Some(task) = self
            .refresher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn nameservers_and_ttls_are_checked() {
        let cfg = DnsConfig {
            nameservers: vec!["127.0.0.1:53".into(), "8.8.8.8".into()],
            min_ttl_s: 10,
            max_ttl_s: 5,
            timeout_ms: 50,
        };
        let mut diag = Diag::new("t.yaml");
        assert!(DnsSpec::build(&cfg, &mut diag).is_none());
        let e = diag.finish("dns:\n  min_ttl_s: 10\n").unwrap_err().0;
        let got: Vec<(u32, &str, &str)> = e
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                // Keys without a line of their own are placed at their deepest parent written.
                (1, "dns.nameservers", "`8.8.8.8` is not an IP:port address"),
                (1, "dns.timeout_ms", "must be between 100 and 30000"),
                (
                    2,
                    "dns.min_ttl_s",
                    "must be at least 1 and at most max_ttl_s"
                ),
            ]
        );
        let mut diag = Diag::new("t.yaml");
        let spec = DnsSpec::build(&DnsConfig::default(), &mut diag).unwrap();
        assert_eq!(spec, DnsSpec::default());
    }
}
