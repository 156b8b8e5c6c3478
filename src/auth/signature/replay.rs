//! Nonces seen within their signatures' validity window: in this gateway (a bounded table) or
//! in Redis for the whole fleet (`SET NX PX`: the first gateway to store a nonce wins).

use crate::redis_store::RedisStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the store says about a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen within the window: now remembered.
    First,
    Replayed,
    /// The store could not be asked (Redis down, local table full).
    Unavailable,
}

/// A bounded table of nonces and when each may be forgotten. Kept across reloads by provider
/// name, so a reload does not reopen the window.
pub struct LocalNonces {
    table: Mutex<HashMap<Box<str>, Instant>>,
    max_entries: usize,
}

impl LocalNonces {
    pub fn new(max_entries: usize) -> LocalNonces {
        LocalNonces {
            table: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    pub fn first_use(&self, key: &str, ttl: Duration) -> Seen {
        let now = Instant::now();
        // Held only for a map operation (and, when full, one sweep of expired entries).
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = t.get(key) {
            if *until > now {
                return Seen::Replayed;
            }
        }
        if t.len() >= self.max_entries {
            t.retain(|_, until| *until > now);
            if t.len() >= self.max_entries {
                return Seen::Unavailable;
            }
        }
        t.insert(key.into(), now + ttl);
        Seen::First
    }
}

static SET_NX_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return {1} else return {0} end",
    )
});

pub enum NonceStore {
    Local(Arc<LocalNonces>),
    Redis(Arc<RedisStore>),
}

impl NonceStore {
    pub async fn first_use(&self, key: &str, ttl: Duration) -> Seen {
        match self {
            NonceStore::Local(t) => t.first_use(key, ttl),
            NonceStore::Redis(store) => {
                let full = format!("{}nonce:{key}", store.key_prefix);
                let ms = ttl.as_millis().max(1) as u64;
                let mut inv = SET_NX_SCRIPT.key(full);
                inv.arg(ms);
                match store.call(inv).await {
                    Ok(v) if v.first() == Some(&1) => Seen::First,
                    Ok(_) => Seen::Replayed,
                    Err(e) => {
                        tracing::debug!(error = %e, "nonce store unavailable");
                        Seen::Unavailable
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_accepted_once_per_window_and_the_table_is_bounded() {
        let t = LocalNonces::new(2);
        let w = Duration::from_secs(60);
        assert_eq!(t.first_use("a", w), Seen::First);
        assert_eq!(t.first_use("a", w), Seen::Replayed);
        assert_eq!(t.first_use("b", w), Seen::First);
        assert_eq!(t.first_use("c", w), Seen::Unavailable);
        let short = LocalNonces::new(1);
        assert_eq!(short.first_use("a", Duration::from_millis(1)), Seen::First);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            short.first_use("b", w),
            Seen::First,
            "expired entries are swept"
        );
        assert_eq!(short.first_use("a", w), Seen::Unavailable);
    }
}
