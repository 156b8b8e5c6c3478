//! `ip_rules`: named allow / deny CIDR lists, compiled into longest-prefix-match tries and
//! applied by name on listeners (before routing) and routes (before authentication).

use crate::config::{Diag, IpRule as IpRuleConfig, Located, Text};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A CIDR set that answers allow or deny for one address: the most specific matching entry
/// decides (the same prefix listed in both: deny); no match is allowed unless the set has
/// allow entries (then only they get in).
#[derive(Default)]
pub struct IpSet {
    v4: PrefixMap<Ipv4Net, Verdict>,
    v6: PrefixMap<Ipv6Net, Verdict>,
    has_allow: bool,
}

impl IpSet {
    pub fn insert(&mut self, net: IpNet, verdict: Verdict) {
        self.has_allow |= verdict == Verdict::Allow;
        // A deny already stored for this prefix wins over a later allow.
        let keep_deny = |old: Option<Verdict>| match old {
            Some(Verdict::Deny) => Verdict::Deny,
            _ => verdict,
        };
        match normalize_net(net) {
            IpNet::V4(n) => {
                let v = keep_deny(self.v4.get(&n).copied());
                self.v4.insert(n, v);
            }
            IpNet::V6(n) => {
                let v = keep_deny(self.v6.get(&n).copied());
                self.v6.insert(n, v);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn decide(&self, ip: IpAddr) -> Verdict {
        let found = match canonical_ip(ip) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, v)| *v),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, v)| *v),
        };
        match found {
            Some(v) => v,
            None if self.has_allow => Verdict::Deny,
            None => Verdict::Allow,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports) are the
/// IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// `::ffff:a.b.c.d/n` with n ≥ 96 is the IPv4 network `a.b.c.d/(n-96)`; host bits are cleared.
fn normalize_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let (Some(v4), true) = (n.addr().to_ipv4_mapped(), n.prefix_len() >= 96) {
            if let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                return IpNet::V4(v4net.trunc());
            }
        }
    }
    net.trunc()
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not a CIDR (10.0.0.0/8, 2001:db8::/32) or an IP address"))
}

/// Counts of one rule's decisions (kept across reloads by rule name).
#[derive(Debug, Default)]
pub struct IpRuleCounters {
    pub refused: AtomicU64,
}

pub struct IpRule {
    pub name: Arc<str>,
    set: IpSet,
    pub counters: Arc<IpRuleCounters>,
}

impl IpRule {
    /// Allow or deny `ip`; a deny is counted.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let v = self.set.decide(ip);
        if v == Verdict::Deny {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        v
    }

    pub fn entries(&self) -> usize {
        self.set.len()
    }
}

/// Every `ip_rules` entry, compiled; listeners and routes hold their positions.
#[derive(Default)]
pub struct IpRules {
    pub rules: Vec<IpRule>,
    by_name: BTreeMap<String, usize>,
}

impl IpRules {
    /// Builds `ip_rules`; list files are read relative to `base` (the config file's folder) and
    /// fed to `fingerprint` so a reload notices when only a list changed.
    pub fn build(
        cfg: &[Located<IpRuleConfig>],
        base: &Path,
        fingerprint: &mut Vec<u8>,
        diag: &mut Diag,
    ) -> IpRules {
        let mut out = IpRules::default();
        for (i, r) in cfg.iter().enumerate() {
            let key = format!("ip_rules[{i}]");
            diag.kebab_name(&r.name, format!("{key}.name"));
            let mut set = IpSet::default();
            for (list, verdict, k) in [
                (&r.allow, Verdict::Allow, "allow"),
                (&r.deny, Verdict::Deny, "deny"),
            ] {
                for e in list {
                    match parse_cidr(e) {
                        Ok(n) => set.insert(n, verdict),
                        Err(m) => diag.err(e.line, format!("{key}.{k}"), m),
                    }
                }
            }
            for (file, verdict, k) in [
                (&r.allow_file, Verdict::Allow, "allow_file"),
                (&r.deny_file, Verdict::Deny, "deny_file"),
            ] {
                let Some(file) = file else { continue };
                let key = format!("{key}.{k}");
                match read_list(base, file, fingerprint) {
                    Ok(lines) => {
                        for (n, line) in lines {
                            match parse_cidr(&line) {
                                Ok(net) => set.insert(net, verdict),
                                Err(m) => {
                                    diag.err(file.line, &key, format!("{}:{n}: {m}", file.value))
                                }
                            }
                        }
                    }
                    Err(m) => diag.err(file.line, &key, m),
                }
            }
            let stated = !r.allow.is_empty()
                || !r.deny.is_empty()
                || r.allow_file.is_some()
                || r.deny_file.is_some();
            if !stated {
                diag.err(
                    r.name.line,
                    &key,
                    "an IP rule needs at least one entry in allow, deny, allow_file or deny_file",
                );
            }
            out.by_name.entry(r.name.to_string()).or_insert(i);
            out.rules.push(IpRule {
                name: Arc::from(r.name.as_str()),
                set,
                counters: Arc::default(),
            });
        }
        diag.duplicates(
            "IP rule",
            cfg.iter()
                .enumerate()
                .map(|(i, r)| (&r.name, format!("ip_rules[{i}].name"))),
        );
        out
    }

