//! Accounts with passwords and login sessions ([`SessionStore`]).

use chrono::{Duration, SubsecRound};

use super::*;

fn hash_of(n: u8) -> TokenHash {
    [n; 32]
}

/// Accounts are users; their names are unique with every other user's, without regard to
/// case; credentials are found by any case of the name.
pub async fn accounts_and_credentials(store: Arc<dyn SessionStore>) {
    let alice = store
        .create_account(&name("alice"), "$argon2id$v=19$fake")
        .await
        .unwrap();
    assert_eq!(alice.username.as_str(), "alice");
    let bob = store.create_account(&name("Bob"), "$argon2id$bob").await.unwrap();
    assert_ne!(alice.id, bob.id);
    for taken in ["alice", "ALICE", "bob"] {
        match store.create_account(&name(taken), "$argon2id$x").await {
            Err(Error::Conflict(_)) => {}
            other => panic!("{taken} must be a conflict, got {other:?}"),
        }
    }
    for spelling in ["alice", "Alice", "ａｌｉｃｅ"] {
        let creds = store.credentials(&name(spelling)).await.unwrap().expect(spelling);
        assert_eq!(creds.user, alice);
        assert_eq!(creds.password_hash.as_deref(), Some("$argon2id$v=19$fake"));
    }
    let creds = store.credentials(&name("bob")).await.unwrap().unwrap();
    assert_eq!(creds.user.username.as_str(), "Bob", "the chosen case is kept");
    assert!(store.credentials(&name("nobody")).await.unwrap().is_none());
}

/// A session authenticates its user until it expires or is deleted; expiry is kept.
pub async fn sessions_live_until_they_expire_or_end(store: Arc<dyn SessionStore>) {
    let alice = store.create_account(&name("alice"), "$argon2id$a").await.unwrap();
    let bob = store.create_account(&name("bob"), "$argon2id$b").await.unwrap();
    let now = Utc::now().trunc_subsecs(6);
    let (live, expired) = (hash_of(1), hash_of(2));
    let expires_at = now + Duration::hours(1);
    store.create_session(&live, alice.id, expires_at).await.unwrap();
    store
        .create_session(&expired, bob.id, now - Duration::seconds(1))
        .await
        .unwrap();
    let record = store
        .session_user(&live, now)
        .await
        .unwrap()
        .expect("live session");
    assert_eq!(record.user, alice);
    // Kept to the second at least (stores may keep microseconds).
    assert!(
        (record.expires_at - expires_at).num_seconds().abs() < 1,
        "{record:?}"
    );
    assert_eq!(store.session_user(&expired, now).await.unwrap(), None);
    assert_eq!(
        store.session_user(&live, expires_at).await.unwrap(),
        None,
        "expired at its end"
    );
    assert_eq!(store.session_user(&hash_of(3), now).await.unwrap(), None);
    store.delete_session(&live).await.unwrap();
    assert_eq!(store.session_user(&live, now).await.unwrap(), None);
    // Deleting an unknown session is not an error.
    store.delete_session(&live).await.unwrap();
    // A session of a user that does not exist is refused.
    assert!(matches!(
        store
            .create_session(&hash_of(4), UserId(1_000_000), expires_at)
            .await,
        Err(Error::NotFound(Entity::User))
    ));
}

/// `delete_expired_sessions` removes exactly the sessions expired at `now`.
pub async fn expired_sessions_are_deleted(store: Arc<dyn SessionStore>) {
    let alice = store.create_account(&name("alice"), "$argon2id$a").await.unwrap();
    let now = Utc::now().trunc_subsecs(6);
    for n in 0..10u8 {
        // Five expired (one exactly at `now`), five live.
        let expires_at = now + Duration::seconds(i64::from(n) - 4);
        store
            .create_session(&hash_of(n), alice.id, expires_at)
            .await
            .unwrap();
    }
    assert_eq!(store.delete_expired_sessions(now).await.unwrap(), 5);
    assert_eq!(store.delete_expired_sessions(now).await.unwrap(), 0);
    for n in 0..10u8 {
        let live = store.session_user(&hash_of(n), now).await.unwrap().is_some();
        assert_eq!(live, n >= 5, "session {n}");
    }
    // Later, the rest go too.
    assert_eq!(
        store
            .delete_expired_sessions(now + Duration::hours(1))
            .await
            .unwrap(),
        5
    );
}

/// `delete_user_sessions` ends every session of one user and no one else's, and counts
/// them; `set_password_hash` replaces a password found by any case of the name and leaves
/// sessions alone; an unknown name is not found.
pub async fn user_sessions_end_together_and_passwords_change(store: Arc<dyn SessionStore>) {
    let alice = store.create_account(&name("alice"), "$argon2id$a").await.unwrap();
    let bob = store.create_account(&name("bob"), "$argon2id$b").await.unwrap();
    let now = Utc::now().trunc_subsecs(6);
    let later = now + Duration::hours(1);
    for n in 0..3u8 {
        store.create_session(&hash_of(n), alice.id, later).await.unwrap();
    }
    store.create_session(&hash_of(10), bob.id, later).await.unwrap();
    let changed = store
        .set_password_hash(&name("ALICE"), "$argon2id$new")
        .await
        .unwrap();
    assert_eq!(changed, alice);
    let creds = store.credentials(&name("alice")).await.unwrap().unwrap();
    assert_eq!(creds.password_hash.as_deref(), Some("$argon2id$new"));
    for n in 0..3u8 {
        assert!(
            store.session_user(&hash_of(n), now).await.unwrap().is_some(),
            "kept by a new password"
        );
    }
    assert_eq!(store.delete_user_sessions(alice.id).await.unwrap(), 3);
    for n in 0..3u8 {
        assert_eq!(store.session_user(&hash_of(n), now).await.unwrap(), None);
    }
    assert!(
        store.session_user(&hash_of(10), now).await.unwrap().is_some(),
        "bob's stays"
    );
    assert_eq!(store.delete_user_sessions(alice.id).await.unwrap(), 0);
    assert_eq!(store.delete_user_sessions(UserId(1_000_000)).await.unwrap(), 0);
    assert!(matches!(
        store.set_password_hash(&name("nobody"), "$argon2id$x").await,
        Err(Error::NotFound(Entity::User))
    ));
    // A new session after that works as before.
    store.create_session(&hash_of(20), alice.id, later).await.unwrap();
    assert_eq!(
        store
            .session_user(&hash_of(20), now)
            .await
            .unwrap()
            .map(|r| r.user),
        Some(alice)
    );
}
