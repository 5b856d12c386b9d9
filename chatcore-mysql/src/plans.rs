//! `EXPLAIN` checks: every query of the store runs on the index it was written for, never a
//! full table scan. Runs against the MariaDB/MySQL of `CHATCORE_MYSQL_URL` on its own database.

use sqlx::mysql::MySqlArguments;
use sqlx::query::Query;
use sqlx::{ConnectOptions, Connection, MySql, MySqlConnection, Row};

use chatcore::Backend;

use crate::testing::TestDatabase;
use crate::{MysqlConfig, rows};

/// One row of `EXPLAIN`.
#[derive(Debug)]
struct Step {
    table: String,
    access: String,
    key: Option<String>,
    key_len: Option<String>,
    extra: String,
}

async fn explain(conn: &mut MySqlConnection, query: Query<'_, MySql, MySqlArguments>) -> Vec<Step> {
    let rows = query.fetch_all(conn).await.expect("EXPLAIN");
    rows.iter()
        .map(|row| Step {
            table: rows::text_opt(row, "table").unwrap().unwrap_or_default(),
            access: rows::text_opt(row, "type").unwrap().unwrap_or_default(),
            key: rows::text_opt(row, "key").unwrap(),
            key_len: rows::text_opt(row, "key_len").unwrap(),
            extra: rows::text_opt(row, "Extra").unwrap().unwrap_or_default(),
        })
        .collect()
}

/// Asserts that every step on a real table uses an index lookup or range, and that the step
/// on `alias` uses `key`. Steps on `<union..>` / `<derived..>` read the bounded temporary
/// result of the branches (at most `offset + limit` rows each), not a table.
fn assert_plan(name: &str, steps: &[Step], alias: &str, key: &str) {
    eprintln!("{name}: {steps:?}");
    assert!(!steps.is_empty(), "{name}: no plan");
    for step in steps {
        if step.table.starts_with('<') || step.table.is_empty() {
            continue;
        }
        assert!(
            matches!(
                step.access.as_str(),
                "const" | "eq_ref" | "ref" | "range" | "system"
            ),
            "{name}: table {} is read with access type {:?} (plan: {steps:?})",
            step.table,
            step.access
        );
        assert!(
            step.key.is_some(),
            "{name}: table {} uses no index ({steps:?})",
            step.table
        );
        // Pages come off the index in order: sorting would read the whole range first.
        assert!(
            !step.extra.contains("filesort"),
            "{name}: table {} is sorted, not read in index order ({steps:?})",
            step.table
        );
    }
    assert!(
        steps
            .iter()
            .any(|s| s.table == alias && s.key.as_deref() == Some(key)),
        "{name}: expected {alias} to use {key} (plan: {steps:?})"
    );
}

/// Asserts that every step of a query made of `MAX` lookups on an index prefix reads no
/// table row at all: the optimizer answers each `MAX` with one index dive at plan time
/// ("Select tables optimized away"), so the cost does not grow with the user's history.
fn assert_index_dives(name: &str, steps: &[Step], dives: usize) {
    eprintln!("{name}: {steps:?}");
    for step in steps {
        assert!(
            step.table.is_empty() && step.key.is_none(),
            "{name}: a step reads table {:?} ({steps:?})",
            step.table
        );
        assert!(
            matches!(
                step.extra.as_str(),
                "Select tables optimized away" | "No tables used"
            ),
            "{name}: unexpected step {step:?} ({steps:?})"
        );
    }
    let optimized = steps
        .iter()
        .filter(|s| s.extra == "Select tables optimized away")
        .count();
    assert_eq!(optimized, dives, "{name}: {steps:?}");
}

