//! The Redis Lua scripts against the Rust arithmetic the local store runs, decision by decision:
//! the same scripts the gateway loads, run in a real Redis with the time injected as their last
//! argument (instead of Redis's `TIME`), beside `Algorithm::decide` at the same instants. Each
//! decision's outcome (admitted, remaining, reset), the stored state, the key's TTL against the
//! moment the state becomes forgettable, and refunds (a stacked limit that refused) must agree.

mod support;

use portcullis::ratelimit::algorithm::{Algorithm, State};
use portcullis::ratelimit::redis::{
    decision_args, decision_outcome, decision_script, refund_args, ARGUMENT_CLOCK, REFUND_SOURCE,
};
use std::time::Instant;
use support::*;

/// A fixed pseudo-random sequence (xorshift), so a failure replays exactly.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// The state the script left in Redis, read the way the Rust store holds it.
async fn stored(
    conn: &mut redis::aio::MultiplexedConnection,
    algorithm: &Algorithm,
    key: &str,
) -> Option<State> {
    match algorithm {
        Algorithm::TokenBucket { .. } => {
            let v: Option<u64> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
            v.map(State::Tat)
        }
        Algorithm::SlidingWindow { .. } => {
            let (i, c, p): (Option<u64>, Option<u32>, Option<u32>) = redis::cmd("HMGET")
                .arg(key)
                .arg("i")
                .arg("c")
                .arg("p")
                .query_async(conn)
                .await
                .unwrap();
            i.map(|index| State::Window {
                index,
                current: c.unwrap_or(0),
                previous: p.unwrap_or(0),
            })
        }
        Algorithm::Quota { .. } => unreachable!("quotas are checked in tests/consumers.rs"),
    }
}

/// Runs `decisions` requests at pseudo-random instants (gaps up to 2 × `max_gap_us`) through both,
/// with a refund after every `refund_every`-th admitted request. Returns how many were admitted
/// and refused, so the caller can see both paths were taken.
async fn compare(
    conn: &mut redis::aio::MultiplexedConnection,
    algorithm: Algorithm,
    key: &str,
    decisions: usize,
    max_gap_us: u64,
    refund_every: usize,
    seed: u64,
) -> (usize, usize) {
    let decide = redis::Script::new(&decision_script(&algorithm, ARGUMENT_CLOCK));
    let refund = redis::Script::new(REFUND_SOURCE);
    let [a, b] = decision_args(&algorithm);
    let (kind, interval) = refund_args(&algorithm);
    let mut steps = Steps(seed);
    // Far from zero, and on no window boundary.
    let mut now: u64 = 1_700_000_000_000_000 + 123_457;
    let mut local: Option<State> = None;
    let (mut admitted, mut refused) = (0, 0);
    for n in 0..decisions {
        // Bursts (tiny gaps) half the time, so limits are reached; long gaps otherwise, so
        // they refill and windows roll over or are skipped.
        now += if steps.next(2) == 0 {
            steps.next(max_gap_us / 20)
        } else {
            steps.next(max_gap_us * 2)
        };
        let started = Instant::now();
        let reply: Vec<i64> = decide
            .key(key)
            .arg(a)
            .arg(b)
            .arg(now)
            .invoke_async(conn)
            .await
            .unwrap();
        let from_redis = decision_outcome(&algorithm, &reply);
        let (expected, next) = algorithm.decide(local, now);
        assert_eq!(from_redis, expected, "decision {n} at {now} (seed {seed})");
        if expected.allowed {
            local = Some(next);
            admitted += 1;
        } else {
            refused += 1;
        }
        assert_eq!(
            stored(conn, &algorithm, key).await,
            local,
            "stored state after decision {n}"
        );
        // The key written by this decision lives until its state is worth nothing (never
        // earlier: that would forget spent quota), and at most a rounding millisecond and a
        // spare one longer. (Only after a write: a refusal writes nothing, and Redis counts
        // a TTL down in real time, not in the injected one.)
        if let (true, Some(state)) = (expected.allowed, local) {
            let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap();
            let waited_ms = started.elapsed().as_millis() as i64;
            let worthless_in_us = algorithm.fresh_at(&state).saturating_sub(now);
            let set_ms = worthless_in_us.div_ceil(1000) as i64 + 1;
            assert!(
                pttl <= set_ms && pttl + waited_ms + 1 >= set_ms,
                "decision {n}: TTL {pttl} ms, state worthless in {worthless_in_us} µs"
            );
        }
        if expected.allowed && refund_every > 0 && admitted % refund_every == 0 {
            let _: i64 = refund
                .key(key)
                .arg(kind)
                .arg(interval)
                .invoke_async(conn)
                .await
                .unwrap();
            local = local.map(|s| algorithm.refund(s));
            assert_eq!(
                stored(conn, &algorithm, key).await,
                local,
                "state after the refund following decision {n}"
            );
        }
    }
    (admitted, refused)
}

#[tokio::test]
async fn the_lua_scripts_decide_as_the_rust_algorithms_at_every_instant() {
    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Token bucket: 5 per second, burst 10; gaps around the refill interval (200 ms) so the
    // bucket empties, refills partly and fully.
    let tb = compare(
        &mut conn,
        Algorithm::token_bucket(10, 5.0),
        "tb",
        1500,
        300_000,
        7,
        0x9e37_79b9_7f4a_7c15,
    )
    .await;
    // A slow refill with a large burst: remaining and reset far from the edges.
    let tb_slow = compare(
        &mut conn,
        Algorithm::token_bucket(100, 0.5),
        "tb-slow",
        1500,
        2_000_000,
        5,
        0x2545_f491_4f6c_dd1d,
    )
    .await;
    // Sliding window: 20 per 2 s; gaps so that requests land early and late in windows, skip
    // windows, and the previous window's weight decays.
    let sw = compare(
        &mut conn,
        Algorithm::sliding_window(20, 2),
        "sw",
        3000,
        150_000,
        6,
        0x1234_5678_9abc_def1,
    )
    .await;
    let sw_skip = compare(
        &mut conn,
        Algorithm::sliding_window(3, 1),
        "sw-skip",
        1500,
        1_500_000,
        4,
        0x0f0f_1234_dead_beef,
    )
    .await;
    for (name, (admitted, refused)) in [
        ("tb", tb),
        ("tb-slow", tb_slow),
        ("sw", sw),
        ("sw-skip", sw_skip),
    ] {
        eprintln!("{name}: {admitted} admitted, {refused} refused");
        assert!(
            admitted > 100 && refused > 100,
            "{name}: both paths must be exercised ({admitted} admitted, {refused} refused)"
        );
    }
}
