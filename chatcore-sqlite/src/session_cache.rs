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

use chatcore::{TokenHash, User};

const SHARDS: usize = 64;

struct Cached {
    user: User,
    /// Microseconds since the epoch; the session is live strictly before this instant.
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

    /// The cached user of a session live at `now`; drops an expired entry.
    pub(crate) fn get(&self, token_hash: &TokenHash, now: i64) -> Option<User> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(token_hash);
        match shard.get(token_hash) {
            Some(cached) if now < cached.expires_at => Some(cached.user.clone()),
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
    pub(crate) fn insert(&self, token_hash: &TokenHash, user: User, expires_at: i64, epoch: u64) {
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
        shard.insert(*token_hash, Cached { user, expires_at });
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
    use chatcore::{UserId, Username};

    fn user() -> User {
        User {
            id: UserId(1),
            username: Username::parse("alice").unwrap(),
        }
    }

    #[test]
    fn caches_until_expiry() {
        let cache = SessionCache::new(100);
        let token = [7u8; 32];
        assert_eq!(cache.get(&token, 0), None);
        cache.insert(&token, user(), 100, cache.epoch());
        assert_eq!(cache.get(&token, 99), Some(user()));
        assert_eq!(cache.get(&token, 100), None, "expired at its instant");
        assert_eq!(cache.get(&token, 0), None, "an expired entry is dropped");
    }

    #[test]
    fn a_lookup_racing_an_invalidation_is_not_cached() {
        let cache = SessionCache::new(100);
        let token = [8u8; 32];
        let started = cache.epoch();
        cache.invalidate(&token);
        cache.insert(&token, user(), i64::MAX, started);
        assert_eq!(cache.get(&token, 0), None);
        cache.insert(&token, user(), i64::MAX, cache.epoch());
        assert_eq!(cache.get(&token, 0), Some(user()));
        cache.invalidate(&token);
        assert_eq!(cache.get(&token, 0), None);
    }

    #[test]
    fn bounded_and_disableable() {
        let cache = SessionCache::new(64);
        for i in 0..=255u8 {
            cache.insert(&[i; 32], user(), i64::MAX, cache.epoch());
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 64, "held {held}");
        let off = SessionCache::new(0);
        off.insert(&[1; 32], user(), i64::MAX, off.epoch());
        assert_eq!(off.get(&[1; 32], 0), None);
    }
}
