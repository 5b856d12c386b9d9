//! `set_block`: a block started or ended, in one transaction sent as one multi-statement round
//! trip, like `mark_read` (`marks.rs`).
//!
//! The transaction locks the position sequence row `(0, 0)` of `chatcore_counts` before it
//! writes the block, as every inserting batch (`writer.rs`) and every change of a message
//! (`changes.rs`) does before it looks blocks up. So a block and a write of its pair commit
//! one after the other: a batch that held the lock first commits its messages before the
//! block; one that takes it after sees the block in its first read and refuses the pair's
//! sends. Once `set_block` answered, nothing between the two users is stored. A block takes
//! no position: the sequence row is only locked, not moved.

use std::fmt::Write as _;

use sqlx::{Executor, MySqlConnection, Row};

use chatcore::{Entity, Error, Result, User, UserId, Username};

use crate::rows;
use crate::writer::push_hex;

/// The transaction of one block. The key goes in as a hex literal and the ids are integers,
/// so no input can change the statement.
pub(crate) fn block_sql(blocker: UserId, blocked: &Username, on: bool) -> String {
    let blocker = blocker.0;
    let mut sql = String::with_capacity(1024);
    // Variables reset first: `SELECT ... INTO` leaves them unchanged when it finds no row.
    let _ = write!(
        sql,
        "SET @chatcore_target = NULL, @chatcore_target_key = NULL, @chatcore_blocker = NULL; \
         SELECT id, username_key INTO @chatcore_target, @chatcore_target_key FROM chatcore_users \
           WHERE username_key = X'"
    );
    push_hex(&mut sql, blocked.key().as_bytes());
    let _ = write!(
        sql,
        "'; SELECT id INTO @chatcore_blocker FROM chatcore_users WHERE id = {blocker}; \
         BEGIN; \
         SELECT total INTO @chatcore_sequence FROM chatcore_counts \
           WHERE low_id = 0 AND high_id = 0 FOR UPDATE; "
    );
    if on {
        sql.push_str(
            "INSERT IGNORE INTO chatcore_blocks (blocker_id, blocked_id, blocked_key) \
               SELECT @chatcore_blocker, @chatcore_target, @chatcore_target_key FROM DUAL \
               WHERE @chatcore_blocker IS NOT NULL AND @chatcore_target IS NOT NULL \
                 AND @chatcore_target <> @chatcore_blocker; ",
        );
    } else {
        let _ = write!(
            sql,
            "DELETE FROM chatcore_blocks WHERE blocker_id = {blocker} AND blocked_id = @chatcore_target; "
        );
    }
    sql.push_str(
        "COMMIT; \
         SELECT @chatcore_blocker AS blocker_id, u.id AS id, u.username AS username \
         FROM (SELECT 1) AS one LEFT JOIN chatcore_users u ON u.id = @chatcore_target",
    );
    sql
}

/// Runs the transaction of [`block_sql`] on `conn` and reads its outcome (the
/// `Store::set_block` errors). On an error the transaction may still be open: the caller
/// rolls it back (or drops the connection).
pub(crate) async fn set_block(
    conn: &mut MySqlConnection,
    blocker: UserId,
    blocked: &Username,
    on: bool,
) -> std::result::Result<Result<User>, sqlx::Error> {
    let sql = block_sql(blocker, blocked, on);
    let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await?;
    let row = rows
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("no answer from the block transaction".into()))?;
    let target: Option<i64> = row.try_get_unchecked("id")?;
    if target.is_none() {
        return Ok(Err(Error::NotFound(Entity::User)));
    }
    let user = rows::user(row).map_err(sqlx::Error::Decode)?;
    if user.id == blocker {
        return Ok(Err(Error::invalid("you cannot block yourself")));
    }
    let found_blocker: Option<i64> = row.try_get_unchecked("blocker_id")?;
    if on && found_blocker.is_none() {
        return Ok(Err(Error::NotFound(Entity::User)));
    }
    Ok(Ok(user))
}
