//! Presence: who is online, deployment-wide, told to the users who share a conversation
//! with them, at most once per watcher per [`ChatConfig::presence_interval`].
//!
//! # How it works
//! - **One task per service**, started with the first connection
//!   ([`crate::ChatService::start_presence`] starts it earlier). Connections tell it when they
//!   open and close through an unbounded channel, so opening a connection costs one channel
//!   send and no lock is shared with sending messages: presence work happens on connect,
//!   disconnect and the task's ticks, never per message.
//! - **Grace.** A user whose last connection here closed stays online here for
//!   [`ChatConfig::presence_grace`]; a connection that opens meanwhile (a reloaded tab) makes
//!   nothing happen at all.
//! - **Nodes tell each other** on the notifier's [`UserId::PRESENCE`] channel with
//!   `presence_sync` events ([`EventKind::PresenceSync`]): each tick, the users that came
//!   online or went offline here (one event for all of them); every third of
//!   [`ChatConfig::presence_timeout`], the whole list (the heartbeat, which also repairs
//!   whatever a lost event left wrong); at start, the whole list and a request that every
//!   node sends its own at once. A node not heard from within the timeout is taken for
//!   dead (killed, cut off): its users go offline, last seen when it was last heard.
//!   Each node keeps the whole deployment's view, so it can answer `online` for the inbox
//!   without asking anyone.
//! - **Frames.** Each tick, the users whose deployment-wide state changed are gathered; for
//!   each, the users they share a conversation with are read once (their inbox, in pages),
//!   and only those connected here get a frame: one `presence` frame per watcher per tick
//!   listing every change they can see, rendered once per distinct list and shared by all
//!   the sockets that get it. Each node tells its own sockets, so a watcher hears a change
//!   once, whichever node it is connected to.
//! - **Ephemeral.** Nothing is stored: `last_seen` is what the running nodes remember (lost
//!   when every node restarts), and frames are never replayed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::event::{EventKind, PresenceChange};
use crate::notify::{Delivery, Event, Notifier, Recipient, SubscriberTable, Subscription};
use crate::store::{InboxRequest, Store};
use crate::{ChatConfig, UserId, Username, now_micros};

/// Conversations read per inbox page when gathering a user's watchers.
const WATCHER_PAGE: u32 = 500;
/// Watcher sets read from the store at once.
const CONCURRENT_READS: usize = 8;
/// Presence frames queued per connection (a tick sends each at most one).
const FRAME_QUEUE: usize = 8;

/// A user's presence as the deployment knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceStatus {
    /// At least one of the user's connections is open on some node.
    pub online: bool,
    /// When the user was last online, if a running node remembers; `None` while online.
    pub last_seen: Option<DateTime<Utc>>,
}

impl PresenceStatus {
    /// Offline, never seen (as far as the running nodes know).
    pub const UNKNOWN: PresenceStatus = PresenceStatus {
        online: false,
        last_seen: None,
    };
}

enum Command {
    Up(UserId, Username),
    Down(UserId),
}

