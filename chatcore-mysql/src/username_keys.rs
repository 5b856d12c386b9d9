//! Migration 3: usernames become unique without regard to case. Each user gets
//! `username_key`, [`Username::key_of`] of their stored name (MySQL cannot compute NFKC, so
//! Rust does), and the column is made unique.
//!
//! Users made before the rule may already share a key (`Alice` and `alice`). They are never
//! merged, and never silently: the oldest (lowest id) keeps the key; each other one gets
//! [`fallback_key`], the key followed by a NUL byte and their id, which no name can produce
//! (names hold no control characters), so they can no longer be found by name until an
//! operator renames them; each collision is a note of the [`chatcore::MigrationReport`]. A
//! stored name whose key does not fit the column (only names stored before NFKC could be
//! that long) is treated the same way.
//!
//! Safe to run again after an interruption: every step checks what is already there.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chatcore::{Result, Username};
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row};

use crate::error;
use crate::schema::BoxFuture;

/// The widest key the column holds, in bytes. A name accepted by [`Username::parse`] (at most
/// 150 characters after NFKC) has a key well below it.
pub(crate) const MAX_KEY_BYTES: usize = 1024;

/// Users read and updated per statement while filling the column.
const CHUNK: i64 = 1000;

/// The key a user gets when the key of their name is taken by an older user (or does not
/// fit): the key, a NUL byte and the user's id. No name produces a NUL byte, and ids are
/// unique, so it is unique too; it sorts right after the key it comes from.
pub(crate) fn fallback_key(key: &[u8], id: i64) -> Vec<u8> {
    let suffix = format!("\0{id}");
    let mut keep = key.len().min(MAX_KEY_BYTES - suffix.len());
    // Cut on a character boundary (keys are UTF-8), so the key still reads as text.
    while keep > 0 && keep < key.len() && (key[keep] & 0xC0) == 0x80 {
        keep -= 1;
    }
    let mut fallback = key[..keep].to_vec();
    fallback.extend_from_slice(suffix.as_bytes());
    fallback
}

/// The migration step (see the module docs); returns the notes for the operator.
pub(crate) fn migrate(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<Vec<String>>> {
    Box::pin(async move {
        if unique_index_exists(conn).await? {
            // An earlier run got as far as the index but was not recorded: the keys are in
            // place; report again who lost theirs.
            return separated_earlier(conn).await;
        }
        add_column(conn).await?;
        let mut notes = fill(conn).await?;
        notes.extend(separate_collisions(conn).await?);
        make_unique(conn).await?;
        Ok(notes)
    })
}

async fn exists(conn: &mut MySqlConnection, sql: &str) -> Result<bool> {
    let (count,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| error::map("reading the schema", e))?;
    Ok(count > 0)
}

async fn add_column(conn: &mut MySqlConnection) -> Result<()> {
    let there = exists(
        conn,
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'chatcore_users' AND COLUMN_NAME = 'username_key'",
    )
    .await?;
    if !there {
        sqlx::query("ALTER TABLE chatcore_users ADD COLUMN username_key VARBINARY(1024) NULL AFTER username")
            .execute(&mut *conn)
            .await
            .map_err(|e| error::map("adding chatcore_users.username_key", e))?;
    }
    Ok(())
}

/// Writes every user's key, in chunks of [`CHUNK`] users by id. Returns a note per name whose
/// key does not fit the column (it gets a fallback key at once).
async fn fill(conn: &mut MySqlConnection) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut after = 0i64;
    loop {
        let rows = sqlx::query("SELECT id, username FROM chatcore_users WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after)
            .bind(CHUNK)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| error::map("reading usernames to key", e))?;
        let Some(last) = rows.last() else { break };
        after = last
            .try_get("id")
            .map_err(|e| error::map("reading usernames to key", e))?;
        let mut query = QueryBuilder::<MySql>::new("UPDATE chatcore_users SET username_key = CASE id");
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row
                .try_get("id")
                .map_err(|e| error::map("reading usernames to key", e))?;
            let name: String = row
                .try_get_unchecked("username")
                .map_err(|e| error::map("reading usernames to key", e))?;
            let mut key = Username::key_of(&name).into_bytes();
            if key.len() > MAX_KEY_BYTES {
                key = fallback_key(&key, id);
                notes.push(format!(
                    "username {name:?} (user id {id}) is too long once normalized to be kept unique; \
                     it can no longer be found by name (login, messages to it): rename the user"
                ));
            }
            query.push(" WHEN ");
            query.push_bind(id);
            query.push(" THEN ");
            query.push_bind(key);
            ids.push(id);
        }
        query.push(" END WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        query.push(")");
        query
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|e| error::map("writing username keys", e))?;
    }
    Ok(notes)
}

