//! [`ChatService`]: the message center's logic over a [`Store`] and a [`Notifier`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::SessionId;
use crate::feed::{Connections, Feed, ReadGate};
use crate::metrics::{SendOutcome, ServiceMetrics};
use crate::notify::{Event, Notifier, Position, Recipient};
use crate::policy::{PolicyAction, PolicyChain, PolicyCounts, PolicyFallback, SendPolicy};
use crate::presence::{Presence, PresenceStatus};
use crate::rate::SendRateLimiter;
use crate::store::{
    BlockQuery, Changed, ChangedMessage, InboxPage, InboxRequest, MessageChange, MessagePage, PageRequest,
    Store, StoredEvent, UserQuery,
};
use crate::{Entity, Error, Message, MessageId, NewMessage, Result, User, UserId, Username};

/// Limits and defaults of a [`ChatService`]. Every field is public and documented with its
/// default; start from `ChatConfig::default()` and change what you need.
///
/// ```
/// let config = chatcore::ChatConfig { default_page_size: 20, ..Default::default() };
/// assert_eq!(config.max_body_chars, 4_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatConfig {
    /// Longest message body, in characters after trimming. Default 4,000.
    pub max_body_chars: usize,
    /// Messages per history page when the client asks for no size. Default 15, as in the
    /// original app.
    pub default_page_size: u32,
    /// Largest history page a client may ask for; larger requests are clamped. Default 100.
    pub max_page_size: u32,
    /// Most messages a numbered page may skip (`(page - 1) × limit`); a deeper page is
    /// [`Error::Invalid`] telling the client to page with `before` (a cursor read costs the
    /// same at any depth, an offset read grows with it). `0` allows page 1 only.
    /// Default 3,000.
    pub max_page_offset: u32,
    /// Most events replayed to a reconnecting client; beyond it the client is told to
    /// resync. Messages count against it; read events ride along with them (a client that
    /// missed more than this many messages resyncs whatever else it missed). Default 1,000.
    pub catch_up_limit: u32,
    /// Events read from storage per catch-up page: a connection holds at most one page of
    /// its backlog at a time. Default 100.
    pub catch_up_page: u32,
    /// A catch-up page also ends once its message bodies reach this many bytes (it always
    /// holds at least one event), so a backlog of long messages costs a connection no more
    /// memory than one of short ones. Default 128 KiB. (Smaller pages by count instead cost a
    /// saturated server more reads than it can afford: measured in BENCHMARKS.md.)
    pub catch_up_page_bytes: usize,
    /// Catch-up reads of one user that may run at once (across all their connections on this
    /// process); more wait their turn. Default 1.
    pub catch_up_reads_per_user: usize,
    /// Live connections ([`ChatService::subscribe`]) one user may hold on this process; opening
    /// one more closes their oldest ([`crate::CloseReason::TooManyConnections`]). Default 20.
    pub max_connections_per_user: usize,
    /// Users per directory page (and block list page, [`ChatService::blocked_users`]) when the
    /// client asks for no size. Default 1,000.
    pub default_user_page: u32,
    /// Largest directory (and block list) page a client may ask for; larger requests are
    /// clamped. Default 1,000.
    pub max_user_page: u32,
    /// Longest `Idempotency-Key`, in bytes. Default 255.
    pub max_idempotency_key_len: usize,
    /// Sends a user may make in a burst before [`ChatConfig::send_rate_per_sec`] applies;
    /// beyond it [`Error::RateLimited`]. `0` turns the send rate limit off. Default 100.
    pub send_burst: u32,
    /// Sends per second a user may make after the burst. `0` turns the send rate limit off.
    /// Default 20.
    pub send_rate_per_sec: u32,
    /// Conversations per inbox page when the client asks for no size. Default 20.
    pub default_inbox_page: u32,
    /// Largest inbox page a client may ask for; larger requests are clamped. Default 100.
    pub max_inbox_page: u32,
    /// How long each [`SendPolicy`] may take to answer; past it [`ChatConfig::policy_fallback`]
    /// applies and is counted ([`ChatService::policy_counts`]). Must be more than zero.
    /// Default 500 ms.
    pub policy_deadline: Duration,
    /// What a policy that does not answer in time, or fails, decides. Default
    /// [`PolicyFallback::Allow`].
    pub policy_fallback: PolicyFallback,
    /// Whether the service keeps track of who is online and tells the users who share a
    /// conversation with them (`presence` frames, [`ChatService::presence_of`]): see
    /// [`crate::presence`]. Costs one inbox read per change of a user's presence (never work
    /// per message). Default `false` (the standalone server turns it on).
    pub presence: bool,
    /// How long a user whose last connection closed stays online, so that a reloaded page
    /// (closed and reopened within it) sends no offline/online pair. Default 5 s.
    pub presence_grace: Duration,
    /// How often presence changes are gathered and sent: each watcher gets at most one
    /// `presence` frame per interval, listing every change it can see. More than zero.
    /// Default 1 s.
    pub presence_interval: Duration,
    /// After how long without word from a node (it was killed, or cut off) the other nodes
    /// take its users for offline. Each node speaks at least every third of it. More than
    /// [`ChatConfig::presence_interval`]. Default 30 s.
    pub presence_timeout: Duration,
    /// Typing frames one connection may send in a burst before
    /// [`ChatConfig::typing_rate_per_sec`] applies; extra frames are dropped (the
    /// connection stays open). `0` turns typing off (every typing frame is dropped).
    /// Default 5.
    pub typing_burst: u32,
    /// Typing frames per second one connection may send after the burst. At least 1 when
    /// typing is on. Default 1.
    pub typing_rate_per_sec: u32,
    /// How long a `typing` indication holds unless the typist renews it (its
    /// `expires_in_ms`). More than zero. Default 6 s.
    pub typing_expiry: Duration,
    /// How long after sending a message its sender may still edit it
    /// ([`ChatService::edit_message`]); past it an edit is [`Error::Forbidden`]
    /// ([`crate::Forbidden::EditWindowClosed`]). Deleting is never limited. `None`: no
    /// window, edits are always allowed. When set, more than zero. Default `None`.
    pub edit_window: Option<Duration>,
    /// Messages read from storage per page of an export ([`ChatService::export_page`]): what
    /// an export holds in memory at a time, whatever the size of the history. Default 500.
    pub export_page: u32,
    /// Messages tombstoned per transaction when an account is deleted
    /// ([`ChatService::delete_account`]): what the deletion holds in memory at a time, and
    /// how long each of its transactions keeps other writers waiting. Default 500.
    pub account_deletion_batch: u32,
}

