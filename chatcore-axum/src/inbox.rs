//! The inbox routes: the caller's conversations with unread counts, moving a read marker, and
//! who the caller is (`GET /api/v1/auth/session`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use chatcore::{Conversation, InboxQuery, Message, MessageId, PresenceStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::body::{ApiQuery, JsonOrForm};
use crate::error::ApiError;
use crate::openapi::{BodyErrors, ErrorBody, MessageDoc, ServerErrors, Unauthenticated};
use crate::rest::encode_component;
use crate::state::ApiState;

/// `GET /api/v1/conversation/?limit=&before=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InboxParams {
    /// Conversations per page (20 by default, at most 100).
    #[param(example = 20)]
    limit: Option<u32>,
    /// Only conversations whose newest message is older than this id (the `next` link).
    #[param(example = 120)]
    before: Option<i64>,
}

/// A page of the caller's inbox, latest activity first.
#[derive(Serialize, ToSchema)]
#[schema(as = Inbox, example = json!({
    "next": null,
    "unread_total": 3,
    "results": [{
        "peer": "bob",
        "last_message": {"id": 18, "user": "bob", "recipient": "alice", "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi"},
        "unread": 3, "read_up_to": 12, "peer_read_up_to": 17,
        "online": false, "last_seen": "2026-11-28T10:05:00.000000Z"
    }]
}))]
struct InboxBody<'a> {
    /// The next page, an absolute path; `null` once a page comes back short.
    next: Option<String>,
    /// Unread messages over all the caller's conversations.
    unread_total: u64,
    /// The conversations, the one with the newest message first.
    results: Vec<ConversationBody<'a>>,
}

/// One conversation as the caller sees it.
#[derive(Serialize, ToSchema)]
#[schema(as = Conversation, example = json!({
    "peer": "bob",
    "last_message": {"id": 18, "user": "bob", "recipient": "alice", "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi"},
    "unread": 3, "read_up_to": 12, "peer_read_up_to": 17,
    "online": true, "last_seen": null
}))]
struct ConversationBody<'a> {
    /// The other user (the caller for notes to self).
    peer: &'a str,
    /// The conversation's newest message.
    #[schema(value_type = MessageDoc)]
    last_message: &'a Message,
    /// The peer's messages after the caller's read marker.
    unread: u64,
    /// The caller's read marker, if they marked any.
    #[schema(value_type = Option<i64>)]
    read_up_to: Option<MessageId>,
    /// The peer's read marker.
    #[schema(value_type = Option<i64>)]
    peer_read_up_to: Option<MessageId>,
    /// Whether the peer has a WebSocket open (on any server); absent when the server keeps
    /// no presence.
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
    /// When the peer was last online, if the running servers remember (`null` while online
    /// and when unknown); absent when the server keeps no presence.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "last_seen")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-11-28T10:05:00.000000Z")]
    last_seen: Option<Option<chrono::DateTime<chrono::Utc>>>,
}

/// A user's presence as two optional fields (`online`, `last_seen`): both `None` when the
/// server keeps no presence or the caller may not see it.
pub(crate) type PresenceFields = (Option<bool>, Option<Option<chrono::DateTime<chrono::Utc>>>);

pub(crate) fn presence_fields(status: Option<PresenceStatus>) -> PresenceFields {
    match status {
        Some(status) => (Some(status.online), Some(status.last_seen)),
        None => (None, None),
    }
}

/// Writes `last_seen`: the timestamp, or `null`.
pub(crate) fn last_seen<S: serde::Serializer>(
    at: &Option<Option<chrono::DateTime<chrono::Utc>>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(Some(at)) => chatcore::timestamp_micros::serialize(at, serializer),
        _ => serializer.serialize_none(),
    }
}

impl<'a> ConversationBody<'a> {
    fn new(c: &'a Conversation, service: &chatcore::ChatService) -> Self {
        let (online, last_seen) = presence_fields(service.presence_of(&c.peer));
        Self {
            peer: c.peer.as_str(),
            last_message: &c.last_message,
            unread: c.unread,
            read_up_to: c.read_up_to,
            peer_read_up_to: c.peer_read_up_to,
            online,
            last_seen,
        }
    }
}

