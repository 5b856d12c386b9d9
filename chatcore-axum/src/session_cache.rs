//! [`CachedSessions`]: a session-lookup cache in front of any [`SessionStore`], kept honest
//! across nodes by listening to the revocations every node publishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chatcore::{
    Credentials, Delivery, EventKind, SessionId, SessionRecord, SessionStore, Subscription, TokenHash, User,
    UserId, Username,
};
use chrono::{DateTime, Utc};
use moka::future::Cache;
use moka::notification::RemovalCause;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// A [`SessionStore`] decorator that remembers live sessions, so an authenticated request
/// costs no database read. Bounded (`capacity` sessions, evicted by recency and frequency,
/// never all at once when full), each entry kept at most `ttl`, and never past its session's
/// expiry.
///
/// Every node's cache must forget a session the moment any node ends it. A logout through
/// this store ([`SessionStore::delete_session`]) drops the entry here at once; the other
/// nodes hear it from the notifier: [`chatcore::ChatService::end_session`] also publishes the
/// session-ended event to [`UserId::SESSION_REVOCATIONS`], and
/// [`CachedSessions::follow_revocations`] drops the matching entry (a map from
/// [`SessionId`] to token hash finds it). The cache serves lookups only while it follows
/// revocations: before, or after the notifier ended the subscription, every lookup reads the
/// store. A [`Delivery::Gap`] (revocations may have been lost) empties it.
///
/// [`crate::SessionAuthenticator`] builds one from [`crate::SessionConfig`] and follows
/// revocations from [`crate::SessionAuthenticator::start`].
pub struct CachedSessions {
    inner: Arc<dyn SessionStore>,
    /// `None` when the cache is off (capacity or time to live 0).
    cache: Option<Cache<TokenHash, SessionRecord>>,
    /// Which cached token hash a session id names, for revocations (they carry the id only).
    index: Arc<Mutex<HashMap<SessionId, TokenHash>>>,
    /// Bumped by every revocation heard; a lookup caches its answer only if none came
    /// meanwhile (else a lookup racing a logout could put the ended session back).
    epoch: AtomicU64,
    /// Whether revocations are being followed (the cache serves lookups only then).
    following: AtomicBool,
    /// Whether the "not following" warning was logged.
    warned: AtomicBool,
}