impl ChatConfig {
    /// Checks that every limit can be met: page sizes, catch-up sizes, connection and read
    /// limits of at least 1, a default page within the maximum. A host calls it where it
    /// builds the config (the standalone server does), so a zero from a flag or an environment
    /// variable stops the start instead of being taken for 1.
    ///
    /// ```
    /// let bad = chatcore::ChatConfig { catch_up_page: 0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// assert!(chatcore::ChatConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let positive: [(&str, u64); 13] = [
            ("export_page", u64::from(self.export_page)),
            ("account_deletion_batch", u64::from(self.account_deletion_batch)),
            ("max_body_chars", self.max_body_chars as u64),
            ("default_page_size", u64::from(self.default_page_size)),
            ("max_page_size", u64::from(self.max_page_size)),
            ("catch_up_page", u64::from(self.catch_up_page)),
            ("catch_up_page_bytes", self.catch_up_page_bytes as u64),
            ("catch_up_reads_per_user", self.catch_up_reads_per_user as u64),
            ("max_connections_per_user", self.max_connections_per_user as u64),
            ("max_user_page", u64::from(self.max_user_page)),
            ("max_idempotency_key_len", self.max_idempotency_key_len as u64),
            ("default_inbox_page", u64::from(self.default_inbox_page)),
            ("max_inbox_page", u64::from(self.max_inbox_page)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(Error::invalid(format!("chat config: {name} must be at least 1")));
        }
        if self.edit_window.is_some_and(|window| window.is_zero()) {
            return Err(Error::invalid(
                "chat config: edit_window must be more than zero (leave it unset for no window)",
            ));
        }
        if self
            .edit_window
            .is_some_and(|window| chrono::Duration::from_std(window).is_err())
        {
            return Err(Error::invalid("chat config: edit_window is too long"));
        }
        if self.policy_deadline.is_zero() {
            return Err(Error::invalid(
                "chat config: policy_deadline must be more than zero",
            ));
        }
        if self.presence_interval.is_zero() || self.presence_timeout <= self.presence_interval {
            return Err(Error::invalid(
                "chat config: presence_interval must be more than zero and presence_timeout more than presence_interval",
            ));
        }
        if self.typing_expiry.is_zero() {
            return Err(Error::invalid(
                "chat config: typing_expiry must be more than zero",
            ));
        }
        if self.typing_burst > 0 && self.typing_rate_per_sec == 0 {
            return Err(Error::invalid(
                "chat config: typing_rate_per_sec must be at least 1 while typing is on (typing_burst > 0)",
            ));
        }
        if self.default_page_size > self.max_page_size
            || self.default_user_page > self.max_user_page
            || self.default_inbox_page > self.max_inbox_page
        {
            return Err(Error::invalid(
                "chat config: a default page is larger than its maximum",
            ));
        }
        Ok(())
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_body_chars: 4_000,
            default_page_size: 15,
            max_page_size: 100,
            max_page_offset: 3_000,
            catch_up_limit: 1_000,
            catch_up_page: 100,
            catch_up_page_bytes: 128 * 1024,
            catch_up_reads_per_user: 1,
            max_connections_per_user: 20,
            default_user_page: 1_000,
            max_user_page: 1_000,
            max_idempotency_key_len: 255,
            send_burst: 100,
            send_rate_per_sec: 20,
            default_inbox_page: 20,
            max_inbox_page: 100,
            policy_deadline: Duration::from_millis(500),
            policy_fallback: PolicyFallback::Allow,
            edit_window: None,
            export_page: 500,
            account_deletion_batch: 500,
            presence: false,
            presence_grace: Duration::from_secs(5),
            presence_interval: Duration::from_secs(1),
            presence_timeout: Duration::from_secs(30),
            typing_burst: 5,
            typing_rate_per_sec: 1,
            typing_expiry: Duration::from_secs(6),
        }
    }
}

/// One connection's typing allowance ([`ChatService::typing_gate`]): a token bucket.
#[derive(Debug, Clone)]
pub struct TypingGate {
    burst: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TypingGate {
    /// Takes one token if there is one.
    fn allow(&mut self) -> bool {
        if self.burst <= 0.0 {
            return false;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A client's request to send a message, as received (the service validates it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    /// The recipient's username.
    pub recipient: String,
    /// The body, untrimmed.
    pub body: String,
    /// An optional client-chosen key that makes retries safe.
    pub idempotency_key: Option<String>,
}

/// The result of [`ChatService::send`].
#[derive(Debug)]
pub struct Sent {
    /// The stored message (the earlier one for a replayed idempotency key).
    pub message: Arc<Message>,
    /// `true` when the idempotency key had been used before: nothing was stored or notified.
    pub replayed: bool,
    /// Set when the message was stored but notifying failed (e.g. the broker is down).
    /// The message is safe; connected clients catch up on reconnect.
    pub notify_error: Option<Error>,
}

/// Which page of a message list a client asked for; the service fills in defaults and
/// enforces limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages older than this id.
    pub before: Option<MessageId>,
    /// 1-based page number as in the original app (`?page=N`).
    pub page: Option<u32>,
    /// Page size; defaults to [`ChatConfig::default_page_size`], clamped to
    /// [`ChatConfig::max_page_size`].
    pub limit: Option<u32>,
}

/// Which users a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryQuery {
    /// Name prefix filter.
    pub prefix: Option<String>,
    /// Only names after this one.
    pub after: Option<String>,
    /// Page size; defaults to [`ChatConfig::default_user_page`].
    pub limit: Option<u32>,
}

/// Which page of the caller's blocks a client asked for ([`ChatService::blocked_users`]); paged
/// like the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockListQuery {
    /// Only names after this one (the last name of the previous page).
    pub after: Option<String>,
    /// Page size; defaults to [`ChatConfig::default_user_page`], clamped to
    /// [`ChatConfig::max_user_page`].
    pub limit: Option<u32>,
}

