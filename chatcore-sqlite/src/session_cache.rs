//! Sessions already looked up, kept in memory so an authenticated request costs no trip to a
//! reader thread.
//!
//! Exact, not approximate: one process owns an SQLite database, and every session write goes
//! through this store, so the cache can never miss a change. A logout invalidates the entry
//! once the delete has committed; the epoch keeps a lookup that raced with it from putting the
//! entry back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chatcore::{SessionRecord, TokenHash};

const SHARDS: usize = 64;

struct Cached {
    record: SessionRecord,
    /// `record.expires_at` in microseconds since the epoch; the session is live strictly
    /// before this instant.
    expires_at: i64,
}

pub(crate) struct SessionCache {
    shards: Box<[Mutex<HashMap<TokenHash, Cached>>]>,
    /// Bumped by every invalidation; a lookup caches its answer only if none happened meanwhile.
    epoch: AtomicU64,
    per_shard: usize,
}

impl SessionCache {
    /// A cache of at most about `capacity` sessions; 0 disables it.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: AtomicU64::new(0),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, token_hash: &TokenHash) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Cached>> {
        // The hash is a SHA-256: its bytes are already uniformly spread.
        let index = usize::from(token_hash[0]) % SHARDS;
        // A poisoned shard holds whole entries only (inserts and removes cannot half-happen).
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached record of a session live at `now` (microseconds); drops an expired entry.
    pub(crate) fn get(&self, token_hash: &TokenHash, now: i64) -> Option<SessionRecord> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(token_hash);
        match shard.get(token_hash) {
            Some(cached) if now < cached.expires_at => Some(cached.record.clone()),
            Some(_) => {
                shard.remove(token_hash);
                None
            }
            None => None,
        }
    }

    /// The epoch to pass to [`SessionCache::insert`] for a lookup starting now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a lookup's answer, unless a session was invalidated since it started.
    pub(crate) fn insert(&self, token_hash: &TokenHash, record: SessionRecord, epoch: u64) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(token_hash);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if shard.len() >= self.per_shard {
            // Full: start this shard over rather than track recency on the hot path.
            shard.clear();
        }
        let expires_at = record.expires_at.timestamp_micros();
        shard.insert(*token_hash, Cached { record, expires_at });
    }

    /// Forgets a session (after its delete committed).
    pub(crate) fn invalidate(&self, token_hash: &TokenHash) {
        let mut shard = self.shard(token_hash);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        shard.remove(token_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::{User, UserId, Username};
    use chrono::DateTime;

    /// alice's session, live strictly before `expires_at` (microseconds).
    fn record(expires_at: i64) -> SessionRecord {
        SessionRecord {
            user: User {
                id: UserId(1),
                username: Username::parse("alice").unwrap(),
            },
            expires_at: DateTime::from_timestamp_micros(expires_at).unwrap(),
        }
    }

    /// Far in the future, yet in chrono's range.
    const LATER: i64 = 4_000_000_000_000_000;

    #[test]
    fn caches_until_expiry() {
        let cache = SessionCache::new(100);
        let token = [7u8; 32];
        assert_eq!(cache.get(&token, 0), None);
        cache.insert(&token, record(100), cache.epoch());
        assert_eq!(cache.get(&token, 99), Some(record(100)), "the expiry is kept");
        assert_eq!(cache.get(&token, 100), None, "expired at its instant");
        assert_eq!(cache.get(&token, 0), None, "an expired entry is dropped");
    }

    #[test]
    fn a_lookup_racing_an_invalidation_is_not_cached() {
        let cache = SessionCache::new(100);
        let token = [8u8; 32];
        let started = cache.epoch();
        cache.invalidate(&token);
        cache.insert(&token, record(LATER), started);
        assert_eq!(cache.get(&token, 0), None);
        cache.insert(&token, record(LATER), cache.epoch());
        assert_eq!(cache.get(&token, 0), Some(record(LATER)));
        cache.invalidate(&token);
        assert_eq!(cache.get(&token, 0), None);
    }

    #[test]
    fn bounded_and_disableable() {
        let cache = SessionCache::new(64);
        for i in 0..=255u8 {
            cache.insert(&[i; 32], record(LATER), cache.epoch());
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 64, "held {held}");
        let off = SessionCache::new(0);
        off.insert(&[1; 32], record(LATER), off.epoch());
        assert_eq!(off.get(&[1; 32], 0), None);
    }
}
