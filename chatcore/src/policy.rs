//! Send policies: the host's say on a message before it is stored (spam filters, moderation,
//! a paywall). [`crate::ChatService::with_send_policy`] adds one; several run in the order they
//! were added.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{BoxError, Error, Result, User, Username};

/// What a [`SendPolicy`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyAction {
    /// A new message ([`crate::ChatService::send`]).
    Send,
    /// A new body for a message its sender edits ([`crate::ChatService::edit_message`]); the
    /// draft's recipient is the message's.
    Edit,
}

/// A message about to be stored, as a [`SendPolicy`] sees it: the body is already trimmed and
/// checked ([`crate::message_body`]), and is the previous policy's rewrite if it made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Draft<'a> {
    /// Why the policy is asked.
    pub action: PolicyAction,
    /// Who sends it (authenticated).
    pub sender: &'a User,
    /// Who it is for, as the sender wrote the name (not yet looked up: an unknown recipient
    /// is refused after the policies, by the store).
    pub recipient: &'a Username,
    /// The body that would be stored.
    pub body: &'a str,
}

impl<'a> Draft<'a> {
    /// A draft of a new message, for a host that tests its policy on its own.
    pub fn send(sender: &'a User, recipient: &'a Username, body: &'a str) -> Self {
        Self {
            action: PolicyAction::Send,
            sender,
            recipient,
            body,
        }
    }
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store the message as it is (later policies still have their say).
    Allow,
    /// Refuse it: nothing is stored nor notified, and the sender gets [`Error::Rejected`].
    Reject(Rejection),
    /// Store this body instead. It is checked again by the rules of a send (trimmed, not
    /// empty, no control characters, at most [`crate::ChatConfig::max_body_chars`]); one that
    /// fails them fails the send with [`Error::Invalid`]. Later policies see the new body.
    Rewrite(String),
}

/// Why a message was refused, and how the sender is told: a web layer answers
/// [`RejectionKind::Forbidden`] with 403 and [`RejectionKind::Unprocessable`] with 422, with
/// `reason` as the error text.
///
/// ```
/// use chatcore::{Rejection, RejectionKind};
/// let no = Rejection::forbidden("links are for subscribers");
/// assert_eq!((no.kind, no.reason.as_str()), (RejectionKind::Forbidden, "links are for subscribers"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// How the refusal is reported.
    pub kind: RejectionKind,
    /// Why, for the sender to read.
    pub reason: String,
}