/// Which inbox page a client asked for; the service fills in defaults and enforces limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// Only conversations whose newest message is older than this id (the `next` cursor).
    pub before: Option<MessageId>,
    /// Page size; defaults to [`ChatConfig::default_inbox_page`], clamped to
    /// [`ChatConfig::max_inbox_page`].
    pub limit: Option<u32>,
}

/// Where a reader's marker stands after [`ChatService::mark_read`].
#[derive(Debug)]
pub struct ReadState {
    /// The reader's unread messages in the conversation.
    pub unread: u64,
    /// The newest message the reader has read.
    pub read_up_to: MessageId,
    /// Set when the marker moved but notifying failed: the marker is stored, and connected
    /// clients catch up on reconnect.
    pub notify_error: Option<Error>,
}

/// A connection's way through what it missed, one page at a time
/// ([`ChatService::catch_up_page`]), so its memory never grows with its backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    user: User,
    since: Position,
    after: Position,
    first: bool,
}

impl CatchUp {
    /// Where the next page starts: the last position read (or the `since` it began from).
    pub fn after(&self) -> Position {
        self.after
    }

    /// The `since` this catch-up began from.
    pub fn after_start(&self) -> Position {
        self.since
    }
}

/// One step of a [`CatchUp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUpPage {
    /// The next events, oldest first, at most [`ChatConfig::catch_up_page`]; empty once
    /// caught up, and then [`CatchUp::after`] is where live events take over.
    Events(Vec<Event>),
    /// More than [`ChatConfig::catch_up_limit`] events were missed: the client reloads its
    /// state instead, and live events resume after `resume_after` (the user's newest
    /// position when this was decided).
    Resync {
        /// The position live delivery continues from.
        resume_after: Position,
    },
}

/// The message center: validates input, stores, then notifies. Cheap to clone; hold one per
/// process and share it.
///
/// ```
/// # async fn demo() -> chatcore::Result<()> {
/// use std::sync::Arc;
/// use chatcore::{ChatService, ChatConfig, MemoryStore, LocalNotifier, SendRequest, HistoryQuery};
///
/// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
/// let alice = chat.create_user("alice").await?;
/// chat.create_user("bob").await?;
/// let sent = chat.send(&alice, SendRequest { recipient: "bob".into(), body: "  hi ".into(), ..Default::default() }).await?;
/// assert_eq!(sent.message.body, "hi");
/// let page = chat.conversation(&alice, "bob", HistoryQuery::default()).await?;
/// assert_eq!(page.total, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChatService {
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    config: Arc<ChatConfig>,
    connections: Arc<Connections>,
    catch_up_gate: Arc<ReadGate>,
    send_limiter: Option<Arc<SendRateLimiter>>,
    metrics: Arc<ServiceMetrics>,
    policies: Arc<PolicyChain>,
    presence: Option<Arc<Presence>>,
}

impl std::fmt::Debug for ChatService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ChatService {
    /// A service over `store` and `notifier`. Check `config` with [`ChatConfig::validate`]
    /// where you build it: a zero limit here is taken for 1. Registers its metric handles
    /// with the recorder installed now ([`crate::metrics`]).
    pub fn new(store: Arc<dyn Store>, notifier: Arc<dyn Notifier>, config: ChatConfig) -> Self {
        let presence = config
            .presence
            .then(|| Arc::new(Presence::new(&config, store.clone(), notifier.clone())));
        Self {
            presence,
            store,
            notifier,
            connections: Arc::new(Connections::new(config.max_connections_per_user.max(1))),
            catch_up_gate: Arc::new(ReadGate::new(config.catch_up_reads_per_user)),
            send_limiter: SendRateLimiter::new(config.send_burst, config.send_rate_per_sec).map(Arc::new),
            policies: Arc::new(PolicyChain::new(&config)),
            config: Arc::new(config),
            metrics: Arc::new(ServiceMetrics::register()),
        }
    }

    /// Adds `policy` after the policies added before it: every send asks them in order
    /// ([`SendPolicy`]), each under [`ChatConfig::policy_deadline`]. Add policies while
    /// building the service: clones made before do not see the new one.
    pub fn with_send_policy(mut self, policy: Arc<dyn SendPolicy>) -> Self {
        self.policies = Arc::new(self.policies.with(policy));
        self
    }

