//! The per-user send rate limit: a token bucket per user in a sharded map, so senders rarely
//! share a lock, with idle buckets swept away so the map does not grow forever.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::UserId;

/// Token buckets by user: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub(crate) struct SendRateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    burst: f64,
    rate: f64,
    /// After this long without a send a bucket is full again, the same as no bucket.
    refill_time: Duration,
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<UserId, Bucket>,
    next_sweep: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl SendRateLimiter {
    /// A limiter allowing bursts of `burst` sends, then `rate_per_sec` per second; `None`
    /// when either is 0 (no limit).
    pub(crate) fn new(burst: u32, rate_per_sec: u32) -> Option<Self> {
        if burst == 0 || rate_per_sec == 0 {
            return None;
        }
        let shard_count =
            (std::thread::available_parallelism().map_or(4, |n| n.get()) * 8).next_power_of_two();
        let refill_time =
            Duration::from_secs_f64(f64::from(burst) / f64::from(rate_per_sec)).max(Duration::from_secs(1));
        let now = Instant::now();
        Some(Self {
            shards: (0..shard_count)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        next_sweep: now + refill_time,
                    })
                })
                .collect(),
            hasher: Default::default(),
            burst: f64::from(burst),
            rate: f64::from(rate_per_sec),
            refill_time,
        })
    }

    /// Takes one token of `user`'s bucket, or says how long until one is there.
    pub(crate) fn check(&self, user: UserId) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let index = (self.hasher.hash_one(user) as usize) & (self.shards.len() - 1);
        // A panic inside cannot leave a bucket half-updated, so a poisoned lock is fine to use.
        let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        if now >= shard.next_sweep {
            let refill_time = self.refill_time;
            shard
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.updated) < refill_time);
            shard.next_sweep = now + refill_time;
        }
        let bucket = shard.buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().buckets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_turns_it_off() {
        assert!(SendRateLimiter::new(0, 20).is_none());
        assert!(SendRateLimiter::new(100, 0).is_none());
    }

    #[test]
    fn burst_then_rate() {
        let limiter = SendRateLimiter::new(3, 2).unwrap();
        let t0 = Instant::now();
        let alice = UserId(1);
        for _ in 0..3 {
            assert!(limiter.check_at(alice, t0).is_ok());
        }
        let wait = limiter.check_at(alice, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another user is not affected.
        assert!(limiter.check_at(UserId(2), t0).is_ok());
        // Half a second later one token is back (2 per second).
        assert!(limiter.check_at(alice, t0 + Duration::from_millis(500)).is_ok());
        assert!(limiter.check_at(alice, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limiter = SendRateLimiter::new(2, 2).unwrap();
        let t0 = Instant::now();
        for id in 0..1000 {
            limiter.check_at(UserId(id), t0).unwrap();
        }
        assert_eq!(limiter.bucket_count(), 1000);
        let later = t0 + Duration::from_secs(5);
        for id in 0..1000 {
            limiter.check_at(UserId(id + 5000), later).unwrap();
        }
        // Every shard swept its idle buckets; only the new users' buckets remain.
        assert_eq!(limiter.bucket_count(), 1000);
    }
}
