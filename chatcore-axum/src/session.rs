//! [`SessionAuthenticator`]: accounts with argon2 password hashes and revocable session
//! tokens, kept in a [`SessionStore`] behind a [`CachedSessions`]; its background tasks; and
//! the auth routes (`register`, `login`, `logout`) with their per-address limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatcore::{ChatService, Error, SessionStore, TokenHash, User, UserId, Username};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use unicode_normalization::UnicodeNormalization;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticated, Authenticator, SessionInfo, TrustedOrigin, check_same_origin};
use crate::body::JsonOrForm;
use crate::error::ApiError;
use crate::limits::TooManyAttempts;
use crate::limits::{AddressLimits, Attempt};
use crate::openapi::{self, BodyErrors, ErrorBody, ServerErrors};
use crate::session_cache::{CachedSessions, session_id};

/// Settings of a [`SessionAuthenticator`]. Start from `SessionConfig::default()`.
///
/// ```
/// let config = chatcore_axum::SessionConfig { secure_cookies: true, ..Default::default() };
/// assert_eq!(config.cookie_name, "chatcore_session");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Name of the session cookie. Default `chatcore_session`. With
    /// [`SessionConfig::secure_cookies`] the cookie is named with the `__Host-` prefix
    /// (`__Host-chatcore_session`), which browsers accept only from this host over HTTPS,
    /// with `Path=/` and no `Domain`: a sibling subdomain cannot set or shadow it.
    pub cookie_name: String,
    /// Mark the cookie `Secure` (only sent over HTTPS) and name it with the `__Host-` prefix.
    /// Turn on when serving HTTPS; plain-HTTP localhost needs it off. Default `false`.
    pub secure_cookies: bool,
    /// How long a session lasts after login. Default 14 days.
    pub session_lifetime: Duration,
    /// Shortest accepted password, in characters. Default 8.
    pub min_password_chars: usize,
    /// Longest accepted password, in characters after NFKC normalization (hashing a huge
    /// one would be a cheap way to burn the server's CPU). Default 1,024.
    pub max_password_chars: usize,
    /// Argon2id memory cost in KiB. Default 19,456 (19 MiB, OWASP's recommendation).
    pub argon2_memory_kib: u32,
    /// Argon2id passes. Default 2.
    pub argon2_iterations: u32,
    /// Password hashes computed at once; further logins and registrations wait their turn.
    /// Each takes `argon2_memory_kib` of memory and a CPU, so a burst of logins cannot
    /// exhaust either. Default: the number of CPUs.
    pub max_concurrent_hashes: usize,
    /// Live sessions each node keeps in memory, so an authenticated request costs no
    /// database read ([`CachedSessions`]: bounded, evicting by recency and frequency). A
    /// logout on any node reaches every node's cache at once through the notifier (see
    /// [`SessionAuthenticator::start`]). 0 turns the cache off. Default 100,000 (a few tens
    /// of MB at most).
    pub session_cache_capacity: u64,
    /// Longest a session stays cached before the store is asked again (its expiry is
    /// honoured whatever this says). Zero turns the cache off. Default 5 minutes.
    pub session_cache_ttl: Duration,
    /// How often expired sessions are deleted from the store by a background task (started
    /// by [`SessionAuthenticator::start`]). Zero turns it off (the host deletes them itself,
    /// e.g. with [`SessionStore::delete_expired_sessions`]). Default 1 hour.
    pub expired_session_sweep: Duration,
    /// Logins accepted per minute from one client address (an IPv6 /64 counts as one):
    /// that many at once, then one more every minute divided by it; past it 429 with
    /// `Retry-After`. 0 turns the limit off. Default 10.
    pub logins_per_minute: u32,
    /// Registrations accepted per hour from one client address, in the same way. 0 turns
    /// the limit off. Default 10.
    pub registrations_per_hour: u32,
    /// The server runs behind a reverse proxy: the client address is the last
    /// `X-Forwarded-For` entry (the one the proxy appended), not the TCP peer. Only set it
    /// when a proxy always sets that header: otherwise clients could claim any address.
    /// With it off the address comes from axum's `ConnectInfo<SocketAddr>` (serve the app
    /// with `into_make_service_with_connect_info::<SocketAddr>()`, as [`crate::serve`]
    /// does). When a limit is on and no address is found, the route answers 500 and logs
    /// why. Default `false`.
    pub behind_proxy: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie_name: "chatcore_session".to_owned(),
            secure_cookies: false,
            session_lifetime: Duration::from_secs(14 * 24 * 3600),
            min_password_chars: 8,
            max_password_chars: 1024,
            argon2_memory_kib: Params::DEFAULT_M_COST,
            argon2_iterations: Params::DEFAULT_T_COST,
            max_concurrent_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            session_cache_capacity: 100_000,
            session_cache_ttl: Duration::from_secs(5 * 60),
            expired_session_sweep: Duration::from_secs(3600),
            logins_per_minute: 10,
            registrations_per_hour: 10,
            behind_proxy: false,
        }
    }
}

/// A freshly issued session: give `token` to the client (it is never stored; the store keeps
/// its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The bearer token, 32 random bytes in unpadded base64url (43 characters).
    pub token: String,
    /// Whose session it is.
    pub user: User,
}