impl Rejection {
    /// The sender may not send this (HTTP 403).
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Forbidden,
            reason: reason.into(),
        }
    }

    /// The message itself is unacceptable (HTTP 422).
    pub fn unprocessable(reason: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Unprocessable,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The two ways a refusal is reported ([`Rejection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The sender may not send this message (HTTP 403).
    Forbidden,
    /// The message is unacceptable as written (HTTP 422).
    Unprocessable,
}

/// What applies when a policy does not answer within [`crate::ChatConfig::policy_deadline`]
/// or fails ([`PolicyCounts`] counts both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyFallback {
    /// Go on as if the policy allowed the message: an outage of the policy never stops the
    /// chat. The default.
    #[default]
    Allow,
    /// Refuse the message ([`RejectionKind::Forbidden`]): nothing unchecked is ever stored.
    Reject,
}

/// The host's say on a message before it is stored, added with
/// [`crate::ChatService::with_send_policy`]. Each call runs under
/// [`crate::ChatConfig::policy_deadline`]; an error or a late answer is replaced by
/// [`crate::ChatConfig::policy_fallback`] and counted ([`crate::ChatService::policy_counts`]).
/// The service awaits it on the send's task: a policy that blocks must move its work off the
/// async runtime (`tokio::task::spawn_blocking`).
///
/// A message refused by any policy is never stored and never notified. Policies are asked
/// again when a client retries with the same idempotency key; a retry whose rewrite differs
/// from the stored body is refused like a key reused for another message.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
/// use std::sync::Arc;
/// use chatcore::{BoxError, ChatConfig, ChatService, Draft, Error, LocalNotifier, MemoryStore};
/// use chatcore::{Rejection, SendPolicy, SendRequest, Verdict};
///
/// struct NoShouting;
///
/// #[async_trait::async_trait]
/// impl SendPolicy for NoShouting {
///     async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError> {
///         Ok(match draft.body {
///             "SPAM" => Verdict::Reject(Rejection::forbidden("no spam")),
///             body if body.chars().any(char::is_lowercase) => Verdict::Allow,
///             body => Verdict::Rewrite(body.to_lowercase()),
///         })
///     }
/// }
///
/// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default())
///     .with_send_policy(Arc::new(NoShouting));
/// let alice = chat.create_user("alice").await?;
/// chat.create_user("bob").await?;
/// let send = |body: &str| SendRequest { recipient: "bob".into(), body: body.into(), ..Default::default() };
/// assert_eq!(chat.send(&alice, send("HELLO")).await?.message.body, "hello");
/// assert!(matches!(chat.send(&alice, send("SPAM")).await, Err(Error::Rejected(_))));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait SendPolicy: Send + Sync + 'static {
    /// Decides on one message. An `Err` counts as a failure: the fallback applies.
    async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError>;
}

/// How often policies did not decide themselves, since the service was built
/// ([`crate::ChatService::policy_counts`]). Each of these applied
/// [`crate::ChatConfig::policy_fallback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyCounts {
    /// Calls that did not answer within [`crate::ChatConfig::policy_deadline`].
    pub timed_out: u64,
    /// Calls that answered with an error.
    pub failed: u64,
}

/// The policies of one service, in order, with their settings and counters (shared by the
/// service's clones).
pub(crate) struct PolicyChain {
    policies: Vec<Arc<dyn SendPolicy>>,
    rules: PolicyRules,
    timed_out: AtomicU64,
    failed: AtomicU64,
}

impl PolicyChain {
    /// A chain without policies, under the settings of `config`.
    pub(crate) fn new(config: &crate::ChatConfig) -> Self {
        Self {
            policies: Vec::new(),
            rules: PolicyRules {
                deadline: config.policy_deadline,
                fallback: config.policy_fallback,
                max_body_chars: config.max_body_chars,
            },
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The chain with `policy` added at the end (counters start again: this happens while the
    /// service is being built).
    pub(crate) fn with(&self, policy: Arc<dyn SendPolicy>) -> Self {
        let mut policies = self.policies.clone();
        policies.push(policy);
        Self {
            policies,
            rules: self.rules,
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub(crate) fn counts(&self) -> PolicyCounts {
        PolicyCounts {
            timed_out: self.timed_out.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Asks every policy in turn about `body`; returns the body to store.
    pub(crate) async fn decide(
        &self,
        action: PolicyAction,
        sender: &User,
        recipient: &Username,
        mut body: String,
    ) -> Result<String> {
        let rules = &self.rules;
        for policy in &self.policies {
            let draft = Draft {
                action,
                sender,
                recipient,
                body: &body,
            };
            let verdict = match tokio::time::timeout(rules.deadline, policy.check(&draft)).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(error)) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, fallback = ?rules.fallback, "send policy failed");
                    rules.fallback_verdict()
                }
                Err(_) => {
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(deadline = ?rules.deadline, fallback = ?rules.fallback, "send policy did not answer in time");
                    rules.fallback_verdict()
                }
            };
            match verdict {
                Verdict::Allow => {}
                Verdict::Reject(rejection) => return Err(Error::Rejected(rejection)),
                Verdict::Rewrite(rewritten) => {
                    body = crate::text::message_body(&rewritten, rules.max_body_chars)?;
                }
            }
        }
        Ok(body)
    }
}

/// The settings of [`PolicyChain::decide`], from [`crate::ChatConfig`].
#[derive(Debug, Clone, Copy)]
struct PolicyRules {
    deadline: Duration,
    fallback: PolicyFallback,
    max_body_chars: usize,
}

impl PolicyRules {
    fn fallback_verdict(&self) -> Verdict {
        match self.fallback {
            PolicyFallback::Allow => Verdict::Allow,
            PolicyFallback::Reject => Verdict::Reject(Rejection::forbidden(
                "the message could not be checked, try again later",
            )),
        }
    }
}