/// Gives every user whose key an older user holds a fallback key; one note per key shared.
async fn separate_collisions(conn: &mut MySqlConnection) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT u.id AS id, u.username AS username, u.username_key AS username_key \
         FROM chatcore_users u JOIN (SELECT username_key FROM chatcore_users \
           GROUP BY username_key HAVING COUNT(*) > 1) d ON d.username_key = u.username_key \
         ORDER BY u.username_key, u.id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| error::map("finding usernames that differ only in case", e))?;
    // Each shared key with its users, oldest first.
    let mut shared: BTreeMap<Vec<u8>, Vec<(i64, String)>> = BTreeMap::new();
    for row in &rows {
        let decode = |e| error::map("finding usernames that differ only in case", e);
        let id: i64 = row.try_get("id").map_err(decode)?;
        let name: String = row.try_get_unchecked("username").map_err(decode)?;
        let key: Vec<u8> = row.try_get_unchecked("username_key").map_err(decode)?;
        shared.entry(key).or_default().push((id, name));
    }
    let mut notes = Vec::with_capacity(shared.len());
    for (key, users) in &shared {
        let Some(((keeper_id, keeper), others)) = users.split_first() else {
            continue;
        };
        for (id, _) in others {
            sqlx::query("UPDATE chatcore_users SET username_key = ? WHERE id = ?")
                .bind(fallback_key(key, *id))
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(|e| error::map("separating usernames that differ only in case", e))?;
        }
        let mut note = format!(
            "usernames that are now one name without regard to case: {keeper:?} (user id {keeper_id}, \
             the oldest) keeps it;"
        );
        for (n, (id, name)) in others.iter().enumerate() {
            let _ = write!(note, "{} {name:?} (user id {id})", if n == 0 { "" } else { "," });
        }
        note.push_str(
            " can no longer be found by name (login, messages to them, the conversation with \
             them) and keep their messages; nothing was merged. Rename each of them \
             (`username` and `username_key` = chatcore::Username::key_of(new name)) or delete them.",
        );
        notes.push(note);
    }
    Ok(notes)
}

async fn unique_index_exists(conn: &mut MySqlConnection) -> Result<bool> {
    exists(
        conn,
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'chatcore_users' AND INDEX_NAME = 'chatcore_users_username_key'",
    )
    .await
}

/// Makes the column required and unique, in one statement.
async fn make_unique(conn: &mut MySqlConnection) -> Result<()> {
    // Unique in byte order: the directory is a range of this index, sorted by key.
    sqlx::query(
        "ALTER TABLE chatcore_users MODIFY username_key VARBINARY(1024) NOT NULL, \
         ADD UNIQUE KEY chatcore_users_username_key (username_key)",
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| error::map("making chatcore_users.username_key unique", e))?;
    Ok(())
}

/// One note per user holding a fallback key (a NUL byte in the key).
async fn separated_earlier(conn: &mut MySqlConnection) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT id, username FROM chatcore_users WHERE LOCATE(X'00', username_key) > 0 ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| error::map("reading separated usernames", e))?;
    let mut notes = Vec::with_capacity(rows.len());
    for row in &rows {
        let decode = |e| error::map("reading separated usernames", e);
        let id: i64 = row.try_get("id").map_err(decode)?;
        let name: String = row.try_get_unchecked("username").map_err(decode)?;
        notes.push(format!(
            "username {name:?} (user id {id}) was kept apart from an older user's name that is the \
             same without regard to case (an earlier, interrupted run of this migration): it can no \
             longer be found by name; rename or delete it"
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_keys_follow_their_key_and_fit() {
        assert_eq!(fallback_key(b"alice", 7), b"alice\x007");
        assert!(fallback_key(b"alice", 7).as_slice() > b"alice".as_slice());
        assert!(fallback_key(b"alice", 7).as_slice() < b"alice.".as_slice());
        let long = "é".repeat(600); // 1,200 bytes
        let fallback = fallback_key(long.as_bytes(), 123);
        assert!(fallback.len() <= MAX_KEY_BYTES);
        assert!(fallback.ends_with(b"\x00123"));
        assert!(
            std::str::from_utf8(&fallback).is_ok(),
            "cut on a character boundary"
        );
    }
}
