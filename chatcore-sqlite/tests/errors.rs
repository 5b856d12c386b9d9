//! Each failure of the database gives its own clear error variant, never a panic: busy,
//! full, not a database, corrupt, newer schema, missing schema, closed; and a reopened file
//! keeps everything.

mod common;

use std::time::{Duration, Instant};

use chatcore::store::PageRequest;
use chatcore::{Error, MessageId, SessionStore, Store};
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use common::{name, new_message, temp_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_database_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.sqlite3");
    let garbage: Vec<u8> = (0..16_384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    match SqliteStore::open(SqliteConfig::file(&path)).await {
        Err(Error::Corrupt { message, source }) => {
            assert!(message.contains("not an SQLite database"), "{message}");
            assert!(source.is_some(), "the driver error is kept");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_pages_are_corrupt() {
    let temp = temp_store(|_| {}).await;
    let path = temp.path();
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    for i in 0..300 {
        let body = format!("{i} {}", "x".repeat(500));
        temp.store
            .insert_message(new_message(&alice, "bob", &body))
            .await
            .unwrap();
    }
    temp.store.close().await.unwrap();
    let wal = path.with_extension("sqlite3-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len() == 0).unwrap_or(true),
        "closing checkpointed the WAL into the file"
    );
    // Keep page 1 (header and schema), scribble over every other page.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 40 * 4096, "the fixture spans many pages");
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i as u8).wrapping_mul(151) ^ 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();

    let reopened = SqliteStore::open(SqliteConfig::file(&path)).await;
    let error = match reopened {
        Err(e) => e,
        Ok(store) => {
            let page = store
                .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
                .await;
            let err = page.expect_err("reading overwritten pages must fail");
            store.close().await.unwrap();
            err
        }
    };
    assert!(
        matches!(error, Error::Corrupt { .. }),
        "expected Corrupt, got {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_lock_is_unavailable_after_the_busy_timeout() {
    let temp = temp_store(|c| c.busy_timeout = Duration::from_millis(150)).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();

    let other = rusqlite::Connection::open(temp.path()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let sent = temp
        .store
        .insert_message(new_message(&alice, "bob", "blocked"))
        .await;
    assert!(
        matches!(sent, Err(Error::Unavailable { what: "storage", .. })),
        "expected Unavailable, got {sent:?}"
    );
    assert!(sent.unwrap_err().is_retryable());
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "waited for the busy timeout"
    );
    let created = temp.store.create_user(&name("carol")).await;
    assert!(matches!(created, Err(Error::Unavailable { .. })), "{created:?}");
    // Readers are not blocked by a writer in WAL mode.
    assert!(temp.store.find_user(&name("bob")).await.unwrap().is_some());

    other.execute_batch("COMMIT").unwrap();
    let sent = temp
        .store
        .insert_message(new_message(&alice, "bob", "free"))
        .await
        .unwrap();
    let page = temp
        .store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 1, "the failed send stored nothing");
    assert_eq!(page.messages[0].id, sent.message.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusively_locked_file_cannot_be_opened() {
    let temp = temp_store(|_| {}).await;
    temp.store.close().await.unwrap();
    let other = rusqlite::Connection::open(temp.path()).unwrap();
    other
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT;")
        .unwrap();
    let config = SqliteConfig {
        busy_timeout: Duration::from_millis(100),
        ..SqliteConfig::file(temp.path())
    };
    let opened = SqliteStore::open(config).await;
    assert!(matches!(opened, Err(Error::Unavailable { .. })), "{opened:?}");
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_is_storage_full_and_stays_readable() {
    let temp = temp_store(|c| c.max_page_count = Some(60)).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    let body = "y".repeat(3_000);
    let mut stored = 0u64;
    let error = loop {
        match temp.store.insert_message(new_message(&alice, "bob", &body)).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1_000, "the page cap never filled");
    };
    assert!(
        matches!(error, Error::StorageFull(_)),
        "expected StorageFull, got {error:?}"
    );
    assert!(stored > 0);
    let page = temp
        .store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, stored, "counters match what was acknowledged");
    let all = temp
        .store
        .messages_after(alice.id, MessageId(0), 10_000)
        .await
        .unwrap();
    assert_eq!(all.len() as u64, stored);
    // Small writes that still fit keep working.
    temp.store
        .create_session(&[9u8; 32], alice.id, chrono::Utc::now())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let temp = temp_store(|_| {}).await;
    temp.store.close().await.unwrap();
    let conn = rusqlite::Connection::open(temp.path()).unwrap();
    conn.execute(
        "INSERT INTO chatcore_migrations (version, name, applied_at) VALUES (?1, 'from the future', 0)",
        [chatcore_sqlite::SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(conn);
    match SqliteStore::open(SqliteConfig::file(temp.path())).await {
        Err(Error::Corrupt { message, .. }) => assert!(message.contains("newer"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_calls_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::file(dir.path().join("new.sqlite3")))
        .await
        .unwrap();
    let created = store.create_user(&name("alice")).await;
    match created {
        Err(Error::Internal { message, .. }) => assert!(message.contains("migrate"), "{message}"),
        other => panic!("expected a missing-schema error, got {other:?}"),
    }
    let found = store.find_user(&name("alice")).await;
    assert!(matches!(found, Err(Error::Internal { .. })), "{found:?}");
    let report = store.migrate().await.unwrap();
    assert_eq!(
        (report.previous, report.current),
        (0, chatcore_sqlite::SCHEMA_VERSION)
    );
    store.create_user(&name("alice")).await.unwrap();
    assert!(store.find_user(&name("alice")).await.unwrap().is_some());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_is_unavailable() {
    let temp = temp_store(|_| {}).await;
    temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.close().await.unwrap();
    temp.store.close().await.unwrap();
    let found = temp.store.find_user(&name("alice")).await;
    assert!(matches!(found, Err(Error::Unavailable { .. })), "{found:?}");
    let created = temp.store.create_user(&name("bob")).await;
    assert!(matches!(created, Err(Error::Unavailable { .. })), "{created:?}");
    assert!(matches!(
        temp.store.migrate().await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_locations_and_config_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = SqliteConfig::file(dir.path().join("no/such/dir/chat.sqlite3"));
    assert!(matches!(
        SqliteStore::open(missing_dir).await,
        Err(Error::Unavailable { .. })
    ));
    let not_created = SqliteConfig {
        create_if_missing: false,
        ..SqliteConfig::file(dir.path().join("absent.sqlite3"))
    };
    assert!(matches!(
        SqliteStore::open(not_created).await,
        Err(Error::Unavailable { .. })
    ));
    assert!(!dir.path().join("absent.sqlite3").exists());
    let zero_batch = SqliteConfig {
        max_batch: 0,
        ..SqliteConfig::memory()
    };
    assert!(matches!(
        SqliteStore::open(zero_batch).await,
        Err(Error::Invalid(_))
    ));
    // Refused before anything is created: no database, no lock file.
    let path = dir.path().join("refused.sqlite3");
    for config in [
        SqliteConfig::file(""),
        SqliteConfig {
            wal_autocheckpoint_pages: 0,
            ..SqliteConfig::file(&path)
        },
        SqliteConfig {
            readers: chatcore_sqlite::MAX_READERS + 1,
            ..SqliteConfig::file(&path)
        },
        SqliteConfig {
            busy_timeout: Duration::from_secs(u64::MAX / 2),
            ..SqliteConfig::file(&path)
        },
    ] {
        match SqliteStore::open(config.clone()).await {
            Err(Error::Invalid(message)) => assert!(!message.is_empty()),
            other => panic!("{config:?}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

/// The message of the error source of `error`, where `Unavailable` keeps its details.
fn source_text(error: &Error) -> String {
    std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// One store per file: a second open of the same file (here in the same process, as from
/// another one) is refused with an error naming the database and its lock file, so two
/// stores never disagree about a revoked session. After close (and drop) it opens again.
/// In-memory stores take no lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_one_file_is_refused() {
    let temp = temp_store(|_| {}).await;
    let path = temp.path();
    let lock = dir_entry(&path, "-chatcore.lock");
    assert!(lock.exists(), "the lock file sits beside the database");
    for attempt in 0..2 {
        let error = SqliteStore::open(SqliteConfig::file(&path))
            .await
            .expect_err("a second store on one file");
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        let in_use = chatcore_sqlite::DatabaseInUse::of(&error).expect("typed as held elsewhere");
        assert_eq!((&in_use.database, &in_use.lock_file), (&path, &lock));
        let text = source_text(&error);
        assert!(text.contains("another chatcore process"), "{attempt}: {text}");
        assert!(text.contains(&lock.display().to_string()), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
    // The refused opens changed nothing for the first store.
    temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.close().await.unwrap();
    let second = SqliteStore::open(SqliteConfig::file(&path))
        .await
        .expect("free once the first store closed");
    assert!(second.find_user(&name("ALICE")).await.unwrap().is_some());
    drop(second);
    let third = SqliteStore::open(SqliteConfig::file(&path))
        .await
        .expect("free once the second store dropped");
    third.close().await.unwrap();

    let one = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
    let two = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
    one.close().await.unwrap();
    two.close().await.unwrap();
}

/// `path` with `suffix` appended to its file name.
fn dir_entry(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Names stored before today's rules (here one with a space, which `Username::parse`
/// refuses) still read back everywhere: as a sender, in the directory, through a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_before_the_rules_read_back() {
    let temp = temp_store(|_| {}).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.close().await.unwrap();
    let conn = rusqlite::Connection::open(temp.path()).unwrap();
    conn.execute(
        "INSERT INTO chatcore_users (username, username_key) VALUES ('Old Timer', 'old timer')",
        [],
    )
    .unwrap();
    let old_id = chatcore::UserId(conn.last_insert_rowid());
    drop(conn);
    assert!(
        chatcore::Username::parse("Old Timer").is_err(),
        "the fixture predates the rules"
    );
    let store = SqliteStore::open(SqliteConfig::file(temp.path())).await.unwrap();
    let old = chatcore::User {
        id: old_id,
        username: chatcore::Username::from_stored("Old Timer"),
    };
    let sent = store
        .insert_message(new_message(&old, "ALICE", "still here"))
        .await
        .unwrap();
    assert_eq!(sent.message.recipient.as_str(), "alice");
    let page = store
        .user_messages(alice.id, &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.messages[0].sender.as_str(), "Old Timer");
    let listed = store
        .list_users(&chatcore::UserQuery {
            exclude: None,
            prefix: "OLD".to_owned(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed, vec![old.clone()]);
    let now = chrono::Utc::now();
    store
        .create_session(&[3; 32], old_id, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    let session = store.session_user(&[3; 32], now).await.unwrap().unwrap();
    assert_eq!(session.user, old);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_file_keeps_everything_and_migrate_is_a_no_op() {
    let temp = temp_store(|_| {}).await;
    let alice = temp
        .store
        .create_account(&name("alice"), "$argon2id$hash")
        .await
        .unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    let mut last = MessageId(0);
    for i in 0..25 {
        last = temp
            .store
            .insert_message(new_message(&alice, "bob", &format!("m{i}")))
            .await
            .unwrap()
            .message
            .id;
    }
    let before = temp
        .store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    temp.store.close().await.unwrap();

    let store = SqliteStore::open(SqliteConfig::file(temp.path())).await.unwrap();
    let report = store.migrate().await.unwrap();
    assert!(!report.applied_any(), "{report:?}");
    let after = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(after.total, 25);
    let creds = store.credentials(&name("alice")).await.unwrap().unwrap();
    assert_eq!(creds.password_hash.as_deref(), Some("$argon2id$hash"));
    let next = store
        .insert_message(new_message(&alice, "bob", "after reopen"))
        .await
        .unwrap();
    assert!(next.message.id > last, "ids keep increasing across restarts");
    assert!(next.message.created_at >= before.messages[0].created_at);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_busy_store_does_not_hang() {
    let temp = temp_store(|_| {}).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    let store = std::sync::Arc::new(temp);
    // Dropped once the sends are under way: after the first one is stored, not after a guess.
    let first_stored = std::sync::Arc::new(tokio::sync::Notify::new());
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let alice = alice.clone();
            let first_stored = first_stored.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for j in 0..50 {
                    match store
                        .store
                        .insert_message(new_message(&alice, "bob", &format!("{i}/{j}")))
                        .await
                    {
                        Ok(_) => {
                            ok += 1;
                            first_stored.notify_one();
                        }
                        Err(Error::Unavailable { .. }) => break,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                ok
            })
        })
        .collect();
    first_stored.notified().await;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || drop(store)).await.unwrap();
    let mut total = 0;
    for s in senders {
        total += s.await.unwrap();
    }
    assert!(total >= 1, "the drop happened while sends were being stored");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_transactions() {
    let temp = std::sync::Arc::new(temp_store(|_| {}).await);
    let hub = temp.store.create_user(&name("hub")).await.unwrap();
    let mut senders = Vec::new();
    for i in 0..32 {
        senders.push(temp.store.create_user(&name(&format!("s{i}"))).await.unwrap());
    }
    let before = temp.store.stats();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let temp = temp.clone();
            let hub = hub.username.clone();
            tokio::spawn(async move {
                for j in 0..20 {
                    temp.store
                        .insert_message(new_message(&sender, hub.as_str(), &format!("{j}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let after = temp.store.stats();
    let writes = after.writes - before.writes;
    let transactions = after.transactions - before.transactions;
    assert_eq!(writes, 640);
    // Each durable commit waits for an fsync; meanwhile the other senders queue up.
    assert!(
        transactions * 2 < writes,
        "group commit: {writes} writes in {transactions} transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_in_writes_are_not_found_and_store_nothing() {
    let temp = temp_store(|_| {}).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    let ghost = chatcore::User {
        id: chatcore::UserId(alice.id.0 + 1000),
        username: name("ghost"),
    };
    let sent = temp
        .store
        .insert_message(new_message(&ghost, "alice", "boo"))
        .await;
    assert!(
        matches!(sent, Err(Error::NotFound(chatcore::Entity::User))),
        "{sent:?}"
    );
    let session = temp
        .store
        .create_session(&[1u8; 32], ghost.id, chrono::Utc::now())
        .await;
    assert!(
        matches!(session, Err(Error::NotFound(chatcore::Entity::User))),
        "{session:?}"
    );
    let page = temp
        .store
        .user_messages(alice.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!((page.total, page.messages.len()), (0, 0));
    // A failed job in a batch does not fail the others sent with it.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let from = if i % 2 == 0 { alice.clone() } else { ghost.clone() };
            (i, from)
        })
        .collect();
    let temp = std::sync::Arc::new(temp);
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|(i, from)| {
            let temp = temp.clone();
            tokio::spawn(async move {
                (
                    i,
                    temp.store
                        .insert_message(new_message(&from, "alice", &format!("{i}")))
                        .await,
                )
            })
        })
        .collect();
    for handle in handles {
        let (i, result) = handle.await.unwrap();
        if i % 2 == 0 {
            assert!(result.is_ok(), "{i}: {result:?}");
        } else {
            assert!(matches!(result, Err(Error::NotFound(_))), "{i}: {result:?}");
        }
    }
    let page = temp
        .store
        .user_messages(alice.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 8);
}

/// A conversation whose chain links forward (a damaged file) is reported as corrupt by the
/// page read, not walked round in circles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_linking_forward_is_corrupt() {
    let temp = temp_store(|_| {}).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let inserted = temp
            .store
            .insert_message(new_message(&alice, "bob", &format!("{i}")))
            .await
            .unwrap();
        ids.push(inserted.message.id.0);
    }
    temp.store.close().await.unwrap();
    let conn = rusqlite::Connection::open(temp.path()).unwrap();
    // The 10th message now names the 30th as its previous one, which leads back to the 10th.
    conn.execute(
        "UPDATE chatcore_messages SET prev_id = ?1 WHERE id = ?2",
        [ids[29], ids[9]],
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(SqliteConfig::file(temp.path())).await.unwrap();
    match store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(100))
        .await
    {
        Err(Error::Corrupt { message, .. }) => {
            assert!(message.contains("not an older one"), "{message}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    store.close().await.unwrap();
}

/// A deleted message's text leaves the file, not only the row: once the store is closed
/// (the WAL checkpointed into the file and removed), the bytes of a deleted text are nowhere
/// in the directory, while a message kept is still there. A long body spills onto overflow
/// pages, which a deletion frees: `secure_delete` zeroes them (without it they keep the text
/// on the free list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_body_is_gone_from_the_file() {
    let temp = temp_store(|_| {}).await;
    let alice = temp.store.create_user(&name("alice")).await.unwrap();
    temp.store.create_user(&name("bob")).await.unwrap();
    let secret = "the-secret-text-3f9a1c";
    let long_secret = "the-long-secret-5e8d ".repeat(400);
    let long = temp
        .store
        .insert_message(new_message(&alice, "bob", &long_secret))
        .await
        .unwrap()
        .message;
    let kept = "the-kept-text-77b2e0";
    for i in 0..20 {
        temp.store
            .insert_message(new_message(&alice, "bob", &format!("filler {i}")))
            .await
            .unwrap();
    }
    let gone = temp
        .store
        .insert_message(new_message(&alice, "bob", secret))
        .await
        .unwrap()
        .message;
    temp.store
        .insert_message(new_message(&alice, "bob", kept))
        .await
        .unwrap();
    let edited = temp
        .store
        .insert_message(new_message(&alice, "bob", "before-the-edit-91d4"))
        .await
        .unwrap()
        .message;
    temp.store
        .change_message(alice.id, gone.id, &chatcore::MessageChange::Delete)
        .await
        .unwrap();
    let edit = chatcore::MessageChange::Edit {
        body: "after".into(),
        not_before: None,
    };
    temp.store
        .change_message(alice.id, edited.id, &edit)
        .await
        .unwrap();
    temp.store
        .change_message(alice.id, long.id, &chatcore::MessageChange::Delete)
        .await
        .unwrap();
    for i in 0..20 {
        temp.store
            .insert_message(new_message(&alice, "bob", &format!("more {i}")))
            .await
            .unwrap();
    }
    temp.store.close().await.unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(temp.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        files.extend(std::fs::read(&path).unwrap());
    }
    let contains = |needle: &str| files.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(kept), "the check finds text that is there");
    assert!(!contains(secret), "a deleted body is gone from the file");
    assert!(!contains("before-the-edit-91d4"), "an edited body is overwritten");
    assert!(
        !contains("the-long-secret-5e8d"),
        "a long deleted body is gone from its overflow pages"
    );
}