/// A ready-to-use [`Authenticator`]: username and password accounts (argon2id hashes), and
/// session tokens accepted as `Authorization: Bearer <token>` or as a cookie. Everything is
/// kept in a [`SessionStore`] (every backend of this workspace is one, over the same database
/// as the messages), with live sessions cached in memory ([`SessionConfig::session_cache_capacity`]).
/// Cheap to clone.
///
/// Call [`SessionAuthenticator::start`] once the runtime is up: it starts the background
/// work (following revocations for the cache, deleting expired sessions), which stops when
/// the last clone of the authenticator is dropped. Without it sessions are not cached and
/// expired ones stay in the store.
///
/// Hashing runs on tokio's blocking pool (argon2 is slow on purpose). A login for an unknown
/// user still verifies a dummy hash, so timing does not tell which names exist.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
/// use std::sync::Arc;
/// use chatcore_axum::{SessionAuthenticator, SessionConfig};
///
/// let store = Arc::new(chatcore::MemoryStore::new());
/// let chat = chatcore::ChatService::new(store.clone(), Arc::new(chatcore::LocalNotifier::default()), Default::default());
/// let fast = SessionConfig { argon2_memory_kib: 64, argon2_iterations: 1, ..Default::default() };
/// let auth = SessionAuthenticator::new(store, fast)?;
/// auth.start(&chat).await?; // the session cache and the expired-session sweeper
/// auth.register("alice", "correct horse").await?;
/// let session = auth.login("alice", "correct horse").await?.expect("right password");
/// assert_eq!(session.user.username.as_str(), "alice");
/// assert!(auth.login("alice", "wrong password").await?.is_none());
/// auth.logout(&chat, &session.token).await?; // also closes its connections
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SessionAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store behind its cache.
    sessions: Arc<CachedSessions>,
    config: SessionConfig,
    /// The cookie's name as sent: `__Host-` + [`SessionConfig::cookie_name`] with secure
    /// cookies.
    cookie_name: String,
    limits: AddressLimits,
    /// Cancelled when the last clone goes: stops the background tasks.
    tasks: CancellationToken,
    started: AtomicBool,
    argon2: Argon2<'static>,
    /// Bounds the hashes computed at once (see [`SessionConfig::max_concurrent_hashes`]).
    hashing: tokio::sync::Semaphore,
    /// A hash of nothing in particular, verified for unknown users; made at start.
    dummy_hash: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

impl std::fmt::Debug for SessionAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAuthenticator")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Length of a token: 32 bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

impl SessionAuthenticator {
    /// An authenticator over `store` (normally the same backend as the chat service's).
    /// Starts nothing: see [`SessionAuthenticator::start`]. Checks `config`
    /// and hashes the dummy password it verifies for unknown users (so the first such login
    /// costs no more than the others).
    ///
    /// Errors: [`Error::Invalid`] for a setting out of range: a cookie name that is not an
    /// HTTP token, a zero session lifetime, password bounds that contradict each other, argon2
    /// costs argon2 refuses, no hashing slot.
    pub fn new(store: Arc<dyn SessionStore>, config: SessionConfig) -> chatcore::Result<Self> {
        let bad = |what: String| Err(Error::invalid(format!("session config: {what}")));
        let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if config.cookie_name.is_empty() || !config.cookie_name.bytes().all(is_tchar) {
            return bad(format!(
                "cookie name {:?} is not an HTTP token",
                config.cookie_name
            ));
        }
        if config.session_lifetime.is_zero() {
            return bad("the session lifetime must be more than zero".into());
        }
        if config.min_password_chars == 0 || config.min_password_chars > config.max_password_chars {
            return bad(format!(
                "password length bounds {}..={} are empty",
                config.min_password_chars, config.max_password_chars
            ));
        }
        if config.max_concurrent_hashes == 0 {
            return bad("max_concurrent_hashes must be at least 1".into());
        }
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            Params::DEFAULT_P_COST,
            None,
        )
        .map_err(|error| Error::invalid(format!("session config: argon2 costs: {error}")))?;
        let mut inner = Inner {
            sessions: Arc::new(CachedSessions::new(
                store,
                config.session_cache_capacity,
                config.session_cache_ttl,
            )),
            limits: AddressLimits::new(
                config.logins_per_minute,
                config.registrations_per_hour,
                config.behind_proxy,
            ),
            tasks: CancellationToken::new(),
            started: AtomicBool::new(false),
            hashing: tokio::sync::Semaphore::new(config.max_concurrent_hashes),
            cookie_name: if config.secure_cookies {
                format!("__Host-{}", config.cookie_name)
            } else {
                config.cookie_name.clone()
            },
            config,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            dummy_hash: String::new(),
        };
        inner.dummy_hash = inner.hash("not a password of anyone")?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The session cookie's name as sent to browsers (with the `__Host-` prefix when
    /// [`SessionConfig::secure_cookies`] is on).
    pub fn cookie_name(&self) -> &str {
        &self.inner.cookie_name
    }

    /// The session store as the authenticator uses it: behind its cache.
    pub fn sessions(&self) -> &Arc<CachedSessions> {
        &self.inner.sessions
    }