impl std::fmt::Debug for CachedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSessions")
            .field("enabled", &self.cache.is_some())
            .field("following", &self.following.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CachedSessions {
    /// A cache of at most `capacity` sessions in front of `inner`, each kept at most `ttl`.
    /// `capacity` or `ttl` 0 turns the cache off (every call goes to `inner`).
    pub fn new(inner: Arc<dyn SessionStore>, capacity: u64, ttl: Duration) -> Self {
        let index: Arc<Mutex<HashMap<SessionId, TokenHash>>> = Arc::default();
        let cache = (capacity > 0 && !ttl.is_zero()).then(|| {
            let index = Arc::downgrade(&index);
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_listener(move |hash: Arc<TokenHash>, _, cause| {
                    // A replaced entry is the same session again: its index entry stays.
                    if cause != RemovalCause::Replaced {
                        forget(&index, &hash);
                    }
                })
                .build()
        });
        Self {
            inner,
            cache,
            index,
            epoch: AtomicU64::new(0),
            following: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether the cache is on (a capacity and a time to live above zero).
    pub fn is_enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// Whether lookups are being served from the cache (it is on and follows revocations).
    pub fn is_serving(&self) -> bool {
        self.cache.is_some() && self.following.load(Ordering::Acquire)
    }

    /// How many sessions are cached now (approximate: evictions are applied lazily).
    pub fn cached(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::entry_count)
    }

    /// Forgets `session` here (a revocation heard from any node); [`SessionId::ALL`] (every
    /// session of a user ended: account removal, a new password, an operator's revocation)
    /// forgets every session, since the cache does not index sessions by user: each is read
    /// from the store once more.
    pub async fn revoke(&self, session: SessionId) {
        if session == SessionId::ALL {
            self.clear();
            return;
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let hash = lock(&self.index).remove(&session);
        if let (Some(cache), Some(hash)) = (&self.cache, hash) {
            cache.invalidate(&hash).await;
        }
    }

    /// Forgets every session (revocations may have been missed).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
        lock(&self.index).clear();
    }

    /// The session's user and expiry as the store has them now, bypassing the cache (what an
    /// open connection asks now and then to learn that its session was ended by a process
    /// whose revocation did not reach this one, see `ApiConfig::ws_session_recheck`). A
    /// session the store no longer has is forgotten here too.
    pub async fn session_user_uncached(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> chatcore::Result<Option<SessionRecord>> {
        let record = self.inner.session_user(token_hash, now).await?;
        if record.is_none() {
            self.forget(token_hash).await;
        }
        Ok(record)
    }

    /// Drops the session from this node's cache, found by its id and by its token hash.
    async fn forget(&self, token_hash: &TokenHash) {
        self.revoke(session_id(token_hash)).await;
        if let Some(cache) = &self.cache {
            cache.invalidate(token_hash).await;
        }
    }

    /// Follows the revocations of `subscription` (a subscription to
    /// [`UserId::SESSION_REVOCATIONS`]) on a task of its own, until `stop` is cancelled, the
    /// cache is dropped, or the notifier ends the subscription; the cache serves lookups
    /// from now until then.
    pub fn follow_revocations(self: &Arc<Self>, mut subscription: Subscription, stop: CancellationToken) {
        let cache: Weak<Self> = Arc::downgrade(self);
        self.clear();
        self.following.store(true, Ordering::Release);
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    delivery = subscription.recv() => delivery,
                };
                let Some(cache) = cache.upgrade() else { break };
                match delivery {
                    Some(Delivery::Event { event, .. }) if event.kind() == EventKind::SessionEnded => {
                        if let Some(session) = event.session() {
                            cache.revoke(session).await;
                        }
                    }
                    Some(Delivery::Gap) => {
                        tracing::debug!("revocations may have been missed: the session cache starts over");
                        cache.clear();
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(
                            "the notifier ended the revocation subscription: sessions are no longer cached"
                        );
                        break;
                    }
                }
            }
            // Not following any more: nothing may be served from what is cached.
            if let Some(cache) = cache.upgrade() {
                cache.following.store(false, Ordering::Release);
                cache.clear();
            }
        });
    }
}

#[async_trait]
impl SessionStore for CachedSessions {
    async fn create_account(&self, username: &Username, password_hash: &str) -> chatcore::Result<User> {
        self.inner.create_account(username, password_hash).await
    }