/// Statuses by username key, sharded, written by the task and read by request handlers.
struct View {
    shards: Box<[Mutex<HashMap<String, PresenceStatus>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl View {
    fn new() -> Self {
        Self {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, PresenceStatus>> {
        &self.shards[(self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)]
    }

    fn get(&self, name: &Username) -> PresenceStatus {
        let key = name.key();
        lock(self.shard(&key))
            .get(&key)
            .copied()
            .unwrap_or(PresenceStatus::UNKNOWN)
    }

    fn set(&self, name: &Username, status: PresenceStatus) {
        let key = name.key();
        lock(self.shard(&key)).insert(key, status);
    }
}

/// What the task needs, handed over when it starts.
struct Parts {
    commands: mpsc::UnboundedReceiver<Command>,
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
}

/// The service's presence: the view, the local frame table and the task.
pub(crate) struct Presence {
    settings: Settings,
    view: Arc<View>,
    frames: Arc<SubscriberTable>,
    commands: mpsc::UnboundedSender<Command>,
    parts: Mutex<Option<Parts>>,
    /// Set once the task runs, so that the callers that start it on demand (every
    /// connection, every status lookup) take no lock after that.
    started: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    grace: Duration,
    interval: Duration,
    timeout: Duration,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// Held by a connection: its presence frames, and the close it reports when dropped.
pub(crate) struct PresenceTicket {
    frames: Subscription,
    user: UserId,
    commands: mpsc::UnboundedSender<Command>,
}

impl PresenceTicket {
    /// The next presence frame for the connection (gaps of the frame queue are dropped:
    /// presence frames are not replayed).
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.frames.recv().await? {
                Delivery::Event { event, .. } => return Some(event),
                _ => continue,
            }
        }
    }

    /// [`PresenceTicket::recv`] without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.frames.try_recv() {
                Ok(Some(Delivery::Event { event, .. })) => return Some(event),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }
}

impl Drop for PresenceTicket {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Down(self.user));
    }
}

impl std::fmt::Debug for PresenceTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceTicket")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Presence {
    pub(crate) fn new(config: &ChatConfig, store: Arc<dyn Store>, notifier: Arc<dyn Notifier>) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        Self {
            settings: Settings {
                grace: config.presence_grace,
                interval: config.presence_interval.max(Duration::from_millis(1)),
                timeout: config.presence_timeout.max(Duration::from_millis(3)),
            },
            view: Arc::new(View::new()),
            frames: Arc::new(SubscriberTable::new(FRAME_QUEUE)),
            commands,
            parts: Mutex::new(Some(Parts {
                commands: receiver,
                store,
                notifier,
            })),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    /// Starts the task if it has not started (needs a Tokio runtime; without one it starts
    /// with the first call made within one).
    pub(crate) fn start(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(parts) = lock(&self.parts).take() else {
            return;
        };
        let task = Task {
            settings: self.settings,
            view: self.view.clone(),
            frames: self.frames.clone(),
            store: parts.store,
            notifier: parts.notifier,
            node: rand::random(),
            local: HashMap::new(),
            local_keys: HashMap::new(),
            leaving: VecDeque::new(),
            here: HashMap::new(),
            nodes: HashMap::new(),
            remote: HashMap::new(),
            shown: HashMap::new(),
            last_seen: HashMap::new(),
            names: HashMap::new(),
            came: Vec::new(),
            went: Vec::new(),
            dirty: HashSet::new(),
            send_full: true,
            hello: true,
        };
        *lock(&self.task) = Some(runtime.spawn(task.run(parts.commands)));
        self.started.store(true, Ordering::Release);
    }

    /// Registers one open connection of `user`.
    pub(crate) fn connect(&self, user: UserId, name: &Username) -> PresenceTicket {
        self.start();
        let (frames, _) = self.frames.subscribe(user, || ());
        let _ = self.commands.send(Command::Up(user, name.clone()));
        PresenceTicket {
            frames,
            user,
            commands: self.commands.clone(),
        }
    }

    pub(crate) fn status(&self, user: &Username) -> PresenceStatus {
        self.start();
        self.view.get(user)
    }
}

/// One node's account on the [`UserId::PRESENCE`] channel.
#[derive(Serialize, Deserialize)]
struct Sync {
    r#type: String,
    /// The sending node.
    node: String,
    /// `online` is everyone connected to the node (replacing what it said before), not
    /// only those who came.
    full: bool,
    /// The node just started: every node sends its full list at its next tick.
    hello: bool,
    /// Users who came online there (or, with `full`, everyone online there): id and name.
    online: Vec<(i64, Username)>,
    /// Users who went offline there: id, name and when, in microseconds since the epoch.
    offline: Vec<(i64, Username, i64)>,
}

/// What a node is known to hold, and when it was last heard.
struct Node {
    users: HashSet<UserId>,
    heard: Instant,
    heard_at: DateTime<Utc>,
}