    /// Starts the background work, once (later calls do nothing), on the current tokio
    /// runtime:
    /// - the session cache follows revocations: it subscribes to
    ///   [`UserId::SESSION_REVOCATIONS`] on `chat`'s notifier, where
    ///   [`ChatService::end_session`] announces every ended session on every node, and
    ///   serves lookups from then on ([`CachedSessions`]);
    /// - every [`SessionConfig::expired_session_sweep`], expired sessions are deleted from
    ///   the store.
    ///
    /// Both stop when the last clone of this authenticator is dropped. Call it once the
    /// runtime is up, before serving: the router does not start it. `chat` must use the
    /// notifier the other nodes use.
    ///
    /// Errors: the notifier's, when it cannot subscribe (the work is not started then).
    pub async fn start(&self, chat: &ChatService) -> chatcore::Result<()> {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let stop = self.inner.tasks.clone();
        if self.inner.sessions.is_enabled() {
            match chat.notifier().subscribe(UserId::SESSION_REVOCATIONS).await {
                Ok(subscription) => self.inner.sessions.follow_revocations(subscription, stop.clone()),
                // The notifier is down (Redis at start): the cache serves nothing until it
                // follows revocations (every lookup asks the store), and subscribing is retried
                // in the background, as a notifier outage at run time is.
                Err(error @ Error::Unavailable { .. }) => {
                    tracing::warn!(%error, "session revocations unavailable: sessions are not cached until the notifier answers");
                    let (notifier, sessions, stop) = (
                        chat.notifier().clone(),
                        Arc::downgrade(&self.inner.sessions),
                        stop.clone(),
                    );
                    tokio::spawn(async move {
                        let mut wait = Duration::from_millis(100);
                        loop {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(wait) => {}
                            }
                            let Some(cache) = sessions.upgrade() else { return };
                            if let Ok(subscription) = notifier.subscribe(UserId::SESSION_REVOCATIONS).await {
                                tracing::info!("session revocations followed: sessions are cached again");
                                cache.follow_revocations(subscription, stop);
                                return;
                            }
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    });
                }
                Err(error) => {
                    self.inner.started.store(false, Ordering::Release);
                    return Err(error);
                }
            }
        }
        let every = self.inner.config.expired_session_sweep;
        if !every.is_zero() {
            let sessions = Arc::downgrade(&self.inner.sessions);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = ticks.tick() => {}
                    }
                    let Some(sessions) = sessions.upgrade() else { break };
                    match sessions.delete_expired_sessions(chrono::Utc::now()).await {
                        Ok(0) => {}
                        Ok(deleted) => tracing::debug!(deleted, "expired sessions deleted"),
                        Err(error) => {
                            tracing::warn!(%error, "deleting expired sessions failed; retrying at the next sweep")
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Creates an account. [`Error::Invalid`] for a bad name or password,
    /// [`Error::Conflict`] when the name is taken.
    pub async fn register(&self, username: &str, password: &str) -> chatcore::Result<User> {
        let username = Username::parse(username)?;
        let hash = self.new_password_hash(password).await?;
        self.inner.sessions.create_account(&username, &hash).await
    }

    /// The hash of a new password, checked by the rules of [`SessionAuthenticator::register`].
    async fn new_password_hash(&self, password: &str) -> chatcore::Result<String> {
        let config = &self.inner.config;
        let password = self.password_text(password)?;
        if password.trim().is_empty() {
            return Err(Error::invalid("password must not be only whitespace"));
        }
        if password.chars().count() < config.min_password_chars {
            return Err(Error::invalid(format!(
                "password must be at least {} characters",
                config.min_password_chars
            )));
        }
        self.hash_password(password).await
    }

    /// Gives the account `username` a new password (checked as [`SessionAuthenticator::register`]
    /// checks one; also for a user created without one), then ends every session of theirs
    /// and closes their connections on every node ([`SessionAuthenticator::revoke_sessions`]):
    /// whoever knew the old password is out. Returns the user and how many sessions ended.
    ///
    /// Errors: [`Error::Invalid`] for a bad password; [`Error::NotFound`] for an unknown name
    /// or a deleted account; a notifier that cannot reach other nodes (the password and the
    /// sessions are changed by then; connections elsewhere close within
    /// [`crate::ApiConfig::ws_session_recheck`]).
    pub async fn set_password(
        &self,
        chat: &ChatService,
        username: &str,
        password: &str,
    ) -> chatcore::Result<(User, u64)> {
        let username = Username::parse(username).map_err(|_| Error::NotFound(chatcore::Entity::User))?;
        let hash = self.new_password_hash(password).await?;
        let user = self.inner.sessions.set_password_hash(&username, &hash).await?;
        let ended = self.revoke_sessions(chat, &user).await?;
        Ok((user, ended))
    }

    /// Ends every session of `user` at once and closes their connections on every node (an
    /// operator's "log them out everywhere"); returns how many sessions there were. This
    /// node's session cache forgets them at once, other nodes' when the notifier reaches them
    /// ([`ChatService::end_all_sessions`]); connections the notifier does not reach close
    /// within [`crate::ApiConfig::ws_session_recheck`].
    ///
    /// Errors: the store's; the notifier's when it cannot reach other nodes (the sessions are
    /// ended by then).
    pub async fn revoke_sessions(&self, chat: &ChatService, user: &User) -> chatcore::Result<u64> {
        let ended = self.inner.sessions.delete_user_sessions(user.id).await?;
        chat.end_all_sessions(user).await?;
        Ok(ended)
    }

    /// Deletes `user`'s account for good ([`ChatService::delete_account`]: sessions, password,
    /// connections, every message they sent becomes a tombstone, the name stays reserved),
    /// and forgets their sessions in this node's cache at once. No password asked: the
    /// caller checked who asks (the account route checks the password with
    /// [`SessionAuthenticator::check_password`]; an operator needs none). Returns how many
    /// messages became tombstones.
    pub async fn delete_account(&self, chat: &ChatService, user: &User) -> chatcore::Result<u64> {
        let deleted = chat.delete_account(user).await;
        // Whatever happened after the removal, no cached session of theirs may be served.
        self.inner.sessions.clear();
        deleted
    }

    /// Whether `password` is `username`'s: the user when it is, `None` for a wrong password,
    /// an unknown user, a user without a password and a deleted account alike (as long to
    /// answer in every case).
    pub async fn check_password(&self, username: &str, password: &str) -> chatcore::Result<Option<User>> {
        let normalized = self.password_text(password)?;
        let credentials = match Username::parse(username) {
            Ok(name) => self.inner.sessions.credentials(&name).await?,
            Err(_) => None,
        };
        let (user, hash) = match credentials {
            Some(chatcore::Credentials {
                user,
                password_hash: Some(hash),
            }) => (Some(user), Some(hash)),
            Some(_) | None => (None, None),
        };
        let inner = self.inner.clone();
        // Hashes made before passwords were normalized hold the text as typed.
        let as_typed = (normalized != password).then(|| password.to_owned());
        let _permit = self.hashing_permit().await?;
        let verified = tokio::task::spawn_blocking(move || {
            let hash = match &hash {
                Some(hash) => hash.as_str(),
                None => inner.dummy_hash(),
            };
            // Verify even when the user is unknown, so both answers take as long.
            let matches =
                inner.verify(&normalized, hash) || as_typed.is_some_and(|typed| inner.verify(&typed, hash));
            user.filter(|_| matches)
        })
        .await
        .map_err(|e| Error::internal("password verification task failed", e))?;
        Ok(verified)
    }

    /// Checks a username and password; on success records and returns a new session.
    /// `Ok(None)` for a wrong password, an unknown user and a user without a password alike.
    pub async fn login(&self, username: &str, password: &str) -> chatcore::Result<Option<Session>> {
        match self.check_password(username, password).await? {
            // A login racing the account's deletion: the store refuses the session.
            Some(user) => match self.start_session(user).await {
                Err(Error::NotFound(chatcore::Entity::User)) => Ok(None),
                other => other.map(Some),
            },
            None => Ok(None),
        }
    }

    /// Records a new session for `user` without a password: for hosts that verify identity
    /// their own way (single sign-on, tests) and then hand out chat tokens.
    pub async fn start_session(&self, user: User) -> chatcore::Result<Session> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let lifetime =
            chrono::Duration::from_std(self.inner.config.session_lifetime).unwrap_or(chrono::Duration::MAX);
        let expires_at = chrono::Utc::now()
            .checked_add_signed(lifetime)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        self.inner
            .sessions
            .create_session(&token_hash(&token), user.id, expires_at)
            .await?;
        Ok(Session { token, user })
    }

    /// Ends the session of `token` at once, and closes the connections opened with it on
    /// every node (through `chat`'s notifier, which also tells every node's session cache).
    /// An unknown token is not an error. The session is deleted even when the notifier is
    /// down; the error then says the connections, and other nodes' caches, may keep it until
    /// they next reconnect (or the cache entry's time to live).
    pub async fn logout(&self, chat: &ChatService, token: &str) -> chatcore::Result<()> {
        let live = self.session_for_token(token).await?;
        self.inner.sessions.delete_session(&token_hash(token)).await?;
        if let Some(Authenticated {
            user,
            session: Some(session),
        }) = live
        {
            chat.end_session(&user, session.id).await?;
        }
        Ok(())
    }

    /// The user a token belongs to, if the session is live.
    pub async fn user_for_token(&self, token: &str) -> chatcore::Result<Option<User>> {
        Ok(self.session_for_token(token).await?.map(|caller| caller.user))
    }

    /// The user and session a token belongs to, if the session is live.
    pub async fn session_for_token(&self, token: &str) -> chatcore::Result<Option<Authenticated>> {
        if !plausible_token(token) {
            return Ok(None);
        }
        let hash = token_hash(token);
        let record = self
            .inner
            .sessions
            .session_user(&hash, chrono::Utc::now())
            .await?;
        Ok(record.map(|record| Authenticated {
            user: record.user,
            session: Some(SessionInfo {
                id: session_id(&hash),
                expires_at: record.expires_at,
            }),
        }))
    }

    /// The session token a request carries: the `Authorization: Bearer` header when present,
    /// else the first session cookie. See [`SessionAuthenticator::tokens_from_headers`] for
    /// all of them.
    pub fn token_from_headers<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        self.tokens_from_headers(headers).into_iter().next()
    }

    /// The session tokens a request carries, in order: the `Authorization: Bearer` header
    /// alone when present, else every session cookie that could be a token (a browser sends
    /// several cookies of one name when another site, e.g. a sibling subdomain, planted
    /// one), at most [`MAX_SESSION_COOKIES`]. The first live one authenticates, so junk
    /// planted next to a valid cookie cannot log its user out.
    pub fn tokens_from_headers<'h>(&self, headers: &'h HeaderMap) -> Vec<&'h str> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let bearer = value
                .to_str()
                .ok()
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            return bearer.into_iter().collect();
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.inner.cookie_name)
            .map(|(_, value)| value.trim_matches('"'))
            .filter(|token| plausible_token(token))
            .take(MAX_SESSION_COOKIES)
            .collect()
    }

    /// The first live session among the tokens `headers` carries.
    async fn session_from_headers(
        &self,
        headers: &HeaderMap,
    ) -> chatcore::Result<Option<(Authenticated, String)>> {
        for token in self.tokens_from_headers(headers) {
            if let Some(caller) = self.session_for_token(token).await? {
                return Ok(Some((caller, token.to_owned())));
            }
        }
        Ok(None)
    }

    /// The `Set-Cookie` value that stores `token` in the browser: HttpOnly, SameSite=Lax,
    /// Path=/, `Secure` when configured.
    pub fn session_cookie(&self, token: &str) -> chatcore::Result<HeaderValue> {
        let config = &self.inner.config;
        self.cookie(token, config.session_lifetime.as_secs())
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clearing_cookie(&self) -> chatcore::Result<HeaderValue> {
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> chatcore::Result<HeaderValue> {
        let config = &self.inner.config;
        let secure = if config.secure_cookies { "; Secure" } else { "" };
        let cookie = format!(
            "{}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{secure}",
            self.inner.cookie_name
        );
        // The name was checked in `new` and tokens are base64url: this cannot fail, and if it
        // did the answer is an error, never an empty header.
        HeaderValue::try_from(cookie).map_err(|e| Error::internal("building the session cookie", e))
    }

    /// The password as hashed: NFKC-normalized (so the same password typed on another
    /// keyboard or input method matches), at most [`SessionConfig::max_password_chars`].
    fn password_text(&self, password: &str) -> chatcore::Result<String> {
        let max = self.inner.config.max_password_chars;
        // A cheap bound first: NFKC expands a character to at most 18.
        if password.chars().count() > max.saturating_mul(18) {
            return Err(Error::invalid(format!(
                "password must be at most {max} characters"
            )));
        }
        let normalized: String = password.nfkc().collect();
        if normalized.chars().count() > max {
            return Err(Error::invalid(format!(
                "password must be at most {max} characters"
            )));
        }
        Ok(normalized)
    }

    async fn hashing_permit(&self) -> chatcore::Result<tokio::sync::SemaphorePermit<'_>> {
        self.inner
            .hashing
            .acquire()
            .await
            .map_err(|e| Error::internal("password hashing semaphore closed", e))
    }

    async fn hash_password(&self, password: String) -> chatcore::Result<String> {
        let _permit = self.hashing_permit().await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.hash(&password))
            .await
            .map_err(|e| Error::internal("password hashing task failed", e))?
    }
}

