//! `mark_read`: moving a read marker, with its read event, in one transaction sent as one
//! multi-statement round trip.
//!
//! The transaction locks the id sequence row `(0, 0)` of `chatcore_counts` first, as every
//! inserting batch does (see `writer.rs`), and holds it until `COMMIT`: the read event's
//! position comes from that sequence, so positions stay in commit order for both users, and
//! no send of the conversation can commit between the marker's read of the inbox row and its
//! update (a concurrent send waits for the lock, then adds its unread on top). Every lock is
//! taken after the sequence row, so marks and batches never deadlock each other.
//!
//! Whether the marker moves is decided by the server from what it reads under the lock, kept
//! in session variables; the statements after that change rows only when it moves (their
//! `WHERE` tests the variable), so a mark that changes nothing writes nothing, and a single
//! round trip serves every outcome. The last statement, after `COMMIT`, reports the outcome
//! and both users' previous positions (bounded by the last position handed out before this
//! one, like the writer's).

use std::fmt::Write as _;

use sqlx::{Executor, MySqlConnection, Row};

use chatcore::{
    Entity, Error, MarkedRead, MessageId, MovedMarker, Position, ReadMarker, Result, User, UserId, Username,
};

use crate::error;
use crate::rows;
use crate::writer::{push_hex, push_previous_position};

/// The transaction of one `mark_read`. Every value written into the SQL is an integer or a
/// hex literal (the peer's key), so no input can change the statement.
pub(crate) fn mark_read_sql(reader: UserId, peer_key: &str, up_to: MessageId) -> String {
    let (reader, up_to) = (reader.0, up_to.0);
    let mut sql = String::with_capacity(4096);
    // Variables reset first: `SELECT ... INTO` leaves them unchanged when it finds no row, and
    // they live as long as the pooled connection.
    let _ = write!(
        sql,
        "SET @chatcore_reader = {reader}, @chatcore_up_to = {up_to}, @chatcore_last = NULL, \
         @chatcore_has = 0, @chatcore_old = NULL, @chatcore_unread = 0; \
         BEGIN; \
         SELECT total INTO @chatcore_last FROM chatcore_counts \
           WHERE low_id = 0 AND high_id = 0 FOR UPDATE; \
         SET @chatcore_peer = (SELECT id FROM chatcore_users WHERE username_key = X'"
    );
    push_hex(&mut sql, peer_key.as_bytes());
    sql.push_str(
        "'); \
         SELECT 1, read_up_to, unread INTO @chatcore_has, @chatcore_old, @chatcore_unread \
           FROM chatcore_inbox WHERE user_id = @chatcore_reader AND peer_id = @chatcore_peer FOR UPDATE; \
         SET @chatcore_in = EXISTS(SELECT 1 FROM chatcore_messages WHERE id = @chatcore_up_to \
           AND conversation_low = LEAST(@chatcore_reader, @chatcore_peer) \
           AND conversation_high = GREATEST(@chatcore_reader, @chatcore_peer)); \
         SET @chatcore_moves = (@chatcore_has = 1 AND @chatcore_in = 1 \
           AND (@chatcore_old IS NULL OR @chatcore_old < @chatcore_up_to)); \
         SET @chatcore_passed = IF(@chatcore_reader = @chatcore_peer, 0, (",
    );
    sql.push_str(rows::MARK_READ_PASSED);
    // The sequence row is updated only when the marker moves; a missing row leaves the
    // position NULL, which the read event's NOT NULL column refuses (strict mode), rolling
    // the mark back rather than reusing a position.
    sql.push_str(
        ")); \
         SET @chatcore_position = IF(@chatcore_moves, @chatcore_last + 1, NULL); \
         UPDATE chatcore_counts SET total = @chatcore_position \
           WHERE low_id = 0 AND high_id = 0 AND @chatcore_moves; \
         INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to) \
           SELECT @chatcore_position, @chatcore_reader, @chatcore_peer, @chatcore_up_to \
           FROM DUAL WHERE @chatcore_moves; \
         UPDATE chatcore_inbox SET read_up_to = @chatcore_up_to, unread = unread - @chatcore_passed \
           WHERE user_id = @chatcore_reader AND peer_id = @chatcore_peer AND @chatcore_moves; \
         UPDATE chatcore_counts SET total = total - @chatcore_passed \
           WHERE low_id = @chatcore_reader AND high_id = -1 AND @chatcore_passed > 0; \
         COMMIT; \
         SELECT @chatcore_peer AS peer_id, \
           (SELECT username FROM chatcore_users WHERE id = @chatcore_peer) AS peer, \
           @chatcore_has = 1 AND @chatcore_in = 1 AS in_conversation, \
           @chatcore_moves AS moved, @chatcore_position AS position, \
           IF(@chatcore_moves, @chatcore_up_to, @chatcore_old) AS read_up_to, \
           @chatcore_unread - @chatcore_passed AS unread, ",
    );
    push_previous_position(&mut sql, "@chatcore_reader");
    sql.push_str(" AS reader_previous, ");
    push_previous_position(&mut sql, "@chatcore_peer");
    sql.push_str(" AS peer_previous");
    sql
}

