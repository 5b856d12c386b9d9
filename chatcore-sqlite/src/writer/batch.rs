//! The batch loop: block for one job, drain every job waiting at that moment (up to
//! `max_batch`), run them all in one `BEGIN IMMEDIATE ... COMMIT`, and hand the batch on to
//! be answered once durable. A batch that fails because of one job is retried job by job, so
//! one bad job cannot fail the others; one that fails because of the database (busy, full,
//! corrupt, I/O) fails every job with that error.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use chatcore::store::{ChangeEvent, Changed, Inserted, MarkedRead, MessageChange, MovedMarker, ReadMarker};
use chatcore::{
    ConversationKey, Entity, Error, Forbidden, Message, MessageId, NewMessage, Position, Result, User,
    UserId, Username,
};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension};

use super::Move;
use super::durability::{Committed, MAX_UNSYNCED_BATCHES};
use super::{Outcome, WriteMsg, WriteOp, Writer};
use crate::reader::{self, ReadJob};
use crate::{chain, error, schema, sql};

impl Writer {
    pub(super) fn run_batches(&mut self, queue: &Receiver<WriteMsg>) {
        let mut ops = Vec::with_capacity(self.max_batch.min(4096));
        let mut reads = Vec::new();
        while let Ok(first) = queue.recv() {
            // Let writes pile up while the disk is behind: one bigger commit writes each
            // shared page (the newest leaf, the counters) once instead of once per small one.
            self.unsynced.wait_below(MAX_UNSYNCED_BATCHES);
            let mut stop = false;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next {
                taken += 1;
                match msg {
                    WriteMsg::Op(op) => ops.push(op),
                    WriteMsg::Read(job) => reads.push(job),
                    WriteMsg::Migrate(reply) => {
                        self.commit(&mut ops);
                        self.run_reads(&mut reads);
                        let now = self.next_timestamp().timestamp_micros();
                        let migrated = schema::migrate(&mut self.ctx.conn, now).and_then(|report| {
                            // Conversations may have come with the tables (or been rebuilt):
                            // the order in memory follows the rows as migrated.
                            if report.applied_any() {
                                self.ctx.activity().load(&self.ctx.conn).map_err(error::map)?;
                            }
                            Ok(report)
                        });
                        // The tables the sequence is read from may have just appeared.
                        self.last_position = None;
                        let _ = reply.send(migrated.and_then(|report| {
                            self.sync_now()?;
                            Ok(report)
                        }));
                    }
                    WriteMsg::Stop => {
                        stop = true;
                        break;
                    }
                }
                next = if taken < self.max_batch {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut ops);
            self.run_reads(&mut reads);
            if stop {
                break;
            }
        }
    }

    /// Reads queued on the writer run after the writes drained with them have committed.
    fn run_reads(&mut self, reads: &mut Vec<ReadJob>) {
        for job in reads.drain(..) {
            job(&mut self.ctx);
        }
    }

    /// Commits `ops` in one transaction (or job by job: [`commit_or_retry`]) and answers
    /// every waiter once the commit is durable.
    fn commit(&mut self, ops: &mut Vec<WriteOp>) {
        if ops.is_empty() {
            return;
        }
        let stats = self.stats.clone();
        let committed = commit_or_retry(ops, |batch| {
            let started = Instant::now();
            let outcomes = self.try_batch(batch)?;
            self.metrics.committed(batch.len(), started.elapsed());
            stats.transactions.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(outcomes)
        });
        self.answer_when_durable(committed);
    }

    /// The batch's commit time: now, but never before the previous batch's, so ids and
    /// timestamps increase together even if the clock steps back.
    fn next_timestamp(&mut self) -> DateTime<Utc> {
        let now = chatcore::now_micros();
        if now > self.last_timestamp {
            self.last_timestamp = now;
        }
        self.last_timestamp
    }

    /// One `BEGIN IMMEDIATE ... COMMIT` around every job of `ops`.
    fn try_batch(&mut self, ops: &[WriteOp]) -> rusqlite::Result<Vec<Outcome>> {
        let created_at = self.next_timestamp();
        self.pending_names.clear();
        self.pending_ids.clear();
        self.conversation_tails.clear();
        self.user_tails.clear();
        self.moves.clear();
        let result = self.apply_all(ops, created_at);
        match &result {
            Ok(_) => {
                for (key, user) in self.pending_names.drain() {
                    self.ctx.names_mut().insert(key, user);
                }
                if self.known_ids_capacity > 0 {
                    if self.known_ids.len() + self.pending_ids.len() > self.known_ids_capacity {
                        self.known_ids.clear();
                    }
                    self.known_ids.extend(self.pending_ids.drain());
                }
            }
            Err(_) => {
                // The order moved with each message; the rows did not commit.
                self.ctx.activity().undo(&self.moves);
                self.moves.clear();
                self.pending_names.clear();
                self.pending_ids.clear();
                // Positions handed out in the rolled-back transaction were never seen.
                self.last_position = None;
                if !self.ctx.conn.is_autocommit()
                    && let Err(e) = self.ctx.conn.execute_batch("ROLLBACK")
                {
                    tracing::warn!(error = %e, "rollback failed");
                }
            }
        }
        result
    }

    fn apply_all(&mut self, ops: &[WriteOp], created_at: DateTime<Utc>) -> rusqlite::Result<Vec<Outcome>> {
        self.ctx.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(self.apply(op, created_at)?);
        }
        self.flush_counts()?;
        self.ctx.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(outcomes)
    }