    async fn credentials(&self, username: &Username) -> chatcore::Result<Option<Credentials>> {
        self.inner.credentials(username).await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> chatcore::Result<()> {
        self.inner.create_session(token_hash, user, expires_at).await
    }

    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> chatcore::Result<Option<SessionRecord>> {
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| self.following.load(Ordering::Acquire))
        else {
            if self.cache.is_some() && !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the session cache is on but does not follow revocations (was \
                     SessionAuthenticator::start called?): every lookup reads the store"
                );
            }
            return self.inner.session_user(token_hash, now).await;
        };
        if let Some(record) = cache.get(token_hash).await {
            if record.expires_at > now {
                return Ok(Some(record));
            }
            cache.invalidate(token_hash).await;
            return Ok(None);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let record = self.inner.session_user(token_hash, now).await?;
        if let Some(record) = &record {
            // Index first, then the entry, then the epoch check: a revocation that comes
            // after the check finds the index entry and drops what was inserted.
            lock(&self.index).insert(session_id(token_hash), *token_hash);
            cache.insert(*token_hash, record.clone()).await;
            if self.epoch.load(Ordering::SeqCst) != epoch {
                cache.invalidate(token_hash).await;
            }
        }
        Ok(record)
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> chatcore::Result<()> {
        let deleted = self.inner.delete_session(token_hash).await;
        // Forget it whatever the store said: the caller may retry, and a stale entry must
        // not outlive an attempted logout.
        self.forget(token_hash).await;
        deleted
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> chatcore::Result<u64> {
        self.inner.delete_expired_sessions(now).await
    }

    /// Ends the sessions in the store, then forgets every cached session here at once (the
    /// cache does not know which are the user's); other nodes forget them when
    /// [`chatcore::ChatService::end_all_sessions`] reaches them.
    async fn delete_user_sessions(&self, user: UserId) -> chatcore::Result<u64> {
        let deleted = self.inner.delete_user_sessions(user).await;
        self.clear();
        deleted
    }

    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> chatcore::Result<User> {
        self.inner.set_password_hash(username, password_hash).await
    }
}

/// The public name of the session whose token hashes to `hash`: the first 8 bytes of the
/// hash's own SHA-256, so what crosses the notifier cannot be used to look a session up.
pub(crate) fn session_id(hash: &TokenHash) -> SessionId {
    let digest = Sha256::digest(hash);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    SessionId(u64::from_be_bytes(first))
}

/// Drops `hash`'s index entry (its cache entry was evicted).
fn forget(index: &Weak<Mutex<HashMap<SessionId, TokenHash>>>, hash: &TokenHash) {
    if let Some(index) = index.upgrade() {
        let mut index = lock(&index);
        let id = session_id(hash);
        if index.get(&id) == Some(hash) {
            index.remove(&id);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map whole, so a poisoned lock is safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::{Event, LocalNotifier, MemoryStore, Notifier, Recipient, Store};

    /// Counts the lookups that reach the store.
    struct Counting {
        inner: MemoryStore,
        lookups: AtomicU64,
    }

    #[async_trait]
    impl SessionStore for Counting {
        async fn create_account(&self, username: &Username, hash: &str) -> chatcore::Result<User> {
            self.inner.create_account(username, hash).await
        }
        async fn credentials(&self, username: &Username) -> chatcore::Result<Option<Credentials>> {
            self.inner.credentials(username).await
        }
        async fn create_session(
            &self,
            hash: &TokenHash,
            user: UserId,
            at: DateTime<Utc>,
        ) -> chatcore::Result<()> {
            self.inner.create_session(hash, user, at).await
        }
        async fn session_user(
            &self,
            hash: &TokenHash,
            now: DateTime<Utc>,
        ) -> chatcore::Result<Option<SessionRecord>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.inner.session_user(hash, now).await
        }
        async fn delete_session(&self, hash: &TokenHash) -> chatcore::Result<()> {
            self.inner.delete_session(hash).await
        }
        async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> chatcore::Result<u64> {
            self.inner.delete_expired_sessions(now).await
        }
        async fn delete_user_sessions(&self, user: UserId) -> chatcore::Result<u64> {
            self.inner.delete_user_sessions(user).await
        }
        async fn set_password_hash(&self, username: &Username, hash: &str) -> chatcore::Result<User> {
            self.inner.set_password_hash(username, hash).await
        }
    }

    #[tokio::test]
    async fn serves_while_following_and_forgets_revoked_sessions() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(),
            lookups: AtomicU64::new(0),
        });
        let user = store
            .inner
            .create_user(&Username::parse("alice").unwrap())
            .await
            .unwrap();
        let (one, two) = ([1u8; 32], [2u8; 32]);
        let later = Utc::now() + chrono::Duration::hours(1);
        for hash in [&one, &two] {
            store.create_session(hash, user.id, later).await.unwrap();
        }
        let cache = Arc::new(CachedSessions::new(store.clone(), 100, Duration::from_secs(3600)));
        let lookups = || store.lookups.load(Ordering::SeqCst);
        // Not following revocations: every lookup reads the store.
        cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
        cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
        assert_eq!(lookups(), 2);

        let notifier = LocalNotifier::new(1);
        let subscription = notifier.subscribe(UserId::SESSION_REVOCATIONS).await.unwrap();
        let stop = CancellationToken::new();
        cache.follow_revocations(subscription, stop.clone());
        for _ in 0..3 {
            for hash in [&one, &two] {
                assert_eq!(
                    cache.session_user(hash, Utc::now()).await.unwrap().unwrap().user,
                    user
                );
            }
        }
        assert_eq!(lookups(), 4, "one read per session, then the cache");
        // Past its expiry a cached session is not served.
        let past = later + chrono::Duration::seconds(1);
        assert_eq!(cache.session_user(&one, past).await.unwrap(), None);

        // A revocation published by another node (deleted from the shared store there).
        store.inner.delete_session(&two).await.unwrap();
        notifier
            .publish(
                &[Recipient::ephemeral(UserId::SESSION_REVOCATIONS)],
                &Event::session_ended(session_id(&two)),
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cache.session_user(&two, Utc::now()).await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the revocation never arrived"
            );
            tokio::task::yield_now().await;
        }
        // The expired probe dropped `one`: read once more, then cached again.
        let before = lookups();
        cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
        cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
        assert_eq!(lookups(), before + 1);
        // A gap (revocations may be lost: here the queue of one overflows before the
        // follower runs) empties the cache.
        let revocations = [Recipient::ephemeral(UserId::SESSION_REVOCATIONS)];
        for unrelated in [SessionId(1), SessionId(2)] {
            notifier
                .publish(&revocations, &Event::session_ended(unrelated))
                .await
                .unwrap();
        }
        loop {
            cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
            if lookups() == before + 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gap never emptied the cache"
            );
            tokio::task::yield_now().await;
        }
        // Once the follower stops, nothing is served from the cache.
        stop.cancel();
        while cache.is_serving() {
            assert!(std::time::Instant::now() < deadline, "the follower never stopped");
            tokio::task::yield_now().await;
        }
        cache.session_user(&one, Utc::now()).await.unwrap().unwrap();
        assert_eq!(lookups(), before + 3);
    }

    /// "Every session of a user ended" (`SessionId::ALL`, from any node) empties the cache:
    /// each session is read from the store again, and one the store no longer has is gone.
    #[tokio::test]
    async fn ending_all_sessions_of_a_user_empties_the_cache() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(),
            lookups: AtomicU64::new(0),
        });
        let alice = store
            .inner
            .create_user(&Username::parse("alice").unwrap())
            .await
            .unwrap();
        let bob = store
            .inner
            .create_user(&Username::parse("bob").unwrap())
            .await
            .unwrap();
        let later = Utc::now() + chrono::Duration::hours(1);
        store.create_session(&[1; 32], alice.id, later).await.unwrap();
        store.create_session(&[2; 32], bob.id, later).await.unwrap();
        let cache = Arc::new(CachedSessions::new(store.clone(), 100, Duration::from_secs(3600)));
        let notifier = LocalNotifier::new(16);
        let subscription = notifier.subscribe(UserId::SESSION_REVOCATIONS).await.unwrap();
        cache.follow_revocations(subscription, CancellationToken::new());
        for _ in 0..2 {
            for hash in [[1; 32], [2; 32]] {
                cache.session_user(&hash, Utc::now()).await.unwrap().unwrap();
            }
        }
        assert_eq!(store.lookups.load(Ordering::SeqCst), 2, "both cached");
        // Another node ended every session of alice: gone from the store, then announced.
        assert_eq!(store.inner.delete_user_sessions(alice.id).await.unwrap(), 1);
        notifier
            .publish(
                &[Recipient::ephemeral(UserId::SESSION_REVOCATIONS)],
                &Event::session_ended(SessionId::ALL),
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cache.session_user(&[1; 32], Utc::now()).await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the revocation never arrived"
            );
            tokio::task::yield_now().await;
        }
        let before = store.lookups.load(Ordering::SeqCst);
        assert_eq!(
            cache
                .session_user(&[2; 32], Utc::now())
                .await
                .unwrap()
                .unwrap()
                .user,
            bob
        );
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            before + 1,
            "read again once"
        );
    }
}