    /// Resolves the names a listener or route applies (`key` is e.g. `routes[0].ip_rules`).
    pub fn resolve(&self, names: &[Located<Text>], key: &str, diag: &mut Diag) -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| match self.by_name.get(n.as_str()) {
                Some(i) => Some(*i),
                None => {
                    diag.err(n.line, key, format!("unknown IP rule `{}`", n.value));
                    None
                }
            })
            .collect()
    }

    /// The first of `applied` that denies `ip`, by name.
    pub fn first_denial(&self, applied: &[usize], ip: IpAddr) -> Option<&IpRule> {
        applied
            .iter()
            .map(|i| &self.rules[*i])
            .find(|r| r.check(ip) == Verdict::Deny)
    }

    /// Takes the counters of the previous snapshot's rules of the same name.
    pub fn carry_counters(&mut self, previous: &BTreeMap<String, Arc<IpRuleCounters>>) {
        for r in &mut self.rules {
            if let Some(c) = previous.get(&*r.name) {
                r.counters = Arc::clone(c);
            }
        }
    }

    pub fn counters(&self) -> BTreeMap<String, Arc<IpRuleCounters>> {
        self.rules
            .iter()
            .map(|r| (r.name.to_string(), Arc::clone(&r.counters)))
            .collect()
    }
}

/// A list file's meaningful lines (comments after `#` and blank lines dropped), numbered.
pub fn read_list(
    base: &Path,
    file: &Located<Text>,
    fingerprint: &mut Vec<u8>,
) -> Result<Vec<(usize, String)>, String> {
    let path = base.join(file.as_str());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    fingerprint.extend_from_slice(path.to_string_lossy().as_bytes());
    fingerprint.push(0);
    fingerprint.extend_from_slice(text.as_bytes());
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| (i + 1, l.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(allow: &[&str], deny: &[&str]) -> IpSet {
        let mut s = IpSet::default();
        for a in allow {
            s.insert(parse_cidr(a).unwrap(), Verdict::Allow);
        }
        for d in deny {
            s.insert(parse_cidr(d).unwrap(), Verdict::Deny);
        }
        s
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_most_specific_entry_decides() {
        let s = set(&["10.0.0.0/8"], &["10.1.0.0/16", "0.0.0.0/0"]);
        assert_eq!(s.decide(ip("10.2.3.4")), Verdict::Allow);
        assert_eq!(s.decide(ip("10.1.3.4")), Verdict::Deny);
        assert_eq!(s.decide(ip("192.0.2.1")), Verdict::Deny);
        // IPv6: only the allow list's entries get in once there is one.
        assert_eq!(s.decide(ip("2001:db8::1")), Verdict::Deny);
    }

    #[test]
    fn deny_only_sets_allow_everything_else() {
        let s = set(&[], &["203.0.113.0/24", "2001:db8::/32"]);
        assert_eq!(s.decide(ip("203.0.113.9")), Verdict::Deny);
        assert_eq!(s.decide(ip("203.0.114.9")), Verdict::Allow);
        assert_eq!(s.decide(ip("2001:db8:1::5")), Verdict::Deny);
        assert_eq!(s.decide(ip("2001:db9::5")), Verdict::Allow);
    }

    #[test]
    fn ipv4_mapped_addresses_and_networks_are_ipv4() {
        let s = set(&[], &["::ffff:198.51.100.0/120", "192.0.2.7"]);
        assert_eq!(s.decide(ip("198.51.100.20")), Verdict::Deny);
        assert_eq!(s.decide(ip("::ffff:192.0.2.7")), Verdict::Deny);
        assert_eq!(s.decide(ip("::ffff:192.0.2.8")), Verdict::Allow);
    }

    #[test]
    fn a_prefix_in_both_lists_is_denied_and_host_bits_are_ignored() {
        let s = set(&["192.0.2.0/24"], &["192.0.2.99/24"]);
        assert_eq!(s.decide(ip("192.0.2.1")), Verdict::Deny);
        assert!(parse_cidr("nope").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }
}