    /// Moves a conversation's entry in its participants' activity orders from its newest id
    /// before this message (`0`: none) to the message's, at once: the order in memory is
    /// then never behind what any snapshot holds, this transaction's own reads included
    /// (`activity.rs`). Kept in `moves` so that a batch that fails is taken back.
    fn move_activity(&mut self, low: i64, high: i64, from: i64, to: i64) {
        let start = self.moves.len();
        self.moves.extend(Move::sides(low, high, from, to));
        self.ctx.activity().apply(&self.moves[start..]);
    }

    /// Adds the batch's counter increments and newest ids, one upsert per conversation and
    /// per user.
    fn flush_counts(&mut self) -> rusqlite::Result<()> {
        let conn = &self.ctx.conn;
        if !self.conversation_tails.is_empty() {
            let mut add = conn.prepare_cached(sql::ADD_CONVERSATION_COUNT)?;
            for (key, tail) in self.conversation_tails.drain() {
                if tail.added == 0 {
                    continue;
                }
                let (low, high) = (key.low().0, key.high().0);
                add.execute([low, high, tail.added, tail.last_id, tail.low_added])?;
            }
        }
        if !self.user_tails.is_empty() {
            let mut stmt = conn.prepare_cached(sql::ADD_USER_COUNT)?;
            for (user, tail) in self.user_tails.drain() {
                if !tail.changed {
                    continue;
                }
                stmt.execute([user.0, tail.added, tail.last_id, tail.unread])?;
            }
        }
        Ok(())
    }

    /// The next position of the single sequence messages and read events share (trait docs,
    /// "Positions"): handed out here in the order the writer applies jobs, which is commit
    /// order.
    fn next_position(&mut self) -> rusqlite::Result<i64> {
        let last = match self.last_position {
            Some(last) => last,
            None => self
                .ctx
                .conn
                .prepare_cached(sql::LAST_POSITION)?
                .query_row([], |row| row.get(0))?,
        };
        self.last_position = Some(last + 1);
        Ok(last + 1)
    }