/// Runs the transaction of [`mark_read_sql`] on `conn` and reads its outcome. On an error the
/// transaction may still be open: the caller rolls it back (or drops the connection).
pub(crate) async fn mark_read(
    conn: &mut MySqlConnection,
    reader: &User,
    peer: &Username,
    up_to: MessageId,
) -> std::result::Result<Result<MarkedRead>, sqlx::Error> {
    let sql = mark_read_sql(reader.id, &peer.key(), up_to);
    let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await?;
    let row = rows
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("no answer from the mark_read transaction".into()))?;
    let int = |column: &str| row.try_get_unchecked::<Option<i64>, _>(column);
    let Some(peer_id) = int("peer_id")? else {
        return Ok(Err(Error::NotFound(Entity::User)));
    };
    if int("in_conversation")? != Some(1) {
        return Ok(Err(Error::NotFound(Entity::Message)));
    }
    let unread = int("unread")?.unwrap_or(0);
    let unread = u64::try_from(unread).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // The transaction has committed by now: what is left to go wrong is a bug, not a reason
    // to roll back.
    let Some(read_up_to) = int("read_up_to")?.map(MessageId) else {
        return Ok(Err(Error::bug(
            "mark_read: a marker that did not move and was not set",
        )));
    };
    if int("moved")? != Some(1) {
        return Ok(Ok(MarkedRead {
            unread,
            read_up_to,
            moved: None,
        }));
    }
    let (Some(position), Some(peer_name)) = (
        int("position")?,
        rows::text_opt(row, "peer").map_err(sqlx::Error::Decode)?,
    ) else {
        return Ok(Err(Error::bug(
            "mark_read: a moved marker without its position or peer",
        )));
    };
    let reader_previous = Position(int("reader_previous")?.unwrap_or(0));
    let peer_previous = Position(int("peer_previous")?.unwrap_or(0));
    Ok(Ok(MarkedRead {
        unread,
        read_up_to,
        moved: Some(MovedMarker {
            marker: ReadMarker {
                position: Position(position),
                reader: reader.username.clone(),
                peer: Username::from_stored(peer_name),
                up_to: read_up_to,
            },
            peer_id: UserId(peer_id),
            reader_previous,
            peer_previous,
        }),
    }))
}

/// Rolls back whatever `mark_read` (or `change_message`) left open after `err`, and maps `err`. A connection whose
/// rollback fails is dropped rather than handed back to the pool mid-transaction.
pub(crate) async fn fail(mut conn: sqlx::pool::PoolConnection<sqlx::MySql>, err: sqlx::Error) -> Error {
    if let Err(rollback) = conn.execute(sqlx::raw_sql("ROLLBACK")).await {
        tracing::warn!(error = %rollback, "rolling back a failed transaction failed; dropping its connection");
        drop(conn.detach());
    }
    error::map("marking read", err)
}
