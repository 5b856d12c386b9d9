//! Names: unique without regard to case, found by any case, listed in the directory.

use super::*;

/// Names are unique; lookups by name find exactly the created user.
pub async fn users_are_unique_and_findable(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    assert_ne!(alice.id, bob.id);
    assert_eq!(alice.username.as_str(), "alice");
    match store.create_user(&name("alice")).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("duplicate username must be a conflict, got {other:?}"),
    }
    assert_eq!(
        store.find_user(&name("alice")).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.find_user(&name("bob")).await.unwrap(), Some(bob));
    assert_eq!(store.find_user(&name("carol")).await.unwrap(), None);
    // Names are unique without regard to case; the chosen case is kept for display.
    for same in ["Alice", "ALICE", "ａｌｉｃｅ"] {
        match store.create_user(&name(same)).await {
            Err(Error::Conflict(_)) => {}
            other => panic!("{same} must be a conflict with alice, got {other:?}"),
        }
        assert_eq!(
            store.find_user(&name(same)).await.unwrap(),
            Some(alice.clone()),
            "{same}"
        );
    }
    let carol = user(&store, "Carol").await;
    assert_eq!(carol.username.as_str(), "Carol");
    assert_eq!(
        store.find_user(&name("carol")).await.unwrap(),
        Some(carol.clone())
    );
    // A message to `carol` names her as she writes her name, and lands in one conversation.
    let to_lower = send_to_name(&store, &alice, "carol", "hi").await;
    let to_upper = send_to_name(&store, &alice, "CAROL", "hi again").await;
    assert_eq!(to_lower.recipient.as_str(), "Carol");
    assert_eq!(to_upper.recipient.as_str(), "Carol");
    let page = store
        .conversation_page(alice.id, &name("cArOl"), &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 2);
}

async fn send_to_name(store: &Arc<dyn Store>, from: &User, to: &str, body: &str) -> Message {
    try_send_to(store, from, to, body)
        .await
        .expect("insert message")
        .message
}

/// The directory is sorted by name, pages with `after`, filters by prefix, leaves one user out.
pub async fn user_directory_pages_and_filters(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for i in (0..30).rev() {
        created.push(user(&store, &format!("user{i:02}")).await);
    }
    let me = user(&store, "me").await;
    user(&store, "zed").await;
    let query = |prefix: &str, after: Option<&str>, limit| UserQuery {
        exclude: Some(me.id),
        prefix: prefix.to_owned(),
        after: after.map(name),
        limit,
    };
    let all = store.list_users(&query("", None, 1000)).await.unwrap();
    let names: Vec<_> = all.iter().map(|u| u.username.to_string()).collect();
    let mut expected: Vec<_> = (0..30).map(|i| format!("user{i:02}")).collect();
    expected.push("zed".into());
    assert_eq!(names, expected, "sorted, caller excluded");
    // Prefixes and `after` match without regard to case; names come back as chosen.
    let mixed = user(&store, "User99").await;
    let upper: Vec<_> = store
        .list_users(&query("USER2", None, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username.to_string())
        .collect();
    assert_eq!(upper, expected[20..30].to_vec());
    let last = store
        .list_users(&query("user", Some("USER29"), 100))
        .await
        .unwrap();
    assert_eq!(last, vec![mixed.clone()]);
    expected.insert(30, "User99".into());

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_users(&query("user", after.as_deref(), 7))
            .await
            .unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().username.to_string());
        paged.extend(page.into_iter().map(|u| u.username.to_string()));
    }
    assert_eq!(
        paged,
        expected[..31].to_vec(),
        "keyset paging skips and repeats nothing"
    );

    let ones = store.list_users(&query("user1", None, 100)).await.unwrap();
    assert_eq!(ones.len(), 10);
    assert!(ones.iter().all(|u| u.username.as_str().starts_with("user1")));
    let none = store.list_users(&query("nobody", None, 100)).await.unwrap();
    assert!(none.is_empty());
    // A prefix with LIKE/GLOB metacharacters matches literally.
    user(&store, "a_b").await;
    user(&store, "axb").await;
    let literal = store.list_users(&query("a_", None, 100)).await.unwrap();
    assert_eq!(
        literal.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["a_b"]
    );
    let unfiltered = UserQuery {
        exclude: None,
        prefix: String::new(),
        after: None,
        limit: 3,
    };
    assert_eq!(store.list_users(&unfiltered).await.unwrap().len(), 3);
}