    /// Runs one job inside the open transaction. `Ok(Outcome(Err(..)))` is the job's own
    /// failure (taken name, unknown user) and wrote nothing; `Err` aborts the batch.
    fn apply(&mut self, op: &WriteOp, created_at: DateTime<Utc>) -> rusqlite::Result<Outcome> {
        let conn = &self.ctx.conn;
        match op {
            WriteOp::CreateUser {
                username,
                password_hash,
                ..
            } => {
                let key = username.key();
                let inserted = conn.prepare_cached(sql::INSERT_USER)?.execute(rusqlite::params![
                    username.as_str(),
                    key,
                    password_hash.as_deref()
                ]);
                match inserted {
                    Ok(_) => {
                        let user = User {
                            id: UserId(conn.last_insert_rowid()),
                            username: username.clone(),
                        };
                        self.pending_names.insert(key, user.clone());
                        Ok(Outcome::User(Ok(user)))
                    }
                    Err(e) if is_constraint(&e) => Ok(Outcome::User(Err(Error::conflict(format!(
                        "username {username} is taken"
                    ))))),
                    Err(e) => Err(e),
                }
            }
            WriteOp::CreateSession {
                token_hash,
                user,
                expires_at,
                ..
            } => {
                let removed: Option<bool> = conn
                    .prepare_cached(sql::USER_EXISTS)?
                    .query_row([user.0], |row| row.get(0))
                    .optional()?;
                if removed != Some(false) {
                    return Ok(Outcome::Unit(Err(Error::NotFound(Entity::User))));
                }
                conn.prepare_cached(sql::UPSERT_SESSION)?
                    .execute(rusqlite::params![&token_hash[..], user.0, expires_at])?;
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::DeleteSession { token_hash, .. } => {
                conn.prepare_cached(sql::DELETE_SESSION)?
                    .execute([&token_hash[..]])?;
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::DeleteExpiredSessions { now, .. } => {
                let deleted = conn
                    .prepare_cached(sql::DELETE_EXPIRED_SESSIONS)?
                    .execute([now])?;
                Ok(Outcome::Count(Ok(deleted as u64)))
            }
            WriteOp::RemoveUser { user, at, .. } => {
                let updated = conn.prepare_cached(sql::REMOVE_USER)?.execute([user.0, *at])?;
                if updated == 0 {
                    return Ok(Outcome::Unit(Err(Error::NotFound(Entity::User))));
                }
                conn.prepare_cached(sql::DELETE_USER_SESSIONS)?
                    .execute([user.0])?;
                // Later sends of this batch and of the next ones read the flag.
                self.known_ids.remove(user);
                self.pending_ids.remove(user);
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::DeleteUserSessions { user, .. } => {
                let deleted = conn
                    .prepare_cached(sql::DELETE_USER_SESSIONS)?
                    .execute([user.0])?;
                Ok(Outcome::Count(Ok(deleted as u64)))
            }
            WriteOp::SetPasswordHash {
                username,
                password_hash,
                ..
            } => {
                let user = conn
                    .prepare_cached(sql::SET_PASSWORD_HASH)?
                    .query_row(
                        rusqlite::params![username.key(), password_hash],
                        reader::user_from_row,
                    )
                    .optional()?;
                Ok(Outcome::User(user.ok_or(Error::NotFound(Entity::User))))
            }
            WriteOp::DeleteSent {
                sender, after, limit, ..
            } => Ok(Outcome::Changes(
                self.delete_sent(*sender, *after, *limit, created_at)?,
            )),
            WriteOp::SaveCheckpoint { name, position, .. } => {
                conn.prepare_cached(sql::SAVE_CHECKPOINT)?
                    .execute(rusqlite::params![name, position])?;
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::SetBlock {
                blocker, blocked, on, ..
            } => Ok(Outcome::User(self.set_block(*blocker, blocked, *on)?)),
            WriteOp::Insert { message, .. } => Ok(Outcome::Inserted(self.insert(message, created_at)?)),
            WriteOp::MarkRead {
                reader, peer, up_to, ..
            } => Ok(Outcome::Marked(self.mark_read(reader, peer, *up_to)?)),
            WriteOp::Change {
                sender, id, change, ..
            } => Ok(Outcome::Changed(self.change(*sender, *id, change, created_at)?)),
        }
    }

    /// Starts or ends `blocker`'s block of `blocked` (`Store::set_block`). Jobs later in the
    /// batch (inserts, edits) see it: they run in this transaction after it.
    fn set_block(&mut self, blocker: UserId, blocked: &Username, on: bool) -> rusqlite::Result<Result<User>> {
        let Some(target) = self.resolve_in_tx(blocked)? else {
            return Ok(Err(Error::NotFound(Entity::User)));
        };
        if target.id == blocker {
            return Ok(Err(Error::invalid("you cannot block yourself")));
        }
        let changed = if on {
            // Foreign keys are not enforced on this connection (see `connection.rs`). A
            // removed user is still a user here (their row stays), as in every backend.
            if let Err(Error::NotFound(entity)) = self.sender_may_send(blocker)? {
                return Ok(Err(Error::NotFound(entity)));
            }
            self.ctx
                .conn
                .prepare_cached(sql::INSERT_BLOCK)?
                .execute(rusqlite::params![blocker.0, target.id.0, target.username.key()])?
        } else {
            self.ctx
                .conn
                .prepare_cached(sql::DELETE_BLOCK)?
                .execute([blocker.0, target.id.0])?
        };
        if changed > 0 {
            let delta: i64 = if on { 1 } else { -1 };
            for user in [blocker, target.id] {
                self.ctx
                    .conn
                    .prepare_cached(sql::ADD_BLOCK_COUNT)?
                    .execute([user.0, delta])?;
                // A user the batch already read: later jobs of the batch see the count.
                if let Some(tail) = self.user_tails.get_mut(&user) {
                    tail.blocks += delta;
                }
            }
        }
        Ok(Ok(target))
    }

    /// Whether a block stands between `a` and `b`, either way, in the open transaction.
    fn blocked(&self, a: UserId, b: UserId) -> rusqlite::Result<bool> {
        Ok(self
            .ctx
            .conn
            .prepare_cached(sql::BLOCK_BETWEEN)?
            .query_row([a.0, b.0], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Edits or deletes message `id` for `sender` (`Store::change_message`'s rules, in its
    /// order) and stores the event for both participants at the next position. A message
    /// queued in the same batch is already in the table.
    fn change(
        &mut self,
        sender: UserId,
        id: MessageId,
        change: &MessageChange,
        at: DateTime<Utc>,
    ) -> rusqlite::Result<Result<Changed>> {
        let conn = &self.ctx.conn;
        let found = conn
            .prepare_cached(sql::MESSAGE_TO_CHANGE)?
            .query_row([id.0], |row| {
                Ok((
                    reader::message_from_row(row)?,
                    UserId(row.get(7)?),
                    UserId(row.get(8)?),
                ))
            })
            .optional()?;
        let Some((message, sender_id, recipient_id)) = found else {
            return Ok(Err(Error::NotFound(Entity::Message)));
        };
        if sender != sender_id {
            return Ok(Err(if sender == recipient_id {
                Error::Forbidden(Forbidden::NotTheSender)
            } else {
                Error::NotFound(Entity::Message)
            }));
        }
        if message.deleted {
            return Ok(match change {
                MessageChange::Edit { .. } => Err(Error::NotFound(Entity::Message)),
                MessageChange::Delete => Ok(Changed { message, event: None }),
            });
        }
        if matches!(change, MessageChange::Edit { .. }) && self.blocked(sender_id, recipient_id)? {
            return Ok(Err(Error::Forbidden(Forbidden::Blocked)));
        }
        if let MessageChange::Edit {
            not_before: Some(not_before),
            ..
        } = change
            && message.created_at < *not_before
        {
            return Ok(Err(Error::Forbidden(Forbidden::EditWindowClosed)));
        }
        let sender_previous = user_tail(conn, &mut self.user_tails, sender_id)?.last_id;
        let recipient_previous = if recipient_id == sender_id {
            sender_previous
        } else {
            user_tail(conn, &mut self.user_tails, recipient_id)?.last_id
        };
        let position = self.next_position()?;
        let conn = &self.ctx.conn;
        let message = match change {
            MessageChange::Edit { body, .. } => {
                conn.prepare_cached(sql::EDIT_MESSAGE)?
                    .execute(rusqlite::params![id.0, body, reader::datetime_to_micros(&at)])?;
                Message {
                    body: body.clone(),
                    edited: Some(at),
                    ..message
                }
            }
            MessageChange::Delete => {
                conn.prepare_cached(sql::DELETE_MESSAGE)?.execute([id.0])?;
                message.into_tombstone()
            }
        };
        conn.prepare_cached(sql::INSERT_CHANGE)?.execute([
            position,
            id.0,
            sender_id.0,
            recipient_id.0,
            i64::from(message.deleted),
        ])?;
        for user in [sender_id, recipient_id] {
            // Read above, so the entry is there.
            let tail = self.user_tails.entry(user).or_default();
            tail.last_id = position;
            tail.changed = true;
        }
        Ok(Ok(Changed {
            message,
            event: Some(ChangeEvent {
                position: Position(position),
                recipient_id,
                sender_previous: Position(sender_previous),
                recipient_previous: Position(recipient_previous),
            }),
        }))
    }

    /// Tombstones up to `limit` of the messages `sender` sent after `after` (oldest first),
    /// each as `change` deletes one, with its event.
    fn delete_sent(
        &mut self,
        sender: UserId,
        after: MessageId,
        limit: u32,
        at: DateTime<Utc>,
    ) -> rusqlite::Result<Result<Vec<Changed>>> {
        let name: Option<String> = self
            .ctx
            .conn
            .prepare_cached(sql::USERNAME_OF)?
            .query_row([sender.0], |row| row.get(0))
            .optional()?;
        let Some(name) = name else {
            return Ok(Ok(Vec::new()));
        };
        // No index of messages by sender (each costs every send a page write): the user's
        // messages after the cursor, through their conversations, a page at a time; the ones
        // they received are passed over. The caller's cursor moves past the last one
        // answered, so over a whole deletion each message is read about once.
        let want = limit as usize;
        let mut ids = Vec::with_capacity(want.min(1024));
        let mut cursor = after;
        while ids.len() < want {
            let page = match reader::messages_after(
                &self.ctx.conn,
                self.ctx.activity(),
                sender,
                cursor,
                limit.max(100),
            ) {
                Ok(page) => page,
                Err(error) => return Ok(Err(error)),
            };
            let Some(last) = page.last() else { break };
            cursor = last.id;
            ids.extend(
                page.iter()
                    .filter(|m| !m.deleted && m.sender.as_str() == name)
                    .map(|m| m.id.0),
            );
        }
        ids.truncate(want);
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            match self.change(sender, MessageId(id), &MessageChange::Delete, at)? {
                Ok(one) => changed.push(one),
                Err(error) => return Ok(Err(error)),
            }
        }
        Ok(Ok(changed))
    }

    /// Moves `reader`'s marker on their conversation with `peer` up to `up_to` (never back),
    /// takes the peer's messages it passes over off the reader's unread total and stores the
    /// read event for both users at the next position. The conversation's unread count is
    /// the peer's messages (from its row, with this batch's sends still in memory in
    /// `conversation_tails`) less those the marker covers; the marker is written at once, so
    /// a later mark of the batch reads it back.
    fn mark_read(
        &mut self,
        reader: &User,
        peer: &Username,
        up_to: MessageId,
    ) -> rusqlite::Result<Result<MarkedRead>> {
        let Some(peer) = self.resolve_in_tx(peer)? else {
            return Ok(Err(Error::NotFound(Entity::User)));
        };
        let key = ConversationKey::new(reader.id, peer.id);
        let conn = &self.ctx.conn;
        let Some(target) = message_place(conn, up_to.0)? else {
            return Ok(Err(Error::NotFound(Entity::Message)));
        };
        if (target.low, target.high) != (key.low().0, key.high().0) {
            return Ok(Err(Error::NotFound(Entity::Message)));
        }
        let marker: Option<(i64, i64)> = conn
            .prepare_cached(sql::READ_MARKER)?
            .query_row([reader.id.0, peer.id.0], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let (marker, seen) = marker.map_or((None, 0), |(up_to, seen)| (Some(up_to), seen));
        let note_to_self = peer.id == reader.id;
        let peer_sent = if note_to_self {
            0
        } else {
            let tail = conversation_tail(conn, &mut self.conversation_tails, key)?;
            tail.sent_by(key, peer.id.0)
        };
        if let Some(marker) = marker
            && marker >= up_to.0
        {
            return Ok(Ok(MarkedRead {
                unread: (peer_sent - seen).max(0) as u64,
                read_up_to: MessageId(marker),
                moved: None,
            }));
        }
        let now_seen = target.sent_by(peer.id.0);
        let passed = if note_to_self { 0 } else { now_seen - seen };
        conn.prepare_cached(sql::SAVE_READ_MARKER)?
            .execute([reader.id.0, peer.id.0, up_to.0, now_seen])?;
        let reader_previous = user_tail(conn, &mut self.user_tails, reader.id)?.last_id;
        let peer_previous = if peer.id == reader.id {
            reader_previous
        } else {
            user_tail(conn, &mut self.user_tails, peer.id)?.last_id
        };
        let position = self.next_position()?;
        let conn = &self.ctx.conn;
        conn.prepare_cached(sql::INSERT_READ)?
            .execute([position, reader.id.0, peer.id.0, up_to.0])?;
        for user in [reader.id, peer.id] {
            // Read above, so the entry is there.
            let tail = self.user_tails.entry(user).or_default();
            tail.last_id = position;
            tail.changed = true;
        }
        self.user_tails.entry(reader.id).or_default().unread -= passed;
        Ok(Ok(MarkedRead {
            unread: if note_to_self {
                0
            } else {
                (peer_sent - now_seen).max(0) as u64
            },
            read_up_to: up_to,
            moved: Some(MovedMarker {
                marker: ReadMarker {
                    position: Position(position),
                    reader: reader.username.clone(),
                    peer: peer.username,
                    up_to,
                },
                peer_id: peer.id,
                reader_previous: Position(reader_previous),
                peer_previous: Position(peer_previous),
            }),
        }))
    }

    fn insert(&mut self, new: &NewMessage, created_at: DateTime<Utc>) -> rusqlite::Result<Result<Inserted>> {
        let Some(recipient) = self.resolve_in_tx(&new.recipient)? else {
            return Ok(Err(Error::NotFound(Entity::User)));
        };
        let recipient_id = recipient.id;
        let sender_id = new.sender.id;
        if let Err(refused) = self.sender_may_send(sender_id)? {
            return Ok(Err(refused));
        }
        let conn = &self.ctx.conn;
        if let Some(key) = &new.idempotency_key {
            let earlier = conn
                .prepare_cached(sql::IDEMPOTENT_MESSAGE)?
                .query_row(rusqlite::params![sender_id.0, key], |row| {
                    Ok((reader::message_from_row(row)?, UserId(row.get(7)?)))
                })
                .optional()?;
            // The earlier message and its recipient, whom the retry may have named differently.
            if let Some((message, recipient_id)) = earlier {
                return Ok(Ok(Inserted {
                    message,
                    recipient_id,
                    replayed: true,
                    sender_previous: Position::START,
                    recipient_previous: Position::START,
                }));
            }
        }
        // Each participant's newest message before this one: ids follow commit order (one
        // writer), so it is the user's previous position (`Store` docs, "Positions").
        let sender = user_tail(conn, &mut self.user_tails, sender_id)?;
        let (sender_previous, sender_blocks) = (sender.last_id, sender.blocks);
        let (recipient_previous, recipient_blocks) = if recipient_id == sender_id {
            (sender_previous, 0)
        } else {
            let recipient = user_tail(conn, &mut self.user_tails, recipient_id)?;
            (recipient.last_id, recipient.blocks)
        };
        // In the writer's transaction: a block committed before is seen, one queued after
        // this insert in the batch comes after it (`Store::set_block`). A block between the
        // two needs both to take part in one, which their counter rows (read just above)
        // tell: most sends skip the lookup.
        if sender_blocks > 0 && recipient_blocks > 0 && self.blocked(sender_id, recipient_id)? {
            return Ok(Err(Error::Forbidden(Forbidden::Blocked)));
        }
        let key = ConversationKey::new(sender_id, recipient_id);
        let (low, high) = (key.low().0, key.high().0);
        let id = self.next_position()?;
        let conn = &self.ctx.conn;
        let tail = conversation_tail(conn, &mut self.conversation_tails, key)?;
        let seq = tail.count + tail.added + 1;
        let from_low = tail.low_count + tail.low_added;
        let sender_seq = if sender_id.0 == low {
            from_low + 1
        } else {
            seq - from_low
        };
        let inserted = conn
            .prepare_cached(sql::INSERT_MESSAGE)?
            .execute(rusqlite::params![
                id,
                sender_id.0,
                recipient_id.0,
                low,
                high,
                reader::datetime_to_micros(&created_at),
                new.body,
                new.idempotency_key,
                (tail.last_id > 0).then_some(tail.last_id),
                seq,
                sender_seq,
            ]);
        match inserted {
            Ok(_) => {}
            // The sender does not exist (foreign key): nothing was written.
            Err(e) if is_constraint(&e) => return Ok(Err(Error::NotFound(Entity::User))),
            Err(e) => return Err(e),
        }
        if seq % chain::MARK_EVERY == 0 {
            conn.prepare_cached(sql::INSERT_MARK)?
                .execute([low, high, seq, id])?;
        }
        tail.added += 1;
        if sender_id.0 == low {
            tail.low_added += 1;
        }
        let moved_from = std::mem::replace(&mut tail.last_id, id);
        self.move_activity(low, high, moved_from, id);
        let participants = if recipient_id == sender_id {
            &[sender_id][..]
        } else {
            &[sender_id, recipient_id][..]
        };
        for user in participants {
            // Read above, so the entry is there.
            let tail = self.user_tails.entry(*user).or_default();
            tail.added += 1;
            tail.last_id = id;
            tail.changed = true;
        }
        if recipient_id != sender_id {
            self.user_tails.entry(recipient_id).or_default().unread += 1;
        }
        Ok(Ok(Inserted {
            message: Message {
                id: MessageId(id),
                sender: new.sender.username.clone(),
                // As the recipient chose to write their name, whatever case the sender typed.
                recipient: recipient.username,
                created_at,
                body: new.body.clone(),
                edited: None,
                deleted: false,
            },
            recipient_id,
            replayed: false,
            sender_previous: Position(sender_previous),
            recipient_previous: Position(recipient_previous),
        }))
    }

    /// Whether `id` is a user who may send, as seen inside the open transaction: not found,
    /// or removed ([`Forbidden::AccountRemoved`]). Only ids committed before this
    /// transaction are cached (a user created in it could still roll back).
    fn sender_may_send(&mut self, id: UserId) -> rusqlite::Result<Result<()>> {
        if self.known_ids.contains(&id) || self.pending_ids.contains(&id) {
            return Ok(Ok(()));
        }
        let removed: Option<bool> = self
            .ctx
            .conn
            .prepare_cached(sql::USER_EXISTS)?
            .query_row([id.0], |row| row.get(0))
            .optional()?;
        Ok(match removed {
            None => Err(Error::NotFound(Entity::User)),
            Some(true) => Err(Error::Forbidden(Forbidden::AccountRemoved)),
            Some(false) => {
                self.pending_ids.insert(id);
                Ok(())
            }
        })
    }

    /// The user holding `name`'s key as seen inside the open transaction, with their name
    /// as chosen. Users found here are cached only after the commit, since the transaction
    /// may yet roll back a user created in it.
    fn resolve_in_tx(&mut self, name: &Username) -> rusqlite::Result<Option<User>> {
        let key = name.key();
        if let Some(user) = self.ctx.names_mut().get(&key) {
            return Ok(Some(user.clone()));
        }
        if let Some(user) = self.pending_names.get(&key) {
            return Ok(Some(user.clone()));
        }
        let user = self
            .ctx
            .conn
            .prepare_cached(sql::USER_BY_KEY)?
            .query_row([&key], reader::user_from_row)
            .optional()?;
        if let Some(user) = &user {
            self.pending_names.insert(key, user.clone());
        }
        Ok(user)
    }
}

/// Runs `ops` as one transaction through `run` and returns the committed jobs with their
/// outcomes, emptying `ops`; failed jobs are answered here. If the batch fails for a reason
/// that concerns the whole database (busy, full, corrupt, I/O: [`error::affects_everyone`]),
/// every job gets that error; otherwise each job is retried in a transaction of its own, so
/// one bad job cannot fail the others.
fn commit_or_retry(
    ops: &mut Vec<WriteOp>,
    mut run: impl FnMut(&[WriteOp]) -> rusqlite::Result<Vec<Outcome>>,
) -> Vec<Committed> {
    match run(ops) {
        Ok(outcomes) if outcomes.len() == ops.len() => ops.drain(..).zip(outcomes).collect(),
        Ok(_) => {
            for op in ops.drain(..) {
                op.fail(Error::bug("writer lost a job's outcome"));
            }
            Vec::new()
        }
        Err(e) if ops.len() > 1 && !error::affects_everyone(&e) => {
            tracing::warn!(error = %e, jobs = ops.len(), "group commit failed, retrying jobs one by one");
            let mut committed = Vec::with_capacity(ops.len());
            for op in ops.drain(..) {
                match run(std::slice::from_ref(&op)) {
                    Ok(mut outcomes) if outcomes.len() == 1 => {
                        if let Some(outcome) = outcomes.pop() {
                            committed.push((op, outcome));
                        }
                    }
                    Ok(_) => op.fail(Error::bug("writer lost a job's outcome")),
                    Err(e) => op.fail(error::map(e)),
                }
            }
            committed
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = ops.len(), "write transaction failed");
            let mut ops = ops.drain(..);
            let last = ops.next_back();
            for op in ops {
                op.fail(error::map(error::duplicate(&e)));
            }
            if let Some(op) = last {
                op.fail(error::map(e));
            }
            Vec::new()
        }
    }
}

/// A conversation's chain in the open transaction: its message count before it and how many
/// of those `conv_low` sent, the messages it added and how many of them `conv_low` sent, its
/// newest id now (`0` for none).
pub(super) struct Tail {
    count: i64,
    low_count: i64,
    added: i64,
    low_added: i64,
    last_id: i64,
}

impl Tail {
    /// How many of the conversation's messages `user` (one of its two sides) has sent so far.
    fn sent_by(&self, key: ConversationKey, user: i64) -> i64 {
        let from_low = self.low_count + self.low_added;
        if user == key.low().0 {
            from_low
        } else {
            self.count + self.added - from_low
        }
    }
}

/// Where conversation `key` stands in the open transaction: read from its row (a primary-key
/// lookup) the first time the batch meets it.
fn conversation_tail<'t>(
    conn: &Connection,
    tails: &'t mut HashMap<ConversationKey, Tail>,
    key: ConversationKey,
) -> rusqlite::Result<&'t mut Tail> {
    Ok(match tails.entry(key) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let (count, last_id, low_count) = conn
                .prepare_cached(sql::CONVERSATION_TAIL_COUNTS)?
                .query_row([key.low().0, key.high().0], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?
                .unwrap_or((0, 0, 0));
            entry.insert(Tail {
                count,
                low_count,
                added: 0,
                low_added: 0,
                last_id,
            })
        }
    })
}

/// A user in the open transaction: the messages it added, the user's newest position (`0`
/// for none), what it added to their unread total, how many blocks they take part in, and
/// whether any of the first three changed.
#[derive(Default)]
pub(super) struct UserTail {
    added: i64,
    last_id: i64,
    unread: i64,
    /// The blocks the user takes part in, either side (kept in step by `set_block`).
    blocks: i64,
    changed: bool,
}

/// Where a message sits: its conversation, sender and numbers (`chatcore_messages` columns).
struct Place {
    low: i64,
    high: i64,
    sender: i64,
    seq: i64,
    sender_seq: i64,
}

impl Place {
    /// How many of the conversation's messages up to this one `user` sent: one of the
    /// sender's numbers or the other's, so a marker's move is counted without a walk.
    fn sent_by(&self, user: i64) -> i64 {
        if self.sender == user {
            self.sender_seq
        } else {
            self.seq - self.sender_seq
        }
    }
}

/// The place of message `id`, if it exists (a rowid lookup).
fn message_place(conn: &Connection, id: i64) -> rusqlite::Result<Option<Place>> {
    conn.prepare_cached(sql::MESSAGE_PLACE)?
        .query_row([id], |row| {
            Ok(Place {
                low: row.get(0)?,
                high: row.get(1)?,
                sender: row.get(2)?,
                seq: row.get(3)?,
                sender_seq: row.get(4)?,
            })
        })
        .optional()
}

/// Where `user`'s messages stand in the open transaction: read from their counter row (a
/// primary-key lookup) the first time the batch meets them.
fn user_tail<'t>(
    conn: &Connection,
    tails: &'t mut HashMap<UserId, UserTail>,
    user: UserId,
) -> rusqlite::Result<&'t mut UserTail> {
    Ok(match tails.entry(user) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let (last_id, blocks) = conn
                .prepare_cached(sql::USER_TAIL)?
                .query_row([user.0], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?
                .unwrap_or((0, 0));
            entry.insert(UserTail {
                added: 0,
                last_id,
                unread: 0,
                blocks,
                changed: false,
            })
        }
    })
}

/// The newest stored message's timestamp (one lookup at the end of the rowid b-tree), so
/// timestamps keep increasing with ids across restarts even if the clock stepped back.
/// `None` before the schema exists or when there are no messages; any other failure is an
/// error (the store does not open), never taken for "no messages".
pub(super) fn latest_timestamp(conn: &Connection) -> chatcore::Result<Option<DateTime<Utc>>> {
    let micros = conn.query_row(
        "SELECT created_at FROM chatcore_messages ORDER BY id DESC LIMIT 1",
        [],
        |row| row.get::<_, i64>(0),
    );
    match micros {
        Ok(micros) => {
            reader::micros_to_datetime(micros)
                .map(Some)
                .map_err(|message| chatcore::Error::Corrupt {
                    message,
                    source: None,
                })
        }
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(rusqlite::Error::SqliteFailure(_, Some(message))) if message.starts_with("no such table") => {
            Ok(None)
        }
        Err(e) => Err(error::map(e)),
    }
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ffi::ErrorCode::ConstraintViolation)
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// A job told apart by the first byte of its token, and where its answer arrives.
    fn job(n: u8) -> (WriteOp, oneshot::Receiver<Result<()>>) {
        let (reply, answer) = oneshot::channel();
        let mut token_hash = [0u8; 32];
        token_hash[0] = n;
        (WriteOp::DeleteSession { token_hash, reply }, answer)
    }