impl Inner {
    fn hash(&self, password: &str) -> chatcore::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::internal("hashing a password", PasswordHashError(e)))
    }

    fn verify(&self, password: &str, hash: &str) -> bool {
        match PasswordHash::new(hash) {
            Ok(parsed) => self.argon2.verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(error) => {
                tracing::error!(%error, "a stored password hash is not in PHC format");
                false
            }
        }
    }

    fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }
}

/// `argon2::password_hash::Error` is not `std::error::Error` without the crate's `std`
/// feature on `password-hash`; this wrapper keeps the message.
#[derive(Debug)]
struct PasswordHashError(argon2::password_hash::Error);

impl std::fmt::Display for PasswordHashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PasswordHashError {}

/// The SHA-256 of a token: what the store keeps.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens we issue are 43 base64url characters; anything else is not worth a lookup.
fn plausible_token(token: &str) -> bool {
    token.len() == TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Most session cookies of one request that are looked up (each may cost a storage read).
pub const MAX_SESSION_COOKIES: usize = 4;

#[async_trait]
impl Authenticator for SessionAuthenticator {
    async fn authenticate(&self, parts: &Parts) -> chatcore::Result<Option<User>> {
        Ok(self
            .session_from_headers(&parts.headers)
            .await?
            .map(|(caller, _)| caller.user))
    }

    async fn authenticate_session(&self, parts: &Parts) -> chatcore::Result<Option<Authenticated>> {
        Ok(self
            .session_from_headers(&parts.headers)
            .await?
            .map(|(caller, _)| caller))
    }

    /// Reads the store past the cache: the session among `headers`' tokens whose id is the
    /// caller's must still be there, for the same user.
    async fn session_is_live(&self, caller: &Authenticated, headers: &HeaderMap) -> chatcore::Result<bool> {
        let Some(session) = caller.session else {
            return Ok(true);
        };
        for token in self.tokens_from_headers(headers) {
            let hash = token_hash(token);
            if session_id(&hash) != session.id {
                continue;
            }
            let record = self
                .inner
                .sessions
                .session_user_uncached(&hash, chrono::Utc::now())
                .await?;
            return Ok(record.is_some_and(|record| record.user.id == caller.user.id));
        }
        Ok(false)
    }
}

/// `{"username", "password"}` of the register and login routes.
#[derive(Deserialize, ToSchema)]
#[schema(as = Account, example = json!({"username": "alice", "password": "a long password"}))]
struct AccountForm {
    /// 1 to 150 characters of letters, digits and `@ . + - _`, in one script (login: any case).
    #[schema(min_length = 1, max_length = 150)]
    username: String,
    /// 8 to 1,024 characters after NFKC normalization, not only whitespace.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
}

/// The account just made.
#[derive(Serialize, ToSchema)]
#[schema(as = Registered, example = json!({"username": "alice"}))]
struct RegisteredBody<'a> {
    /// The name, NFKC-normalized, in the case chosen.
    username: &'a str,
}

