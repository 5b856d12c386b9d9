//! The inbox routes: the caller's conversations with unread counts, moving a read marker, and
//! who the caller is (`GET /api/v1/auth/session`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use chatcore::{Conversation, InboxQuery, Message, MessageId};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::body::{ApiQuery, JsonOrForm};
use crate::error::ApiError;
use crate::rest::encode_component;
use crate::state::ApiState;

/// `GET /api/v1/conversation/?limit=&before=`.
#[derive(Deserialize)]
pub(crate) struct InboxParams {
    limit: Option<u32>,
    before: Option<i64>,
}

#[derive(Serialize)]
struct InboxBody<'a> {
    next: Option<String>,
    unread_total: u64,
    results: Vec<ConversationBody<'a>>,
}

#[derive(Serialize)]
struct ConversationBody<'a> {
    peer: &'a str,
    last_message: &'a Message,
    unread: u64,
    read_up_to: Option<MessageId>,
    peer_read_up_to: Option<MessageId>,
}

impl<'a> From<&'a Conversation> for ConversationBody<'a> {
    fn from(c: &'a Conversation) -> Self {
        Self {
            peer: c.peer.as_str(),
            last_message: &c.last_message,
            unread: c.unread,
            read_up_to: c.read_up_to,
            peer_read_up_to: c.peer_read_up_to,
        }
    }
}

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
        results: page.conversations.iter().map(ConversationBody::from).collect(),
    })
    .into_response())
}

/// `POST /api/v1/conversation/{peer}/read` body.
#[derive(Deserialize)]
pub(crate) struct ReadForm {
    up_to: i64,
}

#[derive(Serialize)]
struct ReadBody {
    unread: u64,
    read_up_to: MessageId,
}

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

#[derive(Serialize)]
struct SessionBody<'a> {
    username: &'a str,
}

/// `GET /api/v1/auth/session`: who the caller is, by whatever the authenticator accepts (a
/// session cookie, a bearer token, the host's own scheme); 401 for no one.
pub(crate) async fn current_session(Caller(caller): Caller) -> Response {
    Json(SessionBody {
        username: caller.username.as_str(),
    })
    .into_response()
}