struct Local {
    count: usize,
    /// When the grace of the user's last close ends, while they have no connection here.
    leaving_until: Option<Instant>,
}

struct Task {
    settings: Settings,
    view: Arc<View>,
    frames: Arc<SubscriberTable>,
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    node: u64,
    /// Open connections here, by user.
    local: HashMap<UserId, Local>,
    /// Users with a connection here, by username key: who can get a frame here.
    local_keys: HashMap<String, UserId>,
    /// Users whose last connection here closed, with when their grace ends, oldest first.
    leaving: VecDeque<(Instant, UserId)>,
    /// Users online on this node as announced (after the grace), with their name.
    here: HashMap<UserId, Username>,
    /// The other nodes.
    nodes: HashMap<u64, Node>,
    /// On how many other nodes each user is online.
    remote: HashMap<UserId, u32>,
    /// What the view and the watchers were last told.
    shown: HashMap<UserId, bool>,
    last_seen: HashMap<UserId, DateTime<Utc>>,
    names: HashMap<UserId, Username>,
    /// Changes here since the last announcement.
    came: Vec<UserId>,
    went: Vec<(UserId, DateTime<Utc>)>,
    /// Users whose deployment-wide state may have changed since the last tick.
    dirty: HashSet<UserId>,
    /// Send the whole list at the next tick.
    send_full: bool,
    /// The next announcement asks the other nodes for theirs.
    hello: bool,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut sync = self.follow().await;
        let interval = self.settings.interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_every = (self.settings.timeout / 3).max(interval);
        let mut next_heartbeat = Instant::now() + heartbeat_every;
        // The hello goes out at once, so that the others answer within a tick.
        self.announce().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.apply(command),
                    None => return,
                },
                delivery = sync.recv() => match delivery {
                    Some(Delivery::Event { event, .. }) if event.kind() == EventKind::PresenceSync => {
                        self.heard(&event);
                    }
                    Some(_) => {}
                    None => sync = self.follow().await,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= next_heartbeat {
                        self.send_full = true;
                        next_heartbeat = now + heartbeat_every;
                    }
                    self.tick(now).await;
                    // The next round starts a whole interval after this one delivered, so
                    // no watcher gets two frames less than an interval apart, however long
                    // a round's reads took.
                    tick.reset();
                }
            }
        }
    }

    /// Subscribes to the nodes' channel, retrying while the notifier is down.
    async fn follow(&self) -> Subscription {
        let mut wait = Duration::from_millis(50);
        loop {
            match self.notifier.subscribe(UserId::PRESENCE).await {
                Ok(subscription) => return subscription,
                Err(error) => {
                    tracing::warn!(%error, "presence: cannot follow the other nodes yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Up(user, name) => {
                let local = self.local.entry(user).or_insert(Local {
                    count: 0,
                    leaving_until: None,
                });
                local.count += 1;
                local.leaving_until = None;
                self.local_keys.insert(name.key(), user);
                if let std::collections::hash_map::Entry::Vacant(entry) = self.here.entry(user) {
                    entry.insert(name.clone());
                    self.came.push(user);
                    self.dirty.insert(user);
                }
                self.names.insert(user, name);
            }
            Command::Down(user) => {
                if let Some(local) = self.local.get_mut(&user) {
                    local.count = local.count.saturating_sub(1);
                    if local.count == 0 {
                        let until = Instant::now() + self.settings.grace;
                        local.leaving_until = Some(until);
                        self.leaving.push_back((until, user));
                    }
                }
            }
        }
    }

    async fn tick(&mut self, now: Instant) {
        // Graces that ended with no connection back.
        while let Some(&(until, user)) = self.leaving.front() {
            if until > now {
                break;
            }
            self.leaving.pop_front();
            // A user who came back and left again waits for the end of their latest grace.
            if self
                .local
                .get(&user)
                .is_some_and(|l| l.count == 0 && l.leaving_until == Some(until))
            {
                self.local.remove(&user);
                if let Some(name) = self.names.get(&user) {
                    self.local_keys.remove(&name.key());
                }
                if self.here.remove(&user).is_some() {
                    let at = now_micros();
                    self.last_seen.insert(user, at);
                    self.went.push((user, at));
                    self.dirty.insert(user);
                }
            }
        }
        // Nodes not heard from within the timeout.
        let timeout = self.settings.timeout;
        let dead: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, node)| now.duration_since(node.heard) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(node) = self.nodes.remove(&id) {
                tracing::info!(node = %format_args!("{id:016x}"), users = node.users.len(), "presence: node not heard from; its users are offline");
                for user in node.users {
                    self.remote_down(user, node.heard_at);
                }
            }
        }
        self.announce().await;
        self.show().await;
    }

    fn remote_down(&mut self, user: UserId, at: DateTime<Utc>) {
        if let Some(count) = self.remote.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                self.remote.remove(&user);
            }
        }
        let seen = self.last_seen.entry(user).or_insert(at);
        *seen = (*seen).max(at);
        self.dirty.insert(user);
    }

    /// Tells the other nodes what changed here (or everything, when due).
    async fn announce(&mut self) {
        let full = std::mem::take(&mut self.send_full);
        if !full && self.came.is_empty() && self.went.is_empty() {
            return;
        }
        let came = std::mem::take(&mut self.came);
        let went = std::mem::take(&mut self.went);
        let online: Vec<(i64, Username)> = if full {
            self.here.iter().map(|(id, name)| (id.0, name.clone())).collect()
        } else {
            came.iter()
                .filter_map(|id| self.here.get(id).map(|name| (id.0, name.clone())))
                .collect()
        };
        let offline = went
            .iter()
            .filter_map(|(id, at)| {
                self.names
                    .get(id)
                    .map(|name| (id.0, name.clone(), at.timestamp_micros()))
            })
            .collect();
        let sync = Sync {
            r#type: EventKind::PresenceSync.as_str().to_owned(),
            node: format!("{:016x}", self.node),
            full,
            hello: std::mem::take(&mut self.hello),
            online,
            offline,
        };
        let frame = serde_json::to_string(&sync).unwrap_or_default();
        let event = Event::ephemeral(EventKind::PresenceSync, frame);
        if let Err(error) = self
            .notifier
            .publish(&[Recipient::ephemeral(UserId::PRESENCE)], &event)
            .await
        {
            // The next heartbeat says it all again.
            tracing::debug!(%error, "presence: announcement not published");
        }
    }

    /// Another node's announcement.
    fn heard(&mut self, event: &Event) {
        let Ok(sync) = serde_json::from_slice::<Sync>(event.frame()) else {
            tracing::warn!("presence: unreadable announcement ignored");
            return;
        };
        let Ok(id) = u64::from_str_radix(&sync.node, 16) else {
            return;
        };
        if id == self.node {
            return;
        }
        if sync.hello {
            self.send_full = true;
        }
        let heard_at = now_micros();
        let mut node = self.nodes.remove(&id).unwrap_or_else(|| Node {
            users: HashSet::new(),
            heard: Instant::now(),
            heard_at,
        });
        node.heard = Instant::now();
        node.heard_at = heard_at;
        let mut online = HashSet::with_capacity(sync.online.len());
        for (user, name) in sync.online {
            let user = UserId(user);
            self.names.entry(user).or_insert(name);
            online.insert(user);
            if node.users.insert(user) {
                *self.remote.entry(user).or_insert(0) += 1;
                self.dirty.insert(user);
            }
        }
        if sync.full {
            let gone: Vec<UserId> = node.users.difference(&online).copied().collect();
            for user in gone {
                node.users.remove(&user);
                self.remote_down(user, heard_at);
            }
        }
        for (user, name, at) in sync.offline {
            let user = UserId(user);
            self.names.entry(user).or_insert(name);
            let at = DateTime::from_timestamp_micros(at).unwrap_or(heard_at);
            if node.users.remove(&user) {
                self.remote_down(user, at);
            } else {
                let seen = self.last_seen.entry(user).or_insert(at);
                *seen = (*seen).max(at);
            }
        }
        self.nodes.insert(id, node);
    }

    /// Updates the view and tells the watchers connected here what changed.
    async fn show(&mut self) {
        let mut changed = Vec::new();
        let mut changed_ids = Vec::new();
        for user in std::mem::take(&mut self.dirty) {
            let online = self.here.contains_key(&user) || self.remote.contains_key(&user);
            let before = self.shown.get(&user).copied().unwrap_or(false);
            let Some(name) = self.names.get(&user).cloned() else {
                continue;
            };
            let last_seen = if online {
                None
            } else {
                self.last_seen.get(&user).copied()
            };
            self.view.set(&name, PresenceStatus { online, last_seen });
            if online != before {
                if online {
                    self.shown.insert(user, true);
                } else {
                    self.shown.remove(&user);
                }
                changed.push(PresenceChange {
                    user: name,
                    online,
                    last_seen,
                });
                changed_ids.push(user);
            }
        }
        if changed.is_empty() || self.local_keys.is_empty() {
            return;
        }
        // Who shares a conversation with each changed user, read once per change.
        let mut watchers: Vec<(usize, Vec<Username>)> = Vec::with_capacity(changed.len());
        let mut reads = tokio::task::JoinSet::new();
        for (index, user) in changed_ids.iter().copied().enumerate() {
            if reads.len() >= CONCURRENT_READS
                && let Some(Ok(done)) = reads.join_next().await
            {
                watchers.push(done);
            }
            let store = self.store.clone();
            reads.spawn(async move { (index, peers(&*store, user).await) });
        }
        while let Some(done) = reads.join_next().await {
            if let Ok(done) = done {
                watchers.push(done);
            }
        }
        let mut per_watcher: HashMap<UserId, Vec<usize>> = HashMap::new();
        for (index, peers) in watchers {
            let own_key = changed[index].user.key();
            for peer in peers {
                let key = peer.key();
                if key == own_key {
                    continue;
                }
                if let Some(&watcher) = self.local_keys.get(&key) {
                    per_watcher.entry(watcher).or_default().push(index);
                }
            }
        }
        // Each change is rendered once; each distinct list of changes once.
        let entries: Vec<String> = changed
            .iter()
            .map(|change| serde_json::to_string(change).unwrap_or_default())
            .collect();
        let mut frames: HashMap<Vec<usize>, Event> = HashMap::new();
        for (watcher, mut list) in per_watcher {
            list.sort_unstable();
            list.dedup();
            let event = frames
                .entry(list)
                .or_insert_with_key(|list| {
                    let mut frame = String::from(r#"{"type":"presence","users":["#);
                    for (n, index) in list.iter().enumerate() {
                        if n > 0 {
                            frame.push(',');
                        }
                        let _ = write!(frame, "{}", entries[*index]);
                    }
                    frame.push_str("]}");
                    Event::ephemeral(EventKind::Presence, frame)
                })
                .clone();
            self.frames.deliver(
                watcher,
                &Delivery::Event {
                    event,
                    previous: None,
                },
            );
        }
    }
}

/// The users `user` shares a conversation with, from their inbox read in pages. A failed
/// read gives up (the watchers miss this change; the inbox shows the truth).
async fn peers(store: &dyn Store, user: UserId) -> Vec<Username> {
    let mut peers = Vec::new();
    let mut before = None;
    loop {
        let request = InboxRequest {
            before,
            limit: WATCHER_PAGE,
        };
        match store.inbox(user, &request).await {
            Ok(page) => {
                let full = page.conversations.len() == WATCHER_PAGE as usize;
                before = page.conversations.last().map(|c| c.last_message.id);
                peers.extend(page.conversations.into_iter().map(|c| c.peer));
                if !full || before.is_none() {
                    return peers;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "presence: cannot read who watches a user");
                return peers;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its map consistent, so a poisoned lock is safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
