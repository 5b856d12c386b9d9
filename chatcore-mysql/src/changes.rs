//! `change_message`: an edit or a deletion with its event, in one transaction sent as one
//! multi-statement round trip, like `mark_read` (`marks.rs`).
//!
//! The transaction locks the position sequence row `(0, 0)` of `chatcore_counts` first, as
//! every inserting batch and every mark does, and holds it until `COMMIT`: the event's
//! position comes from that sequence, so positions stay in commit order for both users.
//! The message row is locked next (`FOR UPDATE`), so two changes of one message apply one
//! after the other. Whether anything changes is decided by the server from what it read under
//! the locks, kept in session variables; the statements after that write only when it does,
//! so a refused change writes nothing and one round trip serves every outcome. An edit looks
//! the participants' blocks up under the sequence lock, which `set_block` takes too, so a
//! block confirmed before is never slipped past (`blocks.rs`).
//!
//! The event is a row of `chatcore_read_events` with `kind` 1 (edit) or 2 (deletion), the
//! sender as `reader_id`, the recipient as `peer_id` and the message as `up_to` (schema
//! version 6): read back with the message as it is now.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use sqlx::{Executor, MySqlConnection, Row};

use chatcore::store::{ChangeEvent, Changed, MessageChange};
use chatcore::{Entity, Error, Forbidden, MessageId, Position, Result, UserId};

use crate::rows;
use crate::writer::{push_hex, push_previous_position};

/// The blocks between the participants of the message a change reads (its session
/// variables), both ways: two primary-key lookups.
pub(crate) const BLOCKS_OF_CHANGE: &str = "SELECT 1 FROM chatcore_blocks FORCE INDEX (PRIMARY) \
     WHERE (blocker_id = @chatcore_from AND blocked_id = @chatcore_to) \
        OR (blocker_id = @chatcore_to AND blocked_id = @chatcore_from)";

/// The transaction of one change. Every value written into the SQL is an integer, a hex
/// literal (the body) or a formatted timestamp, so no input can change the statement.
pub(crate) fn change_sql(sender: UserId, id: MessageId, change: &MessageChange) -> String {
    let (sender, id) = (sender.0, id.0);
    let mut sql = String::with_capacity(4096);
    // Variables reset first: `SELECT ... INTO` leaves them unchanged when it finds no row.
    let is_edit = u8::from(matches!(change, MessageChange::Edit { .. }));
    let _ = write!(
        sql,
        "SET @chatcore_sender = {sender}, @chatcore_message = {id}, @chatcore_last = NULL, \
         @chatcore_found = 0, @chatcore_from = NULL, @chatcore_to = NULL, @chatcore_was_deleted = NULL, \
         @chatcore_created = NULL; \
         BEGIN; \
         SELECT total INTO @chatcore_last FROM chatcore_counts \
           WHERE low_id = 0 AND high_id = 0 FOR UPDATE; \
         SELECT 1, sender_id, recipient_id, deleted, created_at \
           INTO @chatcore_found, @chatcore_from, @chatcore_to, @chatcore_was_deleted, @chatcore_created \
           FROM chatcore_messages WHERE id = @chatcore_message FOR UPDATE; \
         SET @chatcore_blocked = {is_edit} AND @chatcore_found = 1 AND EXISTS ({BLOCKS_OF_CHANGE}); \
         SET @chatcore_in_window = "
    );
    match change {
        MessageChange::Edit {
            not_before: Some(not_before),
            ..
        } => push_timestamp_comparison(&mut sql, not_before),
        _ => sql.push('1'),
    }
    let kind = match change {
        MessageChange::Edit { .. } => 1,
        MessageChange::Delete => 2,
    };
    let _ = write!(
        sql,
        "; SET @chatcore_changes = (@chatcore_found = 1 AND @chatcore_from = @chatcore_sender \
           AND @chatcore_was_deleted = 0 AND @chatcore_blocked = 0 AND @chatcore_in_window = 1); \
         SET @chatcore_position = IF(@chatcore_changes, @chatcore_last + 1, NULL), \
           @chatcore_at = UTC_TIMESTAMP(6), @chatcore_is_edit = {is_edit}; \
         UPDATE chatcore_counts SET total = @chatcore_position \
           WHERE low_id = 0 AND high_id = 0 AND @chatcore_changes; \
         UPDATE chatcore_messages SET "
    );
    match change {
        MessageChange::Edit { body, .. } => {
            sql.push_str("body = _utf8mb4 X'");
            push_hex(&mut sql, body.as_bytes());
            sql.push_str("', edited_at = @chatcore_at");
        }
        MessageChange::Delete => sql.push_str("body = '', edited_at = NULL, deleted = 1"),
    }
    let _ = write!(
        sql,
        " WHERE id = @chatcore_message AND @chatcore_changes; \
         INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to, kind) \
           SELECT @chatcore_position, @chatcore_from, @chatcore_to, @chatcore_message, {kind} \
           FROM DUAL WHERE @chatcore_changes; \
         COMMIT; \
         SELECT @chatcore_found AS found, @chatcore_from AS sender_id, @chatcore_to AS recipient_id, \
           @chatcore_was_deleted AS was_deleted, @chatcore_blocked AS blocked, \
           @chatcore_in_window AS in_window, \
           @chatcore_changes AS changed, @chatcore_position AS position, "
    );
    push_previous_position(&mut sql, "@chatcore_from");
    sql.push_str(" AS sender_previous, ");
    push_previous_position(&mut sql, "@chatcore_to");
    sql.push_str(
        " AS recipient_previous, m.id AS id, s.username AS sender, r.username AS recipient, \
         m.created_at AS created_at, m.body AS body, m.edited_at AS edited_at, m.deleted AS deleted \
         FROM (SELECT 1) AS one \
         LEFT JOIN chatcore_messages m ON m.id = @chatcore_message \
         LEFT JOIN chatcore_users s ON s.id = m.sender_id \
         LEFT JOIN chatcore_users r ON r.id = m.recipient_id",
    );
    sql
}