/// The inbox.
///
/// The caller's conversations, the one with the newest message first, with unread counts,
/// both read markers and (when the server keeps presence) whether the peer is online.
#[utoipa::path(
    get,
    path = "/api/v1/conversation/",
    tag = "inbox",
    params(InboxParams),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of the inbox", body = InboxBody),
        (status = 400, description = "A malformed query", body = ErrorBody,
            example = json!({"error": "Failed to deserialize query string: before: invalid digit found in string"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn list_conversations(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    OriginalUri(uri): OriginalUri,
    ApiQuery(params): ApiQuery<InboxParams>,
) -> Result<Response, ApiError> {
    let service = state.service();
    let page = service
        .inbox(
            &caller,
            InboxQuery {
                before: params.before.map(MessageId),
                limit: params.limit,
            },
        )
        .await?;
    let limit = params
        .limit
        .unwrap_or(service.config().default_inbox_page)
        .min(service.config().max_inbox_page)
        .max(1);
    // A full page may have more below it: `next` continues below its oldest conversation.
    let next = match page.conversations.last() {
        Some(oldest) if page.conversations.len() as u32 == limit => {
            let mut url = String::with_capacity(uri.path().len() + 40);
            url.push_str(uri.path());
            url.push('?');
            if let Some(limit) = params.limit {
                url.push_str("limit=");
                encode_component(&limit.to_string(), &mut url);
                url.push('&');
            }
            url.push_str("before=");
            url.push_str(&oldest.last_message.id.to_string());
            Some(url)
        }
        _ => None,
    };
    Ok(Json(InboxBody {
        next,
        unread_total: page.unread_total,
        results: page
            .conversations
            .iter()
            .map(|c| ConversationBody::new(c, service))
            .collect(),
    })
    .into_response())
}

/// `POST /api/v1/conversation/{peer}/read` body.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"up_to": 17}))]
pub(crate) struct ReadForm {
    /// The newest message read: a message of this conversation, of either side.
    up_to: i64,
}

/// The caller's read state of the conversation after the call.
#[derive(Serialize, ToSchema)]
#[schema(as = ReadState, example = json!({"unread": 0, "read_up_to": 17}))]
struct ReadBody {
    /// The peer's messages still unread.
    unread: u64,
    /// The caller's marker now (the asked id, or a newer one already there).
    #[schema(value_type = i64)]
    read_up_to: MessageId,
}

/// Mark a conversation read.
///
/// Moves the caller's read marker in the conversation with `peer` forward to `up_to` (an
/// older id changes nothing); when it moves, both users' sockets get a `read` frame.
#[utoipa::path(
    post,
    path = "/api/v1/conversation/{peer}/read",
    tag = "inbox",
    params(("peer" = String, Path, description = "The other user of the conversation", example = "bob")),
    request_body(description = "The newest message read, as JSON or as a form", content(
        (ReadForm = "application/json", example = json!({"up_to": 17})),
        (ReadForm = "application/x-www-form-urlencoded", example = json!({"up_to": 17}))
    )),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The marker as it stands", body = ReadBody),
        (status = 400, description = "A missing or non-integer `up_to`", body = ErrorBody,
            example = json!({"error": "Failed to deserialize the JSON body into the target type: missing field `up_to`"})),
        (status = 404, description = "Unknown peer, or `up_to` is not a message of this conversation", body = ErrorBody,
            example = json!({"error": "message not found"})),
        Unauthenticated, BodyErrors, ServerErrors
    )
)]
pub(crate) async fn mark_read(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    peer: Result<Path<String>, PathRejection>,
    JsonOrForm(form): JsonOrForm<ReadForm>,
) -> Result<Response, ApiError> {
    let Path(peer) = peer.map_err(|_| ApiError::from(chatcore::Error::NotFound(chatcore::Entity::User)))?;
    let read = state
        .service()
        .mark_read(&caller, &peer, MessageId(form.up_to))
        .await?;
    Ok(Json(ReadBody {
        unread: read.unread,
        read_up_to: read.read_up_to,
    })
    .into_response())
}

/// Who the caller is.
#[derive(Serialize, ToSchema)]
#[schema(as = SessionUser, example = json!({"username": "alice", "max_message_chars": 4000}))]
struct SessionBody<'a> {
    /// The caller's name as they chose to write it.
    username: &'a str,
    /// The longest message body the server accepts, in Unicode scalar values after trimming
    /// ([`chatcore::ChatConfig::max_body_chars`]), so a client can count as the server does.
    max_message_chars: usize,
}

/// Who the caller is.
///
/// Who the caller is, by whatever the authenticator accepts (a session cookie, a bearer
/// token, the host's own scheme); 401 for no one. Also the longest message body the server
/// accepts, for a client's character counter.
#[utoipa::path(
    get,
    path = "/api/v1/auth/session",
    tag = "auth",
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = SessionBody),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn current_session(State(state): State<ApiState>, Caller(caller): Caller) -> Response {
    Json(SessionBody {
        username: caller.username.as_str(),
        max_message_chars: state.service().config().max_body_chars,
    })
    .into_response()
}