    /// How often a policy did not answer in time or failed, so that
    /// [`ChatConfig::policy_fallback`] decided instead, since the service was built (shared
    /// by its clones).
    pub fn policy_counts(&self) -> PolicyCounts {
        self.policies.counts()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The notification transport.
    pub fn notifier(&self) -> &Arc<dyn Notifier> {
        &self.notifier
    }

    /// The limits in force.
    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Creates a user (without a password: accounts with one are the authenticator's, see
    /// [`crate::SessionStore`]). The name is normalized and checked ([`Username::parse`]).
    pub async fn create_user(&self, username: &str) -> Result<User> {
        let username = Username::parse(username)?;
        self.store.create_user(&username).await
    }

    /// Finds a user by name; an impossible name is simply not found.
    pub async fn find_user(&self, username: &str) -> Result<Option<User>> {
        match Username::parse(username) {
            Ok(name) => self.store.find_user(&name).await,
            Err(_) => Ok(None),
        }
    }

    /// The directory as `viewer` sees it: everyone else, sorted by name.
    pub async fn users(&self, viewer: &User, query: DirectoryQuery) -> Result<Vec<User>> {
        let (after, limit) = self.user_page(query.after, query.limit)?;
        let query = UserQuery {
            exclude: Some(viewer.id),
            prefix: query.prefix.unwrap_or_default(),
            after,
            limit,
        };
        self.store.list_users(&query).await
    }

    /// Blocks the user named `name` for `user`: while the block stands, neither may message the
    /// other nor edit a message to the other ([`Error::Forbidden`] with
    /// [`crate::Forbidden::Blocked`], nothing stored or notified), and typing frames between
    /// them are dropped. Both directions are refused, whoever blocked: a blocker who wants to
    /// write again unblocks first. Both still read their history and may delete their own
    /// messages. Idempotent. Takes effect in the store's write order: a send that returns after
    /// this call returned was refused. Returns the blocked user.
    ///
    /// A block is durable state of the two users, not an event: no frame is sent to anyone
    /// and nothing appears in the event streams (a client learns of it from its own request,
    /// and the blocked user from a refused send).
    ///
    /// Errors: [`Error::NotFound`] ([`Entity::User`]) for an unknown or impossible name;
    /// [`Error::Invalid`] for `user` themself.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, Error, Forbidden, LocalNotifier, MemoryStore, SendRequest};
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let alice = chat.create_user("alice").await?;
    /// let bob = chat.create_user("bob").await?;
    /// chat.block(&alice, "bob").await?;
    /// let hi = |to: &str| SendRequest { recipient: to.into(), body: "hi".into(), ..Default::default() };
    /// assert!(matches!(chat.send(&bob, hi("alice")).await, Err(Error::Forbidden(Forbidden::Blocked))));
    /// assert!(matches!(chat.send(&alice, hi("bob")).await, Err(Error::Forbidden(Forbidden::Blocked))));
    /// chat.unblock(&alice, "bob").await?;
    /// assert!(chat.send(&bob, hi("alice")).await.is_ok());
    /// # Ok(()) }
    /// ```
    pub async fn block(&self, user: &User, name: &str) -> Result<User> {
        self.set_block(user, name, true).await
    }

    /// Ends `user`'s block of the user named `name` ([`ChatService::block`]); messages flow
    /// again unless that user blocks `user` too. Idempotent: ending a block that does not
    /// exist succeeds. Errors as for [`ChatService::block`].
    pub async fn unblock(&self, user: &User, name: &str) -> Result<User> {
        self.set_block(user, name, false).await
    }

    async fn set_block(&self, user: &User, name: &str, on: bool) -> Result<User> {
        let name = Username::parse(name).map_err(|_| Error::NotFound(Entity::User))?;
        if name.key() == user.username.key() {
            return Err(Error::invalid("you cannot block yourself"));
        }
        self.store.set_block(user.id, &name, on).await
    }

    /// The users `user` blocks, sorted by name (without regard to case), paged like the
    /// directory: after [`BlockListQuery::after`], at most [`ChatConfig::max_user_page`].
    pub async fn blocked_users(&self, user: &User, query: BlockListQuery) -> Result<Vec<User>> {
        let (after, limit) = self.user_page(query.after, query.limit)?;
        self.store
            .blocked_users(user.id, &BlockQuery { after, limit })
            .await
    }

    /// Sends a message from `sender`: applies the send rate limit, trims and checks the body,
    /// asks the send policies ([`ChatService::with_send_policy`]), stores it durably, and only
    /// then notifies each distinct participant once.
    ///
    /// Errors: [`Error::RateLimited`] past [`ChatConfig::send_burst`] /
    /// [`ChatConfig::send_rate_per_sec`]; [`Error::Invalid`] for a body that is empty once
    /// whitespace and invisible characters are set aside, too long, or holding control
    /// characters other than newline and tab (a policy's rewrite included);
    /// [`Error::Rejected`] when a policy refused it; [`Error::NotFound`] for an unknown recipient;
    /// [`Error::Forbidden`] ([`crate::Forbidden::Blocked`]) while a block stands between the
    /// two, whoever blocked ([`ChatService::block`]); [`Error::Unprocessable`] for an
    /// idempotency key already used with another recipient or body.
    pub async fn send(&self, sender: &User, request: SendRequest) -> Result<Sent> {
        // The delivery latency of the message's notification is measured from here.
        let accepted_at = Instant::now();
        let sent = self.store_and_notify(sender, request, accepted_at).await;
        self.metrics.send(match &sent {
            Ok(sent) if sent.replayed => SendOutcome::Replayed,
            Ok(_) => SendOutcome::Stored,
            Err(error) => SendOutcome::of_error(error),
        });
        sent
    }

    async fn store_and_notify(
        &self,
        sender: &User,
        request: SendRequest,
        accepted_at: Instant,
    ) -> Result<Sent> {
        if let Some(limiter) = &self.send_limiter {
            limiter
                .check(sender.id)
                .map_err(|retry_after| Error::RateLimited { retry_after })?;
        }
        let body = crate::text::message_body(&request.body, self.config.max_body_chars)?;
        let recipient = Username::parse(request.recipient).map_err(|_| Error::NotFound(Entity::User))?;
        let idempotency_key = match request.idempotency_key {
            Some(key) if key.is_empty() => return Err(Error::invalid("Idempotency-Key must not be empty")),
            Some(key) if key.len() > self.config.max_idempotency_key_len => {
                return Err(Error::invalid(format!(
                    "Idempotency-Key must be at most {} bytes",
                    self.config.max_idempotency_key_len
                )));
            }
            other => other,
        };
        let body = if self.policies.is_empty() {
            body
        } else {
            self.policies
                .decide(PolicyAction::Send, sender, &recipient, body)
                .await?
        };
        let keyed_body = idempotency_key.as_ref().map(|_| body.clone());
        let inserted = self
            .store
            .insert_message(NewMessage {
                sender: sender.clone(),
                recipient: recipient.clone(),
                body,
                idempotency_key,
            })
            .await?;
        // The rule payment APIs follow: a key names one request; replaying it for another
        // would silently drop the new message.
        if inserted.replayed
            && (inserted.message.recipient != recipient
                || Some(&inserted.message.body) != keyed_body.as_ref())
        {
            return Err(Error::Unprocessable(
                "Idempotency-Key was already used for a different message".to_owned(),
            ));
        }
        let message = Arc::new(inserted.message);
        let mut notify_error = None;
        if !inserted.replayed {
            let sender_end = Recipient {
                user: sender.id,
                previous: Some(inserted.sender_previous),
            };
            let recipient_end = Recipient {
                user: inserted.recipient_id,
                previous: Some(inserted.recipient_previous),
            };
            let both = [sender_end, recipient_end];
            let recipients: &[Recipient] = if sender.id == inserted.recipient_id {
                &both[..1]
            } else {
                &both
            };
            // Rendered once: every socket of both users, on every node, writes these bytes.
            let event = Event::message_accepted_at(&message, Some(accepted_at));
            if let Err(error) = self.notifier.publish(recipients, &event).await {
                tracing::warn!(%error, message_id = %message.id, "message stored but not notified");
                notify_error = Some(error);
            }
        }
        Ok(Sent {
            message,
            replayed: inserted.replayed,
            notify_error,
        })
    }

    /// Replaces the body of message `id`, which `editor` sent: trimmed and checked like a
    /// send's ([`ChatConfig::max_body_chars`]), asked of the send policies as a
    /// [`PolicyAction::Edit`], then stored with [`Message::edited`] set. Both participants'
    /// connections get an `edit` event, durable and in order with their other events; unread
    /// counts do not change. Returns the message as edited.
    ///
    /// Errors: [`Error::Invalid`] for a body a send would refuse; [`Error::NotFound`]
    /// ([`Entity::Message`]) when `editor` neither sent nor received `id` (the same answer
    /// as a missing id), and for a message already deleted; [`Error::Forbidden`] when
    /// `editor` only received it ([`crate::Forbidden::NotTheSender`]), a block stands between
    /// the two participants ([`crate::Forbidden::Blocked`], either direction), or it is older
    /// than [`ChatConfig::edit_window`] ([`crate::Forbidden::EditWindowClosed`]);
    /// [`Error::Rejected`] when a policy refused the new body.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, Error, LocalNotifier, MemoryStore, SendRequest};
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let alice = chat.create_user("alice").await?;
    /// let bob = chat.create_user("bob").await?;
    /// let sent = chat.send(&alice, SendRequest { recipient: "bob".into(), body: "helo".into(), ..Default::default() }).await?;
    /// let edited = chat.edit_message(&alice, sent.message.id, " hello ").await?;
    /// assert_eq!((edited.body.as_str(), edited.edited.is_some()), ("hello", true));
    /// assert!(matches!(chat.edit_message(&bob, sent.message.id, "hi").await, Err(Error::Forbidden(_))));
    /// # Ok(()) }
    /// ```
    pub async fn edit_message(&self, editor: &User, id: MessageId, body: &str) -> Result<Message> {
        let body = crate::text::message_body(body, self.config.max_body_chars)?;
        let body = if self.policies.is_empty() {
            body
        } else {
            // The policies are told the recipient: one more read, only for hosts with policies.
            let message = self.message(editor, id).await?;
            if message.sender != editor.username {
                return Err(Error::Forbidden(crate::Forbidden::NotTheSender));
            }
            self.policies
                .decide(PolicyAction::Edit, editor, &message.recipient, body)
                .await?
        };
        let not_before = self
            .config
            .edit_window
            .and_then(|window| chrono::Duration::from_std(window).ok())
            .map(|window| crate::now_micros() - window);
        let change = MessageChange::Edit { body, not_before };
        self.change_and_notify(editor, id, &change).await
    }

    /// Deletes message `id`, which `sender` sent: its body is removed from storage for good
    /// and it stays in every history as a tombstone ([`Message::into_tombstone`]). Both
    /// participants' connections get a `delete` event, durable and in order; unread counts do
    /// not change. Deleting it again changes nothing and succeeds. Returns the tombstone.
    ///
    /// Errors: [`Error::NotFound`] ([`Entity::Message`]) when `sender` neither sent nor
    /// received `id`; [`Error::Forbidden`] ([`crate::Forbidden::NotTheSender`]) when they
    /// only received it.
    pub async fn delete_message(&self, sender: &User, id: MessageId) -> Result<Message> {
        self.change_and_notify(sender, id, &MessageChange::Delete).await
    }

    async fn change_and_notify(
        &self,
        sender: &User,
        id: MessageId,
        change: &MessageChange,
    ) -> Result<Message> {
        let changed = self.store.change_message(sender.id, id, change).await?;
        if let Err(error) = self.notify_change(sender.id, &changed, change).await {
            // Stored: connected clients catch up on reconnect.
            tracing::warn!(%error, "message change stored but not notified");
        }
        Ok(changed.message)
    }

    /// Tells both participants of `changed` (when something changed) on every node.
    async fn notify_change(&self, sender: UserId, changed: &Changed, change: &MessageChange) -> Result<()> {
        let Some(event) = &changed.event else {
            return Ok(());
        };
        let stored = ChangedMessage {
            position: event.position,
            message: changed.message.clone(),
        };
        let rendered = match change {
            MessageChange::Edit { .. } => Event::edit(&stored),
            MessageChange::Delete => Event::delete(&stored),
        };
        let sender_end = Recipient {
            user: sender,
            previous: Some(event.sender_previous),
        };
        let recipient_end = Recipient {
            user: event.recipient_id,
            previous: Some(event.recipient_previous),
        };
        let both = [sender_end, recipient_end];
        let recipients: &[Recipient] = if sender == event.recipient_id {
            &both[..1]
        } else {
            &both
        };
        self.notifier.publish(recipients, &rendered).await
    }

    /// Deletes `user`'s account for good (what `DELETE /api/v1/auth/account` and the
    /// standalone server's `delete-user` do once they have checked who asks):
    ///
    /// 1. [`Store::remove_user`]: the account is marked removed in one transaction, with its
    ///    password and every session (with a backend that keeps sessions); from then on no
    ///    send of theirs is stored ([`crate::Forbidden::AccountRemoved`]), they are left out
    ///    of the directory, and the name stays theirs: nobody can register it again and
    ///    every history still names them.
    /// 2. Every connection of theirs closes on every node, and every node's session cache
    ///    forgets their sessions ([`ChatService::end_all_sessions`]).
    /// 3. Every message they sent becomes a tombstone, as [`ChatService::delete_message`]
    ///    makes one (body gone from storage, a durable `delete` event to both participants),
    ///    in transactions of [`ChatConfig::account_deletion_batch`] messages
    ///    ([`Store::delete_sent_messages`]), so a history of any length is never held in
    ///    memory. Messages they received are left as they are: they are their peers' too.
    ///
    /// Safe to run again after a failure (each step is idempotent), and under concurrent
    /// sends of the user: once it returns, none of their messages is left with a body.
    /// Returns how many messages were tombstoned.
    ///
    /// Errors: [`Error::NotFound`] for an unknown user; storage errors (run it again). A
    /// notifier that cannot reach other nodes does not fail it (their connections then close
    /// by the session recheck of the web layer, and clients catch up on the tombstones).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, Error, LocalNotifier, MemoryStore, SendRequest};
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let alice = chat.create_user("alice").await?;
    /// let bob = chat.create_user("bob").await?;
    /// let hi = SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() };
    /// chat.send(&alice, hi.clone()).await?;
    /// assert_eq!(chat.delete_account(&alice).await?, 1);
    /// let history = chat.conversation(&bob, "alice", Default::default()).await?;
    /// assert!(history.messages[0].deleted && history.messages[0].body.is_empty());
    /// assert!(matches!(chat.send(&alice, hi).await, Err(Error::Forbidden(_))));
    /// assert!(chat.create_user("Alice").await.is_err(), "the name stays reserved");
    /// # Ok(()) }
    /// ```
    pub async fn delete_account(&self, user: &User) -> Result<u64> {
        self.store.remove_user(user.id).await?;
        if let Err(error) = self.end_all_sessions(user).await {
            tracing::warn!(%error, user = %user.username, "account removed but its connections were not told");
        }
        let batch = self.config.account_deletion_batch.max(1);
        let mut after = MessageId(0);
        let mut deleted = 0u64;
        loop {
            let changed = self.store.delete_sent_messages(user.id, after, batch).await?;
            let Some(last) = changed.last() else { break };
            after = last.message.id;
            deleted += changed.len() as u64;
            for one in &changed {
                if let Err(error) = self.notify_change(user.id, one, &MessageChange::Delete).await {
                    tracing::warn!(%error, message_id = %one.message.id, "tombstone stored but not notified");
                }
            }
        }
        Ok(deleted)
    }

    /// One page of `user`'s export: every message they sent or received (tombstones
    /// included), newest first, at most [`ChatConfig::export_page`], older than `before`
    /// (the oldest id of the previous page; `None` to start). An empty page ends the export.
    /// A host streams the pages one after the other, so an export of any size holds one page
    /// in memory; messages stored after the export started are not in it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
    /// let config = ChatConfig { export_page: 2, ..Default::default() };
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), config);
    /// let alice = chat.create_user("alice").await?;
    /// chat.create_user("bob").await?;
    /// for body in ["1", "2", "3"] {
    ///     chat.send(&alice, SendRequest { recipient: "bob".into(), body: body.into(), ..Default::default() }).await?;
    /// }
    /// let first = chat.export_page(&alice, None).await?;
    /// let second = chat.export_page(&alice, first.last().map(|m| m.id)).await?;
    /// assert_eq!((first.len(), second.len()), (2, 1));
    /// assert!(chat.export_page(&alice, second.last().map(|m| m.id)).await?.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn export_page(&self, user: &User, before: Option<MessageId>) -> Result<Vec<Message>> {
        let page = PageRequest {
            before,
            offset: 0,
            limit: self.config.export_page.max(1),
        };
        Ok(self.store.user_messages(user.id, &page).await?.messages)
    }

    /// A page of the conversation between `viewer` and `other`, newest first.
    pub async fn conversation(&self, viewer: &User, other: &str, query: HistoryQuery) -> Result<MessagePage> {
        let other = Username::parse(other).map_err(|_| Error::NotFound(Entity::User))?;
        let page = self.page_request(query)?;
        self.store.conversation_page(viewer.id, &other, &page).await
    }

    /// A page of every message `viewer` sent or received, newest first.
    pub async fn all_messages(&self, viewer: &User, query: HistoryQuery) -> Result<MessagePage> {
        let page = self.page_request(query)?;
        self.store.user_messages(viewer.id, &page).await
    }

    /// One message, if `viewer` sent or received it; [`Error::NotFound`] otherwise.
    pub async fn message(&self, viewer: &User, id: MessageId) -> Result<Message> {
        self.store
            .message_for(viewer.id, id)
            .await?
            .ok_or(Error::NotFound(Entity::Message))
    }

    /// A page of `viewer`'s inbox: their conversations, latest activity first, with unread
    /// counts, both read markers and the unread total.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, InboxQuery, LocalNotifier, MemoryStore, SendRequest};
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let alice = chat.create_user("alice").await?;
    /// let bob = chat.create_user("bob").await?;
    /// let sent = chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
    /// let inbox = chat.inbox(&bob, InboxQuery::default()).await?;
    /// assert_eq!((inbox.unread_total, inbox.conversations[0].unread), (1, 1));
    /// let read = chat.mark_read(&bob, "alice", sent.message.id).await?;
    /// assert_eq!(read.unread, 0);
    /// # Ok(()) }
    /// ```
    pub async fn inbox(&self, viewer: &User, query: InboxQuery) -> Result<InboxPage> {
        let limit = self.clamp(
            query.limit,
            self.config.default_inbox_page,
            self.config.max_inbox_page,
        )?;
        let request = InboxRequest {
            before: query.before,
            limit,
        };
        self.store.inbox(viewer.id, &request).await
    }

    /// Marks `reader`'s conversation with `peer` read up to message `up_to`. The marker only
    /// moves forward (an older id changes nothing); when it moves, both users' connections
    /// get a `read` event, durable and in order with their messages.
    ///
    /// Errors: [`Error::NotFound`] for an unknown peer ([`Entity::User`]) and for an id that
    /// is not a message between the two ([`Entity::Message`]).
    pub async fn mark_read(&self, reader: &User, peer: &str, up_to: MessageId) -> Result<ReadState> {
        let peer = Username::parse(peer).map_err(|_| Error::NotFound(Entity::User))?;
        let marked = self.store.mark_read(reader, &peer, up_to).await?;
        let mut notify_error = None;
        if let Some(moved) = &marked.moved {
            let reader_end = Recipient {
                user: reader.id,
                previous: Some(moved.reader_previous),
            };
            let peer_end = Recipient {
                user: moved.peer_id,
                previous: Some(moved.peer_previous),
            };
            let both = [reader_end, peer_end];
            let recipients: &[Recipient] = if reader.id == moved.peer_id {
                &both[..1]
            } else {
                &both
            };
            if let Err(error) = self
                .notifier
                .publish(recipients, &Event::read(&moved.marker))
                .await
            {
                tracing::warn!(%error, position = %moved.marker.position, "read marker stored but not notified");
                notify_error = Some(error);
            }
        }
        Ok(ReadState {
            unread: marked.unread,
            read_up_to: marked.read_up_to,
            notify_error,
        })
    }

    /// Starts a catch-up of what `user` missed after `since` (a position, or a message id:
    /// they are the same numbers). Read it with [`ChatService::catch_up_page`].
    pub fn catch_up(&self, user: &User, since: Position) -> CatchUp {
        self.metrics.catch_ups.increment(1);
        CatchUp {
            user: user.clone(),
            since,
            after: since,
            first: true,
        }
    }

    /// The next page of a catch-up: at most [`ChatConfig::catch_up_page`] events after
    /// [`CatchUp::after`], oldest first, or [`CatchUpPage::Resync`] when the whole backlog is
    /// more than [`ChatConfig::catch_up_limit`] (decided on the first page). At most
    /// [`ChatConfig::catch_up_reads_per_user`] of one user's reads run at once.
    ///
    /// A `since` beyond the user's newest event is brought back to it, so live events that
    /// follow are not taken for ones already seen.
    pub async fn catch_up_page(&self, catch_up: &mut CatchUp) -> Result<CatchUpPage> {
        let user = catch_up.user.id;
        let _turn = self.catch_up_gate.enter(user).await?;
        let limit = self.config.catch_up_limit;
        let first = std::mem::take(&mut catch_up.first);
        let want = if first {
            self.config.catch_up_page.max(1).min(limit.saturating_add(1))
        } else {
            self.config.catch_up_page.max(1)
        };
        let mut events = self.store.events_after(user, catch_up.after, want).await?;
        if first {
            let too_many = if events.len() > limit as usize {
                true
            } else if events.len() == want as usize {
                // A full first page: is the `limit + 1`-th newest event still after `since`?
                let probe = PageRequest {
                    before: None,
                    offset: limit,
                    limit: 1,
                };
                let page = self.store.user_messages(user, &probe).await?;
                page.messages
                    .first()
                    .is_some_and(|m| Position::from(m.id) > catch_up.after)
            } else {
                false
            };
            if too_many {
                let resume_after = self.store.latest_position(user).await?;
                catch_up.after = resume_after;
                self.metrics.resyncs.increment(1);
                return Ok(CatchUpPage::Resync { resume_after });
            }
        }
        let mut bytes = 0usize;
        let keep = events
            .iter()
            .take_while(|event| {
                let within = bytes < self.config.catch_up_page_bytes;
                bytes = bytes.saturating_add(event.body_len());
                within
            })
            .count()
            .max(1);
        events.truncate(keep);
        self.metrics.catch_up_events.increment(events.len() as u64);
        match events.last() {
            Some(last) => catch_up.after = last.position(),
            None => {
                let latest = self.store.latest_position(user).await?;
                catch_up.after = catch_up.after.min(latest);
            }
        }
        Ok(CatchUpPage::Events(
            events.iter().map(StoredEvent::render).collect(),
        ))
    }

    /// The position of `user`'s newest durable event: where a connection that asks for no
    /// backlog starts.
    pub async fn latest_position(&self, user: &User) -> Result<Position> {
        self.store.latest_position(user.id).await
    }

    /// Whether this service can serve now, for a readiness probe: the notification
    /// transport is connected ([`Notifier::is_ready`]) and the store answers a trivial read
    /// ([`Store::check_ready`]). The caller bounds the wait (the store's own deadline may be
    /// longer than a probe's).
    ///
    /// Errors: [`Error::Unavailable`] naming `notifications` when the transport is not
    /// connected, otherwise what the store's read failed with.
    pub async fn check_ready(&self) -> Result<()> {
        if !self.notifier.is_ready() {
            return Err(Error::notifications_unavailable(
                "the notification transport is not connected",
            ));
        }
        self.store.check_ready().await
    }

    /// Subscribes one connection to `user`'s live events. `session` is the login session the
    /// connection was opened with, if any: ending it ([`ChatService::end_session`]) closes
    /// the connection. Opening more than [`ChatConfig::max_connections_per_user`] closes the
    /// user's oldest connection on this process.
    pub async fn subscribe(&self, user: &User, session: Option<SessionId>) -> Result<Feed> {
        let subscription = self.notifier.subscribe(user.id).await?;
        let presence = self
            .presence
            .as_ref()
            .map(|presence| presence.connect(user.id, &user.username));
        Ok(Feed::new(
            subscription,
            &self.connections,
            user.id,
            session,
            presence,
        ))
    }

    /// Starts keeping track of presence now (when [`ChatConfig::presence`] is on), instead
    /// of with the first connection: the node then hears the other nodes' accounts at once,
    /// so its first inbox answers already say who is online elsewhere. Call it once the
    /// runtime is up; the standalone server does at start. Does nothing when presence is
    /// off or already started.
    pub fn start_presence(&self) {
        if let Some(presence) = &self.presence {
            presence.start();
        }
    }

    /// Whether presence is kept ([`ChatConfig::presence`]).
    pub fn presence_enabled(&self) -> bool {
        self.presence.is_some()
    }

    /// `user`'s presence as this node knows the deployment's: online while one of their
    /// connections is open on any node (within [`ChatConfig::presence_grace`] after the last
    /// closed, and [`ChatConfig::presence_timeout`] after a node stopped answering), and
    /// when they were last seen. `None` when presence is off. One lookup in a sharded
    /// table, no I/O. Callers show it only to users who share a conversation with `user`
    /// ([`ChatService::inbox`] entries, [`ChatService::presence_in_directory`]).
    pub fn presence_of(&self, user: &Username) -> Option<PresenceStatus> {
        self.presence.as_ref().map(|presence| presence.status(user))
    }

    /// The presence of each of `users` (a directory page `viewer` reads) that `viewer` may
    /// see: those they share a conversation with, in the same order; `None` for the others
    /// and for everyone when presence is off. One store read
    /// ([`Store::conversation_peers`]): an indexed lookup per listed user, whatever the
    /// number of the viewer's conversations.
    pub async fn presence_in_directory(
        &self,
        viewer: &User,
        users: &[User],
    ) -> Result<Vec<Option<PresenceStatus>>> {
        let Some(presence) = &self.presence else {
            return Ok(vec![None; users.len()]);
        };
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
        let shared: std::collections::HashSet<UserId> = self
            .store
            .conversation_peers(viewer.id, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(users
            .iter()
            .map(|user| shared.contains(&user.id).then(|| presence.status(&user.username)))
            .collect())
    }

    /// A connection's typing allowance: [`ChatConfig::typing_burst`] frames, then
    /// [`ChatConfig::typing_rate_per_sec`]. Make one per connection and pass it to every
    /// [`ChatService::typing`] call of that connection.
    pub fn typing_gate(&self) -> TypingGate {
        TypingGate {
            burst: f64::from(self.config.typing_burst),
            rate: f64::from(self.config.typing_rate_per_sec),
            tokens: f64::from(self.config.typing_burst),
            updated: Instant::now(),
        }
    }

    /// A typing frame from one of `from`'s connections: `from` is typing to `to` (or,
    /// with `stop`, stopped). When the connection's `gate` allows it and
    /// [`ChatService::typing_allowed`] says so, `to`'s connections (on every node) get
    /// `{"type":"typing","from":..,"expires_in_ms":..}` ([`crate::Event::typing`]; 0 for a
    /// stop). Returns whether it was relayed. Anything else is dropped silently, never an
    /// error to the client: over the rate, typing off, an impossible or unknown name, no
    /// conversation between the two, typing to oneself. Nothing is stored.
    ///
    /// The indication ends when it expires, when a stop frame comes, or when the typist's
    /// message arrives: clients clear it on a `message` frame from `from` (no frame is sent
    /// for that).
    ///
    /// Errors: only a failure to read the store or to publish.
    pub async fn typing(&self, from: &User, gate: &mut TypingGate, to: &str, stop: bool) -> Result<bool> {
        if !gate.allow() {
            return Ok(false);
        }
        let Ok(to) = Username::parse(to) else {
            return Ok(false);
        };
        let Some(peer) = self.typing_allowed(from, &to).await? else {
            return Ok(false);
        };
        let expires_in_ms = if stop {
            0
        } else {
            u64::try_from(self.config.typing_expiry.as_millis()).unwrap_or(u64::MAX)
        };
        self.notifier
            .publish(
                &[Recipient::ephemeral(peer)],
                &Event::typing(&from.username, expires_in_ms),
            )
            .await?;
        Ok(true)
    }

    /// Whether `from` may tell `to` they are typing, and `to`'s id if so: `to` exists, is not
    /// `from`, the two share a conversation (at least one message between them), and no block
    /// stands between them in either direction ([`ChatService::block`]). Every rule on who
    /// may see whom typing joins here. One storage read ([`Store::reachable_peer`]).
    pub async fn typing_allowed(&self, from: &User, to: &Username) -> Result<Option<UserId>> {
        if to.key() == from.username.key() {
            return Ok(None);
        }
        self.store.reachable_peer(from.id, to).await
    }

    /// How many live connections `user` holds on this process.
    pub fn connection_count(&self, user: &User) -> usize {
        self.connections.count(user.id)
    }

    /// Whether the user `user` holds at least one live connection
    /// ([`ChatService::subscribe`]) on this process: a host's push consumer asks it to notify
    /// only those who would not see the event live. One lookup in a sharded table, no I/O.
    ///
    /// Per process: with several server processes behind a notifier that carries events
    /// between them, a user connected to another process is not connected *here*; the
    /// deployment-wide answer is [`ChatService::presence_of`] (with [`ChatConfig::presence`]
    /// on), which lags by up to [`ChatConfig::presence_interval`] and holds for
    /// [`ChatConfig::presence_grace`] after the last connection closed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
    /// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let bob = chat.create_user("bob").await?;
    /// assert!(!chat.is_connected_here(bob.id));
    /// let tab = chat.subscribe(&bob, None).await?;
    /// assert!(chat.is_connected_here(bob.id));
    /// drop(tab);
    /// assert!(!chat.is_connected_here(bob.id));
    /// # Ok(()) }
    /// ```
    pub fn is_connected_here(&self, user: UserId) -> bool {
        self.connections.count(user) > 0
    }

    /// Closes every connection opened with `session` of `user`, on every node (logout,
    /// expiry, account removal), and tells every node's session cache (the event also goes to
    /// [`UserId::SESSION_REVOCATIONS`]). Fails when the notifier cannot reach other nodes.
    pub async fn end_session(&self, user: &User, session: SessionId) -> Result<()> {
        let recipients = [
            Recipient::ephemeral(user.id),
            Recipient::ephemeral(UserId::SESSION_REVOCATIONS),
        ];
        self.notifier
            .publish(&recipients, &Event::session_ended(session))
            .await
    }

    /// Closes every connection of `user` on every node, whatever session they were opened
    /// with, and makes every node's session cache start over ([`SessionId::ALL`]): what
    /// follows ending all of a user's sessions in the store (account removal, a new password,
    /// an operator's "revoke every session"). Fails when the notifier cannot reach other
    /// nodes.
    pub async fn end_all_sessions(&self, user: &User) -> Result<()> {
        self.end_session(user, SessionId::ALL).await
    }

    fn page_request(&self, query: HistoryQuery) -> Result<PageRequest> {
        let limit = self.clamp(
            query.limit,
            self.config.default_page_size,
            self.config.max_page_size,
        )?;
        let offset = match query.page {
            None => 0,
            Some(0) => return Err(Error::invalid("page numbers start at 1")),
            Some(page) => match (page - 1).checked_mul(limit) {
                Some(offset) if offset <= self.config.max_page_offset => offset,
                _ => {
                    return Err(Error::invalid(format!(
                        "page {page} is too deep (at most {} messages may be skipped): page with ?before=<id of the oldest message you have> instead",
                        self.config.max_page_offset
                    )));
                }
            },
        };
        Ok(PageRequest {
            before: query.before,
            offset,
            limit,
        })
    }

    /// A page of a list of users (the directory, the block list): the name to start after
    /// (none when empty) and the size, within [`ChatConfig::max_user_page`].
    fn user_page(&self, after: Option<String>, limit: Option<u32>) -> Result<(Option<Username>, u32)> {
        let after = match after {
            Some(after) if !after.is_empty() => Some(Username::parse(after)?),
            _ => None,
        };
        let limit = self.clamp(limit, self.config.default_user_page, self.config.max_user_page)?;
        Ok((after, limit))
    }

    fn clamp(&self, asked: Option<u32>, default: u32, max: u32) -> Result<u32> {
        match asked {
            None => Ok(default.min(max).max(1)),
            Some(0) => Err(Error::invalid("limit must be at least 1")),
            Some(n) => Ok(n.min(max)),
        }
    }
}