/// A new session.
#[derive(Serialize, ToSchema)]
#[schema(as = LoginSession, example = json!({"token": "mJ3k0Yq2T9m8d3Q0vR7yXhUe4bN1cZpW5sLfA6gKiOE", "username": "alice"}))]
struct LoginBody<'a> {
    /// The session token, for `Authorization: Bearer <token>` (also set as the cookie).
    token: &'a str,
    /// The account's name as chosen.
    username: &'a str,
}

#[derive(Clone)]
pub(crate) struct AuthState {
    pub(crate) auth: SessionAuthenticator,
    pub(crate) chat: ChatService,
    pub(crate) trusted_origins: Arc<[TrustedOrigin]>,
}

/// The auth routes, relative to where the router is nested, described:
/// `POST /api/v1/auth/register`, `POST /api/v1/auth/login`, `POST /api/v1/auth/logout`
/// (each with and without a trailing slash; bodies as JSON or form).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(state: AuthState) -> OpenApiRouter<S> {
    let router = openapi::group::<AuthState>();
    let router = openapi::add(router, routes!(register));
    let router = openapi::add(router, routes!(login));
    let router = openapi::add(router, routes!(logout));
    let router = openapi::add(router, routes!(delete_account));
    router.with_state(state)
}

/// Register.
///
/// Makes an account (limited per client address: 429 with `Retry-After` past it).
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body(description = "The new account, as JSON or as a form", content(
        (AccountForm = "application/json", example = json!({"username": "alice", "password": "a long password"})),
        (AccountForm = "application/x-www-form-urlencoded", example = json!({"username": "alice", "password": "a long password"}))
    )),
    responses(
        (status = 201, description = "The account was made", body = RegisteredBody),
        (status = 400, description = "A bad name or password, or a malformed body", body = ErrorBody,
            example = json!({"error": "password must be at least 8 characters"})),
        (status = 409, description = "The name is taken (in any case)", body = ErrorBody,
            example = json!({"error": "username is taken"})),
        TooManyAttempts, BodyErrors, ServerErrors
    )
)]
async fn register(
    State(state): State<AuthState>,
    _: SameOrigin,
    _: Allowed<REGISTRATION>,
    JsonOrForm(form): JsonOrForm<AccountForm>,
) -> Result<Response, ApiError> {
    let user = state.auth.register(&form.username, &form.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisteredBody {
            username: user.username.as_str(),
        }),
    )
        .into_response())
}

