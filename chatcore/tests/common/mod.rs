//! Helpers shared by the service test files: a service over the in-memory backends, a send
//! request, two users.

#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;

use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest, User};

pub fn service(config: ChatConfig) -> ChatService {
    ChatService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalNotifier::new(64)),
        config,
    )
}

pub fn to(recipient: &str, body: &str) -> SendRequest {
    SendRequest {
        recipient: recipient.into(),
        body: body.into(),
        idempotency_key: None,
    }
}

/// The users `alice` and `bob`.
pub async fn pair(chat: &ChatService) -> (User, User) {
    (
        chat.create_user("alice").await.unwrap(),
        chat.create_user("bob").await.unwrap(),
    )
}
