//! [`Feed`]: one connection's view of a user's events, with the service's rules applied
//! (connections per user, sessions that end), and the per-user limit on catch-up reads.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::event::{EventKind, SessionId};
use crate::notify::{CloseReason, Delivery, Subscription};
use crate::presence::PresenceTicket;
use crate::{Error, Result, UserId};

/// A user's live connections on this process, oldest first, so that opening one too many
/// closes the oldest.
type Shard = Mutex<HashMap<UserId, VecDeque<Slot>>>;

#[derive(Debug)]
pub(crate) struct Connections {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    next_id: AtomicU64,
    max_per_user: usize,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    evict: oneshot::Sender<CloseReason>,
}

impl Connections {
    pub(crate) fn new(max_per_user: usize) -> Self {
        let shard_count =
            (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16).next_power_of_two();
        Self {
            shards: (0..shard_count).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_id: AtomicU64::new(1),
            max_per_user,
        }
    }

    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(self.hasher.hash_one(user) as usize) & (self.shards.len() - 1)]
    }

    /// Registers a connection of `user`, closing their oldest ones beyond the limit.
    fn open(self: &Arc<Self>, user: UserId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (evict, evicted) = oneshot::channel();
        let mut shard = lock(self.shard(user));
        let slots = shard.entry(user).or_default();
        slots.push_back(Slot { id, evict });
        while slots.len() > self.max_per_user {
            if let Some(oldest) = slots.pop_front() {
                let _ = oldest.evict.send(CloseReason::TooManyConnections);
            }
        }
        Registration {
            connections: Arc::downgrade(self),
            user,
            id,
            evicted,
        }
    }

    fn close(&self, user: UserId, id: u64) {
        let mut shard = lock(self.shard(user));
        if let Some(slots) = shard.get_mut(&user) {
            slots.retain(|slot| slot.id != id);
            if slots.is_empty() {
                shard.remove(&user);
            }
        }
    }

    /// How many connections `user` has open on this process.
    pub(crate) fn count(&self, user: UserId) -> usize {
        lock(self.shard(user)).get(&user).map_or(0, VecDeque::len)
    }
}

struct Registration {
    connections: Weak<Connections>,
    user: UserId,
    id: u64,
    evicted: oneshot::Receiver<CloseReason>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.close(self.user, self.id);
        }
    }
}

/// One connection's stream of a user's events, from [`crate::ChatService::subscribe`]: the
/// notifier's [`Subscription`] with the service's rules applied. It yields
/// [`Delivery::Closed`] when the connection must end: the session it was opened with ended
/// (on any node), or the user opened more than
/// [`crate::ChatConfig::max_connections_per_user`] connections here and this is the oldest.
/// Session events are consumed here and never reach the caller.
pub struct Feed {
    subscription: Subscription,
    /// The connection's presence frames and its place in presence, when presence is on.
    presence: Option<PresenceTicket>,
    registration: Registration,
    session: Option<SessionId>,
    closed: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("user", &self.registration.user)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(
        subscription: Subscription,
        connections: &Arc<Connections>,
        user: UserId,
        session: Option<SessionId>,
        presence: Option<PresenceTicket>,
    ) -> Self {
        Self {
            subscription,
            presence,
            registration: connections.open(user),
            session,
            closed: false,
        }
    }

    /// The next delivery; `None` once the feed has ended (after [`Delivery::Closed`], or when
    /// the transport closed).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if self.closed {
                return None;
            }
            let delivery = tokio::select! {
                biased;
                reason = &mut self.registration.evicted => match reason {
                    Ok(reason) => Delivery::Closed(reason),
                    // The registry is gone: the service was dropped.
                    Err(_) => Delivery::Closed(CloseReason::TransportClosed),
                },
                delivery = self.subscription.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => Delivery::Closed(CloseReason::TransportClosed),
                },
                Some(event) = presence_frame(&mut self.presence) => Delivery::Event { event, previous: None },
            };
            if let Some(delivery) = self.apply(delivery) {
                return Some(delivery);
            }
        }
    }

    /// Like [`Feed::recv`] without waiting: `None` when nothing is ready now.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        loop {
            if self.closed {
                return None;
            }
            let delivery = match self.registration.evicted.try_recv() {
                Ok(reason) => Delivery::Closed(reason),
                Err(oneshot::error::TryRecvError::Closed) => Delivery::Closed(CloseReason::TransportClosed),
                Err(oneshot::error::TryRecvError::Empty) => match self.subscription.try_recv() {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) => {
                        return self
                            .presence
                            .as_mut()
                            .and_then(PresenceTicket::try_recv)
                            .map(|event| Delivery::Event {
                                event,
                                previous: None,
                            });
                    }
                    Err(()) => Delivery::Closed(CloseReason::TransportClosed),
                },
            };
            if let Some(delivery) = self.apply(delivery) {
                return Some(delivery);
            }
        }
    }

    /// The service's rules on one delivery: `None` when it is consumed here.
    fn apply(&mut self, delivery: Delivery) -> Option<Delivery> {
        match delivery {
            Delivery::Event { event, .. } if event.kind() == EventKind::SessionEnded => {
                let all = event.session() == Some(SessionId::ALL);
                if all || (self.session.is_some() && event.session() == self.session) {
                    self.closed = true;
                    Some(Delivery::Closed(CloseReason::SessionEnded))
                } else {
                    None
                }
            }
            Delivery::Closed(reason) => {
                self.closed = true;
                Some(Delivery::Closed(reason))
            }
            other => Some(other),
        }
    }
}

/// The connection's next presence frame; never, without presence.
async fn presence_frame(presence: &mut Option<PresenceTicket>) -> Option<crate::Event> {
    match presence {
        Some(ticket) => ticket.recv().await,
        None => std::future::pending().await,
    }
}

/// At most `per_user` catch-up reads of one user at a time: an account that reopens
/// connections in a loop waits for itself, not everybody else.
#[derive(Debug)]
pub(crate) struct ReadGate {
    per_user: usize,
    gates: Mutex<HashMap<UserId, Weak<Semaphore>>>,
}

impl ReadGate {
    pub(crate) fn new(per_user: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn enter(&self, user: UserId) -> Result<OwnedSemaphorePermit> {
        let semaphore = {
            let mut gates = lock(&self.gates);
            match gates.get(&user).and_then(Weak::upgrade) {
                Some(semaphore) => semaphore,
                None => {
                    // Forget users nobody reads for now, so the map stays as small as the
                    // number of users catching up at once.
                    if gates.len() >= 1024 {
                        gates.retain(|_, gate| gate.strong_count() > 0);
                    }
                    let semaphore = Arc::new(Semaphore::new(self.per_user));
                    gates.insert(user, Arc::downgrade(&semaphore));
                    semaphore
                }
            }
        };
        semaphore
            .acquire_owned()
            .await
            .map_err(|_| Error::bug("catch-up gate closed"))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map consistent, so a poisoned lock is safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