/// Log in.
///
/// Starts a session: answers its token and sets the HttpOnly session cookie (limited per
/// client address: 429 with `Retry-After` past it).
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body(description = "The credentials, as JSON or as a form", content(
        (AccountForm = "application/json", example = json!({"username": "alice", "password": "a long password"})),
        (AccountForm = "application/x-www-form-urlencoded", example = json!({"username": "alice", "password": "a long password"}))
    )),
    responses(
        (status = 200, description = "Logged in; the session cookie is set", body = LoginBody,
            headers(("Set-Cookie" = String, description = "The session cookie: HttpOnly, SameSite=Lax, Path=/"))),
        (status = 400, description = "A malformed body or an overlong password", body = ErrorBody,
            example = json!({"error": "Failed to deserialize the JSON body into the target type: missing field `password`"})),
        (status = 401, description = "Wrong name or password (the same answer for both)", body = ErrorBody,
            example = json!({"error": "wrong username or password"})),
        TooManyAttempts, BodyErrors, ServerErrors
    )
)]
async fn login(
    State(state): State<AuthState>,
    _: SameOrigin,
    _: Allowed<LOGIN>,
    JsonOrForm(form): JsonOrForm<AccountForm>,
) -> Result<Response, ApiError> {
    let Some(session) = state.auth.login(&form.username, &form.password).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong username or password",
        ));
    };
    let mut response = Json(LoginBody {
        token: &session.token,
        username: session.user.username.as_str(),
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.auth.session_cookie(&session.token)?);
    Ok(response)
}

/// Log out.
///
/// Ends the caller's session at once, on every server: the token and cookie stop working,
/// and every WebSocket opened with it closes with 4001. Clears the cookie.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Logged out; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
        (status = 401, description = "No live session", body = ErrorBody,
            example = json!({"error": "authentication required"})),
        (status = 403, description = "A request from another site", body = ErrorBody,
            example = json!({"error": "cross-site request refused"})),
        ServerErrors
    )
)]
async fn logout(
    State(state): State<AuthState>,
    _: SameOrigin,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The live session among the cookies (junk planted next to it is not the one to end).
    let Some((_, token)) = state.auth.session_from_headers(&headers).await? else {
        return Err(ApiError::unauthorized());
    };
    state.auth.logout(&state.chat, &token).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.auth.clearing_cookie()?);
    Ok(response)
}

/// `{"password"}` of the account deletion.
#[derive(Deserialize, ToSchema)]
#[schema(as = AccountDeletion, example = json!({"password": "a long password"}))]
struct PasswordForm {
    /// The account's current password.
    #[schema(max_length = 1024)]
    password: String,
}

/// Delete my account.
///
/// Deletes the caller's account for good once the password is right (checked and limited
/// like a login: 429 with `Retry-After` past the limit). Every session of the account ends at
/// once and every WebSocket of theirs closes with 4001, on every server; the password is
/// removed; every message they sent becomes a tombstone (`"body": "", "deleted": true`, a
/// durable `delete` event to both participants, in their histories and on `?since=`); the
/// messages they received stay. The name stays reserved: nobody can register it again, it
/// no longer logs in, is no longer listed in `GET /api/v1/user/`, and still names them in
/// their peers' histories. Sends to them are still stored. Clears the cookie.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/account",
    tag = "auth",
    security(("session_cookie" = []), ("bearer" = [])),
    request_body(description = "The account's password, as JSON or as a form", content(
        (PasswordForm = "application/json", example = json!({"password": "a long password"})),
        (PasswordForm = "application/x-www-form-urlencoded", example = json!({"password": "a long password"}))
    )),
    responses(
        // Before the route's own entries: its 403 replaces BodyErrors' cross-site one.
        BodyErrors,
        (status = 204, description = "Deleted; the cookie is cleared",
            headers(("Set-Cookie" = String, description = "Clears the session cookie"))),
        (status = 400, description = "A malformed body (no password) or an overlong password", body = ErrorBody,
            example = json!({"error": "Failed to deserialize the JSON body into the target type: missing field `password`"})),
        (status = 401, description = "No live session", body = ErrorBody,
            example = json!({"error": "authentication required"})),
        (status = 403, description = "The wrong password (nothing was deleted), or a request from another site", body = ErrorBody,
            example = json!({"error": "wrong password"})),
        TooManyAttempts, ServerErrors
    )
)]
async fn delete_account(
    State(state): State<AuthState>,
    _: SameOrigin,
    headers: HeaderMap,
    _: Allowed<LOGIN>,
    JsonOrForm(form): JsonOrForm<PasswordForm>,
) -> Result<Response, ApiError> {
    let Some((caller, _)) = state.auth.session_from_headers(&headers).await? else {
        return Err(ApiError::unauthorized());
    };
    let user = caller.user;
    let checked = state
        .auth
        .check_password(user.username.as_str(), &form.password)
        .await?;
    if checked.is_none_or(|checked| checked.id != user.id) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong password"));
    }
    state.auth.delete_account(&state.chat, &user).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.auth.clearing_cookie()?);
    Ok(response)
}

/// Proof that the request passed the same-origin check (login CSRF, logout CSRF).
struct SameOrigin;

impl axum::extract::FromRequestParts<AuthState> for SameOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AuthState) -> Result<Self, ApiError> {
        check_same_origin(parts, &state.trusted_origins)?;
        Ok(Self)
    }
}

