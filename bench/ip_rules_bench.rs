//! IP rule cost: how long 100,000 CIDRs take to compile into one rule, and what one lookup
//! costs. `cargo run --release --example ip_rules_bench [N_CIDRS] [N_LOOKUPS]`.
//! Wall-clock on a shared machine (±15%); the targets (compile well under 1 s, lookup under
//! 1 µs) are an order of magnitude away from the figures, so the drift does not decide them.

use portcullis::edge::ip_rules::{parse_cidr, IpSet, Verdict};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let lookups: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let mut rng = Lcg(42);
    // Mostly IPv4 of mixed lengths, a fifth IPv6, as text (what a list file holds).
    let lines: Vec<String> = (0..n)
        .map(|i| {
            if i % 5 == 4 {
                let a = Ipv6Addr::from((rng.next() as u128) << 80 | (rng.next() as u128) << 32);
                format!("{a}/{}", 32 + rng.next() % 97)
            } else {
                let a = Ipv4Addr::from(rng.next() as u32);
                format!("{a}/{}", 8 + rng.next() % 25)
            }
        })
        .collect();
    let start = Instant::now();
    let mut set = IpSet::default();
    for (i, l) in lines.iter().enumerate() {
        let v = if i % 3 == 0 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        set.insert(parse_cidr(l).unwrap(), v);
    }
    let compile = start.elapsed();
    let probes: Vec<IpAddr> = (0..4096)
        .map(|i| {
            if i % 5 == 4 {
                IpAddr::V6(Ipv6Addr::from((rng.next() as u128) << 80))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
            }
        })
        .collect();
    let start = Instant::now();
    let mut denied = 0usize;
    for i in 0..lookups {
        if set.decide(black_box(probes[i % probes.len()])) == Verdict::Deny {
            denied += 1;
        }
    }
    let per_lookup = start.elapsed().as_nanos() as f64 / lookups as f64;
    println!(
        "cidrs={n} entries={} compile_ms={:.1} lookups={lookups} ns_per_lookup={per_lookup:.1} denied={denied}",
        set.len(),
        compile.as_secs_f64() * 1000.0
    );
}