/// `@chatcore_created >= '<not_before>'` as a literal in MySQL's `DATETIME(6)` format.
fn push_timestamp_comparison(sql: &mut String, not_before: &DateTime<Utc>) {
    let _ = write!(
        sql,
        "(@chatcore_created >= CAST('{}' AS DATETIME(6)))",
        not_before.format("%Y-%m-%d %H:%M:%S%.6f")
    );
}

/// Runs the transaction of [`change_sql`] on `conn` and reads its outcome. On an error the
/// transaction may still be open: the caller rolls it back (or drops the connection).
pub(crate) async fn change_message(
    conn: &mut MySqlConnection,
    sender: UserId,
    id: MessageId,
    change: &MessageChange,
) -> std::result::Result<Result<Changed>, sqlx::Error> {
    let sql = change_sql(sender, id, change);
    let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await?;
    let row = rows
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("no answer from the change transaction".into()))?;
    let int = |column: &str| row.try_get_unchecked::<Option<i64>, _>(column);
    if int("found")? != Some(1) {
        return Ok(Err(Error::NotFound(Entity::Message)));
    }
    let (Some(from), Some(to)) = (int("sender_id")?, int("recipient_id")?) else {
        return Ok(Err(Error::bug("change_message: a message without participants")));
    };
    if from != sender.0 {
        return Ok(Err(if to == sender.0 {
            Error::Forbidden(Forbidden::NotTheSender)
        } else {
            Error::NotFound(Entity::Message)
        }));
    }
    let message = rows::message(row).map_err(sqlx::Error::Decode)?;
    if int("was_deleted")? != Some(0) {
        return Ok(match change {
            MessageChange::Edit { .. } => Err(Error::NotFound(Entity::Message)),
            MessageChange::Delete => Ok(Changed { message, event: None }),
        });
    }
    if int("blocked")? != Some(0) {
        return Ok(Err(Error::Forbidden(Forbidden::Blocked)));
    }
    if int("in_window")? != Some(1) {
        return Ok(Err(Error::Forbidden(Forbidden::EditWindowClosed)));
    }
    let (Some(1), Some(position)) = (int("changed")?, int("position")?) else {
        return Ok(Err(Error::bug("change_message: a change that was not stored")));
    };
    Ok(Ok(Changed {
        message,
        event: Some(ChangeEvent {
            position: Position(position),
            recipient_id: UserId(to),
            sender_previous: Position(int("sender_previous")?.unwrap_or(0)),
            recipient_previous: Position(int("recipient_previous")?.unwrap_or(0)),
        }),
    }))
}