    fn tag(op: &WriteOp) -> u8 {
        match op {
            WriteOp::DeleteSession { token_hash, .. } => token_hash[0],
            _ => unreachable!("the tests queue session deletes only"),
        }
    }

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(format!("code {code}")))
    }

    /// A batch runner that fails every batch holding a job tagged `poison` with `error`,
    /// and records the tags of each batch it was given.
    fn runner(
        poison: u8,
        error: fn() -> rusqlite::Error,
        calls: &mut Vec<Vec<u8>>,
    ) -> impl FnMut(&[WriteOp]) -> rusqlite::Result<Vec<Outcome>> + '_ {
        move |batch| {
            let tags: Vec<u8> = batch.iter().map(tag).collect();
            calls.push(tags.clone());
            if tags.contains(&poison) {
                return Err(error());
            }
            Ok(tags.iter().map(|_| Outcome::Unit(Ok(()))).collect())
        }
    }

    fn queue(tags: &[u8]) -> (Vec<WriteOp>, Vec<oneshot::Receiver<Result<()>>>) {
        tags.iter().map(|&n| job(n)).unzip()
    }

    /// One job's own failure (a constraint, not the database) fails the batch; each job is
    /// then retried alone: the others commit, the failing one alone gets the error.
    #[test]
    fn a_batch_failing_because_of_one_job_is_retried_job_by_job() {
        let (mut ops, mut answers) = queue(&[1, 2, 3]);
        let mut calls = Vec::new();
        let committed = commit_or_retry(
            &mut ops,
            runner(2, || failure(rusqlite::ffi::SQLITE_CONSTRAINT), &mut calls),
        );
        assert!(ops.is_empty());
        assert_eq!(calls, vec![vec![1, 2, 3], vec![1], vec![2], vec![3]]);
        let tags: Vec<u8> = committed.iter().map(|(op, _)| tag(op)).collect();
        assert_eq!(tags, [1, 3], "committed, to be answered once durable");
        match answers[1].try_recv() {
            Ok(Err(Error::Internal { .. })) => {}
            other => panic!("the failing job gets its error, got {other:?}"),
        }
        for i in [0, 2] {
            assert!(
                answers[i].try_recv().is_err(),
                "not answered before it is durable"
            );
        }
    }

    /// A failure of the database (busy here) would fail every retry too: every job gets it
    /// at once, without a retry.
    #[test]
    fn a_batch_failing_because_of_the_database_fails_every_job() {
        let (mut ops, answers) = queue(&[1, 2, 3]);
        let mut calls = Vec::new();
        let committed = commit_or_retry(
            &mut ops,
            runner(2, || failure(rusqlite::ffi::SQLITE_BUSY), &mut calls),
        );
        assert!(committed.is_empty());
        assert_eq!(calls, vec![vec![1, 2, 3]], "no retry");
        for mut answer in answers {
            match answer.try_recv() {
                Ok(Err(Error::Unavailable { .. })) => {}
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
    }

    /// A batch of one is not retried; a batch without the failing job commits whole.
    #[test]
    fn a_single_job_is_not_retried_and_a_clean_batch_commits_once() {
        let (mut ops, mut answers) = queue(&[2]);
        let mut calls = Vec::new();
        let committed = commit_or_retry(
            &mut ops,
            runner(2, || failure(rusqlite::ffi::SQLITE_CONSTRAINT), &mut calls),
        );
        assert!(committed.is_empty());
        assert_eq!(calls, vec![vec![2]]);
        assert!(matches!(answers[0].try_recv(), Ok(Err(Error::Internal { .. }))));

        let (mut ops, _answers) = queue(&[4, 5, 6]);
        let mut calls = Vec::new();
        let committed = commit_or_retry(
            &mut ops,
            runner(2, || failure(rusqlite::ffi::SQLITE_CONSTRAINT), &mut calls),
        );
        assert_eq!(calls, vec![vec![4, 5, 6]]);
        assert_eq!(committed.len(), 3);
    }
}