/// Rows and index entries read by this connection so far (`Handler_read_%`).
async fn handler_reads(conn: &mut MySqlConnection) -> i64 {
    let rows = sqlx::query("SHOW SESSION STATUS LIKE 'Handler_read%'")
        .fetch_all(conn)
        .await
        .expect("SHOW STATUS");
    rows.iter()
        .map(|row| {
            let value = rows::text(row, "Value").unwrap();
            value.parse::<i64>().unwrap()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_use_indexes() {
    let db = TestDatabase::create("chatcore_mysql_test_")
        .await
        .expect("create a test database");
    let options = db.options().unwrap();
    let store = db.store(MysqlConfig::default()).await.expect("migrated store");

    // Enough rows that the optimizer's choices are the ones it makes in production: 200 users,
    // 20,000 messages over 1,000 conversations, a few hundred sessions.
    let mut conn = options.connect().await.expect("connect");
    let users: Vec<String> = (1..=200)
        .map(|i| format!("('User{i:03}', 'user{i:03}', 'hash', UTC_TIMESTAMP(6))"))
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_users (username, username_key, password_hash, created_at) VALUES {}",
        users.join(",")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    for chunk in 0..20 {
        let values: Vec<String> = (0..1000)
            .map(|n| {
                let i = chunk * 1000 + n + 1;
                let sender = i % 200 + 1;
                let recipient = (i * 7 + i / 200) % 200 + 1;
                let (low, high) = (sender.min(recipient), sender.max(recipient));
                format!(
                    "({i},{sender},{recipient},{low},{high},UTC_TIMESTAMP(6),'body',UNHEX(SHA2('k{i}', 256)))"
                )
            })
            .collect();
        sqlx::raw_sql(&format!(
            "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, conversation_high, \
             created_at, body, idempotency_key_hash) VALUES {}",
            values.join(",")
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let sessions: Vec<String> = (1..=300)
        .map(|i| {
            format!(
                "(UNHEX(SHA2('{i}', 256)), {}, DATE_ADD(UTC_TIMESTAMP(6), INTERVAL 1 DAY))",
                i % 200 + 1
            )
        })
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_sessions (token_hash, user_id, expires_at) VALUES {}",
        sessions.join(",")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        "INSERT INTO chatcore_counts (low_id, high_id, total) \
         SELECT conversation_low, conversation_high, COUNT(*) FROM chatcore_messages \
         GROUP BY conversation_low, conversation_high",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // A long conversation between users 1 and 2 (5,000 messages, ids 20001 to 25000, each
    // writing every other one), for the cost of a read marker that passes over a few of them.
    let long: Vec<String> = (20_001..=25_000)
        .map(|i| {
            let (sender, recipient) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            format!("({i},{sender},{recipient},1,2,UTC_TIMESTAMP(6),'body',NULL)")
        })
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, conversation_high, \
         created_at, body, idempotency_key_hash) VALUES {}",
        long.join(",")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    // The inbox and unread totals of these messages, as migration 4 fills them for a database
    // that had messages before it (its statements can run again).
    for step in crate::schema::MIGRATIONS
        .iter()
        .find(|m| m.version == 4)
        .unwrap()
        .steps
    {
        if let crate::schema::Step::Sql(statement) = step {
            sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
        }
    }
    // 2,000 read events, positions 25001 to 27000, spread over the users as readers and peers;
    // the sequence row after them.
    let reads: Vec<String> = (25_001..=27_000)
        .map(|p| format!("({p},{},{},{})", p % 200 + 1, (p * 7) % 200 + 1, p - 25_000))
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to) VALUES {}; \
         UPDATE chatcore_counts SET total = 27000 WHERE low_id = 0 AND high_id = 0",
        reads.join(",")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    // Each user blocks three others.
    let blocks: Vec<String> = (1..=200)
        .flat_map(|blocker: i64| {
            [3, 11, 29].map(|step| {
                let blocked = (blocker + step - 1) % 200 + 1;
                format!("({blocker},{blocked},'user{blocked:03}')")
            })
        })
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_blocks (blocker_id, blocked_id, blocked_key) VALUES {}",
        blocks.join(",")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        "ANALYZE TABLE chatcore_users, chatcore_messages, chatcore_sessions, chatcore_counts, \
         chatcore_inbox, chatcore_read_events, chatcore_blocks",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let e = |sql: &str| format!("EXPLAIN {sql}");
    // Rows that exist: a miss on a unique key is planned as "impossible WHERE", not a lookup.
    let token_hash = crate::writer::key_hash("1");

    // Users are found by key (binary), whatever case the name is written in.
    let key = b"user042".as_slice();
    let sql = e(rows::FIND_USER);
    let plan = explain(&mut conn, sqlx::query(&sql).bind(key)).await;
    assert_plan(
        "find_user",
        &plan,
        "chatcore_users",
        "chatcore_users_username_key",
    );

    let sql = e(rows::CREDENTIALS);
    let plan = explain(&mut conn, sqlx::query(&sql).bind(key)).await;
    assert_plan(
        "credentials",
        &plan,
        "chatcore_users",
        "chatcore_users_username_key",
    );

    let sql = e(rows::LIST_USERS);
    for (prefix, after) in [
        ("USER1", None),
        ("", None),
        ("", Some("User150")),
        ("user", Some("nobody")),
    ] {
        let after_key = after.map(|a: &str| a.to_lowercase()).unwrap_or_default();
        let plan = explain(
            &mut conn,
            sqlx::query(&sql)
                .bind(rows::like_prefix(prefix).into_bytes())
                .bind(after_key.clone().into_bytes())
                .bind(after)
                .bind(after_key.into_bytes())
                .bind(3i64)
                .bind(20u32),
        )
        .await;
        assert_plan(
            "list_users",
            &plan,
            "chatcore_users",
            "chatcore_users_username_key",
        );
        let step = plan.iter().find(|s| s.table == "chatcore_users").unwrap();
        assert_eq!(
            step.access, "range",
            "the prefix and the cursor bound one range: {plan:?}"
        );
    }

    let sql = e(rows::DELETE_EXPIRED_SESSIONS);
    let plan = explain(&mut conn, sqlx::query(&sql).bind(chrono::Utc::now().naive_utc())).await;
    assert_plan(
        "delete_expired_sessions",
        &plan,
        "chatcore_sessions",
        "chatcore_sessions_expires",
    );

    let sql = e(rows::SESSION_USER);
    let plan = explain(
        &mut conn,
        sqlx::query(&sql)
            .bind(token_hash.as_slice())
            .bind(chrono::Utc::now().naive_utc()),
    )
    .await;
    assert_plan("session_user", &plan, "t", "PRIMARY");

    let sql = e(rows::MESSAGE_FOR);
    // Message 500 was sent by user 101.
    let plan = explain(
        &mut conn,
        sqlx::query(&sql).bind(500i64).bind(101i64).bind(101i64),
    )
    .await;
    assert_plan("message_for", &plan, "m", "PRIMARY");

    let sql = e(rows::CONVERSATION_PAGE);
    for before in [i64::MAX, 10_000] {
        let plan = explain(
            &mut conn,
            sqlx::query(&sql)
                .bind(5i64)
                .bind(5i64)
                .bind(b"user010".as_slice())
                .bind(5i64)
                .bind(b"user010".as_slice())
                .bind(5i64)
                .bind(b"user010".as_slice())
                .bind(before)
                .bind(15u32)
                .bind(0u32),
        )
        .await;
        assert_plan("conversation_page", &plan, "m", "chatcore_messages_conversation");
        // All three key parts: the `before` cursor is where the range starts, not a filter.
        let step = plan.iter().find(|s| s.table == "m").unwrap();
        assert_eq!(
            (step.access.as_str(), step.key_len.as_deref()),
            ("range", Some("24")),
            "{plan:?}"
        );
        assert_plan("conversation_page total", &plan, "c", "PRIMARY");
    }

    let sql = e(rows::USER_MESSAGES);
    let plan = explain(
        &mut conn,
        sqlx::query(&sql)
            .bind(5i64)
            .bind(5i64)
            .bind(i64::MAX)
            .bind(30u64)
            .bind(5i64)
            .bind(5i64)
            .bind(i64::MAX)
            .bind(30u64)
            .bind(15u32)
            .bind(15u32),
    )
    .await;
    assert_plan("user_messages", &plan, "m", "chatcore_messages_sender");
    assert_plan("user_messages", &plan, "m", "chatcore_messages_recipient");

    let sql = e(rows::MESSAGES_AFTER);
    let plan = explain(
        &mut conn,
        sqlx::query(&sql)
            .bind(5i64)
            .bind(100i64)
            .bind(1000u32)
            .bind(5i64)
            .bind(5i64)
            .bind(100i64)
            .bind(1000u32)
            .bind(1000u32),
    )
    .await;
    assert_plan("messages_after", &plan, "m", "chatcore_messages_sender");
    assert_plan("messages_after", &plan, "m", "chatcore_messages_recipient");

    let sql = e(rows::LATEST_POSITION);
    let plan = explain(
        &mut conn,
        sqlx::query(&sql).bind(5i64).bind(5i64).bind(5i64).bind(5i64),
    )
    .await;
    assert_index_dives("latest_position", &plan, 4);

    let sql = e(rows::EVENTS_AFTER);
    for after in [0i64, 15_000] {
        let plan = explain(
            &mut conn,
            sqlx::query(&sql)
                .bind(5i64)
                .bind(after)
                .bind(100u32)
                .bind(5i64)
                .bind(5i64)
                .bind(after)
                .bind(100u32)
                .bind(5i64)
                .bind(after)
                .bind(100u32)
                .bind(5i64)
                .bind(5i64)
                .bind(after)
                .bind(100u32)
                .bind(100u32),
        )
        .await;
        assert_plan("events_after", &plan, "m", "chatcore_messages_sender");
        assert_plan("events_after", &plan, "m", "chatcore_messages_recipient");
        assert_plan("events_after", &plan, "e", "chatcore_read_events_reader");
        assert_plan("events_after", &plan, "e", "chatcore_read_events_peer");
        for step in plan.iter().filter(|s| s.table == "m" || s.table == "e") {
            assert_eq!(step.access, "range", "the position bounds the range: {plan:?}");
        }
    }

    let sql = e(rows::FEED_AFTER);
    for after in [0i64, 15_000] {
        let plan = explain(
            &mut conn,
            sqlx::query(&sql)
                .bind(after)
                .bind(100u32)
                .bind(after)
                .bind(100u32)
                .bind(100u32),
        )
        .await;
        assert_plan("feed_after", &plan, "m", "PRIMARY");
        assert_plan("feed_after", &plan, "e", "PRIMARY");
        for step in plan.iter().filter(|s| s.table == "m" || s.table == "e") {
            assert_eq!(step.access, "range", "the position bounds the range: {plan:?}");
        }
    }

    for name in ["search-index", "webhooks"] {
        sqlx::query(rows::SAVE_CHECKPOINT)
            .bind(name.as_bytes())
            .bind(7i64)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let sql = e(rows::LOAD_CHECKPOINT);
    let plan = explain(&mut conn, sqlx::query(&sql).bind(b"webhooks".as_slice())).await;
    assert_plan("load_checkpoint", &plan, "chatcore_checkpoints", "PRIMARY");

    let sql = e(rows::INBOX_PAGE);
    for before in [i64::MAX, 10_000] {
        let plan = explain(
            &mut conn,
            sqlx::query(&sql).bind(5i64).bind(5i64).bind(before).bind(20u32),
        )
        .await;
        assert_plan("inbox", &plan, "i", "chatcore_inbox_activity");
        assert_plan("inbox", &plan, "pi", "PRIMARY");
        assert_plan("inbox", &plan, "m", "PRIMARY");
        assert_plan("inbox total", &plan, "c", "PRIMARY");
        // Both key parts: the cursor is where the backward range starts.
        let step = plan.iter().find(|s| s.table == "i").unwrap();
        assert_eq!(
            (step.access.as_str(), step.key_len.as_deref()),
            ("range", Some("16")),
            "{plan:?}"
        );
    }

    // The count of a read marker's transaction, from its session variables: user 2 reads up
    // to 24010 from 24000 in the long conversation.
    sqlx::raw_sql(
        "SET @chatcore_reader = 2, @chatcore_peer = 1, @chatcore_old = 24000, \
         @chatcore_up_to = 24010, @chatcore_moves = 1",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let sql = e(rows::MARK_READ_PASSED);
    let plan = explain(&mut conn, sqlx::query(&sql)).await;
    assert_plan(
        "mark_read passed",
        &plan,
        "chatcore_messages",
        "chatcore_messages_conversation",
    );
    let step = plan.iter().find(|s| s.table == "chatcore_messages").unwrap();
    assert_eq!(
        (step.access.as_str(), step.key_len.as_deref()),
        ("range", Some("24")),
        "the markers bound the range: {plan:?}"
    );
    let (passed,): (i64,) = sqlx::query_as(rows::MARK_READ_PASSED)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(passed, 5, "user 1's messages in (24000, 24010]");

    // ... and the whole transaction, run for real: a first mark passes over 2,000 of user 1's
    // messages; the next one, ten messages further, reads a few dozen rows, not the
    // conversation's 5,000.
    let mark =
        |up_to: i64| crate::marks::mark_read_sql(chatcore::UserId(2), "user001", chatcore::MessageId(up_to));
    let rows = sqlx::raw_sql(&mark(24_000)).fetch_all(&mut conn).await.unwrap();
    let moved: Option<i64> = rows[0].try_get_unchecked("moved").unwrap();
    assert_eq!(moved, Some(1));
    let before = handler_reads(&mut conn).await;
    let rows = sqlx::raw_sql(&mark(24_010)).fetch_all(&mut conn).await.unwrap();
    let read = handler_reads(&mut conn).await - before;
    let unread: Option<i64> = rows[0].try_get_unchecked("unread").unwrap();
    assert_eq!(unread, Some(495), "user 1's messages after 24010");
    eprintln!("mark_read over 10 messages of 5,000: {read} handler reads");
    assert!(
        read <= 80,
        "{read} handler reads to move a marker over 10 messages"
    );

    // The previous positions read at the end of an insert transaction, bounded by the last id
    // handed out before it.
    sqlx::raw_sql("SET @chatcore_last = 15000, @chatcore_at = UTC_TIMESTAMP(6)")
        .execute(&mut conn)
        .await
        .unwrap();
    let users = [5i64, 6, 101].into_iter().collect();
    let sql = e(&crate::writer::previous_positions_select(&users));
    let plan = explain(&mut conn, sqlx::query(&sql)).await;
    assert_plan("previous positions", &plan, "u", "PRIMARY");
    assert_plan("previous positions", &plan, "ms", "chatcore_messages_sender");
    assert_plan("previous positions", &plan, "mr", "chatcore_messages_recipient");
    assert_plan("previous positions", &plan, "er", "chatcore_read_events_reader");
    assert_plan("previous positions", &plan, "ep", "chatcore_read_events_peer");
    for alias in ["ms", "mr", "er", "ep"] {
        // Read from the index alone, in its order (newest first, stopping at the first row).
        let step = plan.iter().find(|s| s.table == alias).unwrap();
        assert_eq!(step.access, "ref", "{plan:?}");
        assert!(step.extra.contains("Using index"), "{plan:?}");
    }
    // ... which EXPLAIN does not show: count the rows the handlers read. Each of these users
    // has about 200 messages and 20 read events below the bound; with the bound at the newest
    // position, each subquery reads one entry (plus one past the end of its range).
    sqlx::raw_sql("SET @chatcore_last = 27000")
        .execute(&mut conn)
        .await
        .unwrap();
    let statement = crate::writer::previous_positions_select(&users);
    let before = handler_reads(&mut conn).await;
    let rows = sqlx::raw_sql(&statement).fetch_all(&mut conn).await.unwrap();
    let read = handler_reads(&mut conn).await - before;
    assert_eq!(rows.len(), 3);
    eprintln!("previous positions: {read} handler reads");
    assert!(read <= 3 * (1 + 4 * 2) + 4, "{read} handler reads for 3 users");

    // Blocks: a user's list by key, the peer a typing frame may reach, the listed users a
    // viewer shares a conversation with, and the blocks of a batch's pairs.
    let sql = e(rows::BLOCKED_USERS);
    for after in ["", "user010"] {
        let plan = explain(
            &mut conn,
            sqlx::query(&sql).bind(5i64).bind(after.as_bytes()).bind(50u32),
        )
        .await;
        assert_plan("blocked_users", &plan, "b", "chatcore_blocks_by_key");
        assert_plan("blocked_users", &plan, "u", "PRIMARY");
    }
    let sql = e(rows::REACHABLE_PEER);
    let plan = explain(
        &mut conn,
        sqlx::query(&sql)
            .bind(5i64)
            .bind(5i64)
            .bind(5i64)
            .bind(b"user036".as_slice())
            .bind(5i64),
    )
    .await;
    assert_plan("reachable_peer", &plan, "u", "chatcore_users_username_key");
    assert_plan("reachable_peer", &plan, "i", "PRIMARY");
    assert_plan("reachable_peer", &plan, "b", "PRIMARY");
    assert_plan("reachable_peer", &plan, "c", "PRIMARY");
    let listed: Vec<String> = (1..=200).map(|id: i64| id.to_string()).collect();
    let sql = e(&format!(
        "{}5 AND peer_id IN ({})",
        rows::CONVERSATION_PEERS,
        listed.join(",")
    ));
    let plan = explain(&mut conn, sqlx::query(&sql)).await;
    assert_plan("conversation_peers", &plan, "chatcore_inbox", "PRIMARY");
    assert_eq!(plan[0].access, "range", "one point range per listed id: {plan:?}");
    let mut sql = String::from("EXPLAIN SELECT 1 FROM ");
    crate::writer::push_blocks_between(&mut sql, (1..=64i64).map(|n| (n, n + 1)));
    let plan = explain(&mut conn, sqlx::query(&sql)).await;
    assert_plan("blocks of a batch", &plan, "chatcore_blocks", "PRIMARY");
    assert_eq!(
        (plan[0].access.as_str(), plan[0].key_len.as_deref()),
        ("range", Some("16")),
        "both key parts: point lookups: {plan:?}"
    );
    // ... and an edit's, from its session variables.
    sqlx::raw_sql("SET @chatcore_from = 5, @chatcore_to = 36")
        .execute(&mut conn)
        .await
        .unwrap();
    let sql = e(crate::changes::BLOCKS_OF_CHANGE);
    let plan = explain(&mut conn, sqlx::query(&sql)).await;
    assert_plan("blocks of a change", &plan, "chatcore_blocks", "PRIMARY");

    let _ = conn.close().await;
    store.close().await.unwrap();
}