const LOGIN: bool = false;
const REGISTRATION: bool = true;

/// Proof that the request's client address is within its limit of logins (`Allowed<LOGIN>`)
/// or registrations (`Allowed<REGISTRATION>`): 429 with `Retry-After` past it.
struct Allowed<const REGISTRATION: bool>;

impl<const IS_REGISTRATION: bool> axum::extract::FromRequestParts<AuthState> for Allowed<IS_REGISTRATION> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AuthState) -> Result<Self, ApiError> {
        let attempt = if IS_REGISTRATION {
            Attempt::Registration
        } else {
            Attempt::Login
        };
        state.auth.inner.limits.check(attempt, parts)?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(config: SessionConfig) -> SessionAuthenticator {
        authenticator_over(Arc::new(chatcore::MemoryStore::new()), config)
    }

    /// Issue 16: a junk session cookie planted next to the valid one (by a sibling subdomain)
    /// does not log the user out, whichever comes first.
    #[tokio::test]
    async fn a_valid_session_cookie_wins_over_junk() {
        let auth = authenticator(SessionConfig::default());
        let alice = auth.register("alice", "a long password").await.unwrap();
        let session = auth.login("alice", "a long password").await.unwrap().unwrap();
        let junk = URL_SAFE_NO_PAD.encode([9u8; 32]);
        for cookie in [
            format!("chatcore_session={junk}; chatcore_session={}", session.token),
            format!(
                "chatcore_session={}; chatcore_session=x; chatcore_session={junk}",
                session.token
            ),
        ] {
            let request = http::Request::get("/")
                .header(header::COOKIE, cookie.as_str())
                .body(())
                .unwrap();
            let (parts, ()) = request.into_parts();
            let user = auth.authenticate(&parts).await.unwrap();
            assert_eq!(user.map(|u| u.id), Some(alice.id), "{cookie}");
        }
        let only_junk = http::Request::get("/")
            .header(header::COOKIE, format!("chatcore_session={junk}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(auth.authenticate(&only_junk).await.unwrap(), None);
    }

    fn authenticator_over(store: Arc<chatcore::MemoryStore>, config: SessionConfig) -> SessionAuthenticator {
        let fast = SessionConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..config
        };
        SessionAuthenticator::new(store, fast).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn finds_the_token_in_bearer_or_cookie() {
        let auth = authenticator(SessionConfig::default());
        assert_eq!(
            auth.token_from_headers(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            auth.token_from_headers(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            auth.token_from_headers(&headers(&[("authorization", "Basic abc")])),
            None
        );
        let tok = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let mut cookies = HeaderMap::new();
        let value = format!("theme=dark; chatcore_session=\"{tok}\"; other=1");
        cookies.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        assert_eq!(auth.token_from_headers(&cookies), Some(tok.as_str()));
        // Several session cookies: junk is skipped, every plausible one is a candidate.
        let junk = format!("chatcore_session=junk; chatcore_session={tok}; chatcore_session={tok}x");
        cookies.insert(header::COOKIE, HeaderValue::from_str(&junk).unwrap());
        assert_eq!(auth.tokens_from_headers(&cookies), vec![tok.as_str()]);
        assert_eq!(
            auth.token_from_headers(&headers(&[("cookie", "chatcore_sessionx=1")])),
            None
        );
        // An Authorization header wins over the cookie.
        let both = headers(&[("authorization", "Bearer b"), ("cookie", "chatcore_session=c")]);
        assert_eq!(auth.token_from_headers(&both), Some("b"));
        assert!(plausible_token(&URL_SAFE_NO_PAD.encode([7u8; 32])));
        assert!(!plausible_token("short"));
        assert!(!plausible_token(&"+".repeat(43)));
    }

    #[test]
    fn cookie_attributes() {
        let plain = authenticator(SessionConfig::default())
            .session_cookie("t")
            .unwrap();
        assert_eq!(
            plain,
            "chatcore_session=t; HttpOnly; SameSite=Lax; Path=/; Max-Age=1209600"
        );
        let secure = authenticator(SessionConfig {
            secure_cookies: true,
            cookie_name: "sid".into(),
            ..Default::default()
        });
        assert_eq!(secure.cookie_name(), "__Host-sid");
        assert!(
            secure
                .session_cookie("t")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("__Host-sid=t; ")
        );
        assert!(
            secure
                .session_cookie("t")
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(
            secure
                .clearing_cookie()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("__Host-sid=; ")
        );
    }

    #[test]
    fn bad_settings_are_refused_where_they_are_built() {
        let store = || -> Arc<dyn SessionStore> { Arc::new(chatcore::MemoryStore::new()) };
        let fast = SessionConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Default::default()
        };
        for bad in [
            SessionConfig {
                cookie_name: String::new(),
                ..fast.clone()
            },
            SessionConfig {
                cookie_name: "my session".into(),
                ..fast.clone()
            },
            SessionConfig {
                cookie_name: "a;b".into(),
                ..fast.clone()
            },
            SessionConfig {
                session_lifetime: Duration::ZERO,
                ..fast.clone()
            },
            SessionConfig {
                min_password_chars: 0,
                ..fast.clone()
            },
            SessionConfig {
                min_password_chars: 20,
                max_password_chars: 10,
                ..fast.clone()
            },
            SessionConfig {
                argon2_memory_kib: 1,
                ..fast.clone()
            },
            SessionConfig {
                argon2_iterations: 0,
                ..fast.clone()
            },
            SessionConfig {
                max_concurrent_hashes: 0,
                ..fast.clone()
            },
        ] {
            let error = SessionAuthenticator::new(store(), bad.clone()).unwrap_err();
            assert!(matches!(error, Error::Invalid(_)), "{bad:?}: {error}");
        }
        assert!(SessionAuthenticator::new(store(), fast).is_ok());
    }

    #[tokio::test]
    async fn passwords_count_characters_after_nfkc() {
        let auth = authenticator(SessionConfig::default());
        for blank in [
            "        ",
            "\t\t\t\t\n\n\n\n",
            "\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}\u{3000}",
        ] {
            let error = auth.register("blank", blank).await.unwrap_err();
            assert!(error.to_string().contains("whitespace"), "{blank:?}: {error}");
        }
        // Full-width letters are the same password as ASCII ones once normalized.
        auth.register("wide", "ｐａｓｓｗｏｒｄ１").await.unwrap();
        assert!(auth.login("wide", "password1").await.unwrap().is_some());
        assert!(auth.login("wide", "ｐａｓｓｗｏｒｄ１").await.unwrap().is_some());
        // 1,024 two-byte characters are within the limit; 1,025 are not.
        auth.register("long", &"é".repeat(1024)).await.unwrap();
        assert!(auth.login("long", &"é".repeat(1024)).await.unwrap().is_some());
        let error = auth.register("longer", &"é".repeat(1025)).await.unwrap_err();
        assert!(error.to_string().contains("1024 characters"), "{error}");
        assert!(auth.login("long", &"é".repeat(1025)).await.is_err());
    }

    #[tokio::test]
    async fn accounts_and_sessions() {
        let store = Arc::new(chatcore::MemoryStore::new());
        let auth = authenticator_over(
            store.clone(),
            SessionConfig {
                max_concurrent_hashes: 1,
                ..Default::default()
            },
        );
        let alice = auth.register("alice", "password1").await.unwrap();
        assert!(matches!(
            auth.register("alice", "password2").await,
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            auth.register("bob", "short").await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            auth.register("b b", "password1").await,
            Err(Error::Invalid(_))
        ));
        let huge = "p".repeat(2000);
        assert!(matches!(
            auth.register("carol", &huge).await,
            Err(Error::Invalid(_))
        ));
        // Concurrent logins share the one hashing slot and all succeed.
        let logins = (0..4).map(|_| auth.login("alice", "password1"));
        let sessions = futures_util::future::join_all(logins).await;
        let tokens: Vec<String> = sessions
            .into_iter()
            .map(|s| s.unwrap().expect("right password").token)
            .collect();
        for token in &tokens {
            assert_eq!(auth.user_for_token(token).await.unwrap(), Some(alice.clone()));
        }
        assert!(auth.login("alice", "password2").await.unwrap().is_none());
        assert!(auth.login("nobody", "password1").await.unwrap().is_none());
        assert!(auth.login("not a name", "password1").await.unwrap().is_none());
        // A user created without a password cannot log in with any.
        let store_user = chatcore::Store::create_user(&*store, &Username::parse("dave").unwrap())
            .await
            .unwrap();
        assert_eq!(store_user.username.as_str(), "dave");
        assert!(auth.login("dave", "").await.unwrap().is_none());
        // Logout ends one session only, and closes that session's feeds alone.
        let chat = chatcore::ChatService::new(
            store.clone(),
            Arc::new(chatcore::LocalNotifier::default()),
            chatcore::ChatConfig::default(),
        );
        let first = auth.session_for_token(&tokens[0]).await.unwrap().unwrap();
        let second = auth.session_for_token(&tokens[1]).await.unwrap().unwrap();
        let id = |caller: &Authenticated| caller.session.unwrap().id;
        assert_ne!(id(&first), id(&second));
        let mut first_feed = chat.subscribe(&alice, Some(id(&first))).await.unwrap();
        let mut second_feed = chat.subscribe(&alice, Some(id(&second))).await.unwrap();
        auth.logout(&chat, &tokens[0]).await.unwrap();
        assert_eq!(
            first_feed.try_recv(),
            Some(chatcore::Delivery::Closed(chatcore::CloseReason::SessionEnded))
        );
        assert_eq!(second_feed.try_recv(), None);
        assert_eq!(auth.user_for_token(&tokens[0]).await.unwrap(), None);
        assert_eq!(auth.user_for_token(&tokens[1]).await.unwrap(), Some(alice));
    }

    /// Polls `done` every few milliseconds for at most 5 s.
    async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done().await {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} did not happen within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn expired_sessions_are_swept_without_requests_until_the_authenticator_goes() {
        let store = Arc::new(chatcore::MemoryStore::new());
        let notifier = Arc::new(chatcore::LocalNotifier::default());
        let chat = ChatService::new(store.clone(), notifier.clone(), Default::default());
        let auth = authenticator_over(
            store.clone(),
            SessionConfig {
                expired_session_sweep: Duration::from_millis(20),
                ..Default::default()
            },
        );
        let user = auth.register("alice", "password1").await.unwrap();
        let now = chrono::Utc::now();
        let (expired, live) = ([1u8; 32], [2u8; 32]);
        store
            .create_session(&expired, user.id, now - chrono::Duration::seconds(1))
            .await
            .unwrap();
        store
            .create_session(&live, user.id, now + chrono::Duration::hours(1))
            .await
            .unwrap();
        // Asked as of an hour ago, a session is there as long as its row is.
        let an_hour_ago = now - chrono::Duration::hours(1);
        let stored = async |hash: &TokenHash| store.session_user(hash, an_hour_ago).await.unwrap().is_some();
        assert!(stored(&expired).await);

        auth.start(&chat).await.unwrap();
        auth.start(&chat).await.unwrap(); // once only
        assert_eq!(notifier.subscriber_count(UserId::SESSION_REVOCATIONS), 1);
        eventually("the sweep", async || !stored(&expired).await).await;
        assert!(stored(&live).await, "a live session was swept");

        // The tasks end with the authenticator.
        drop(auth);
        eventually("the tasks' end", async || {
            notifier.subscriber_count(UserId::SESSION_REVOCATIONS) == 0
        })
        .await;
    }
}
