//! The REST routes: the user directory and messages (list, send, get one).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use chatcore::{DirectoryQuery, HistoryQuery, Message, MessageId, MessagePage, SendRequest};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::body::{ApiQuery, JsonOrForm};
use crate::error::ApiError;
use crate::inbox::{last_seen, presence_fields};
use crate::openapi::{BodyErrors, ErrorBody, MessageDoc, ServerErrors, Unauthenticated};
use crate::state::ApiState;

/// `GET /api/v1/user/?q=&limit=&after=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DirectoryParams {
    /// Only names that start with this prefix, without regard to case.
    #[param(example = "al")]
    q: Option<String>,
    /// At most this many users (the server's user page size by default, and at most).
    #[param(example = 50)]
    limit: Option<u32>,
    /// Only names after this one (the last name of the previous page).
    #[param(example = "alice")]
    after: Option<String>,
}

/// One entry of the user directory.
#[derive(Serialize, ToSchema)]
#[schema(as = UserEntry, example = json!({"username": "bob", "online": true, "last_seen": null}))]
struct UserEntry<'a> {
    /// The name as its user chose to write it.
    username: &'a str,
    /// Whether the user has a WebSocket open (on any server): only for users who share a
    /// conversation with the caller, and only when the server keeps presence (absent
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
    /// When the user was last online, if the running servers remember (`null` while online
    /// and when unknown); present exactly when `online` is.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "last_seen")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-11-28T10:05:00.000000Z")]
    last_seen: Option<Option<chrono::DateTime<chrono::Utc>>>,
}

/// The user directory.
///
/// The other users, sorted by name (without regard to case).
#[utoipa::path(
    get,
    path = "/api/v1/user/",
    tag = "users",
    params(DirectoryParams),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The other users, sorted by name; `online` and `last_seen` for those the caller shares a conversation with", body = Vec<UserEntry>,
            example = json!([{"username": "bob", "online": false, "last_seen": "2026-11-28T10:05:00.000000Z"}, {"username": "carol"}])),
        (status = 400, description = "A malformed query", body = ErrorBody,
            example = json!({"error": "Failed to deserialize query string: limit: invalid digit found in string"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn list_users(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<DirectoryParams>,
) -> Result<Response, ApiError> {
    let users = state
        .service()
        .users(
            &caller,
            DirectoryQuery {
                prefix: params.q,
                after: params.after,
                limit: params.limit,
            },
        )
        .await?;
    let presence = state.service().presence_in_directory(&caller, &users).await?;
    let entries: Vec<UserEntry<'_>> = users
        .iter()
        .zip(presence)
        .map(|(u, presence)| {
            let (online, last_seen) = presence_fields(presence);
            UserEntry {
                username: u.username.as_str(),
                online,
                last_seen,
            }
        })
        .collect();
    Ok(Json(entries).into_response())
}

/// `GET /api/v1/message/?target=&page=&before=&limit=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// The other user of the conversation; without it, every message of the caller's.
    #[param(example = "bob")]
    target: Option<String>,
    /// Page number, from 1 (the original app's paging; limited in depth, see `before`).
    #[param(example = 1)]
    page: Option<u32>,
    /// Only messages older than this id: keyset paging, the same cost at any depth.
    #[param(example = 120)]
    before: Option<i64>,
    /// Page size (15 by default, at most 100).
    #[param(example = 15)]
    limit: Option<u32>,
}

/// A page of messages, newest first, in the original app's shape.
#[derive(Serialize, ToSchema)]
#[schema(as = MessagePage, example = json!({
    "count": 42,
    "next": "/api/v1/message/?target=bob&before=17",
    "previous": null,
    "results": [{"id": 18, "user": "alice", "recipient": "bob", "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi"}]
}))]
struct PageBody<'a> {
    /// How many messages the whole list holds.
    count: u64,
    /// The next (older) page, an absolute path; `null` at the end.
    next: Option<String>,
    /// The previous (newer) page, an absolute path; `null` on the first page.
    previous: Option<String>,
    /// The messages, newest first.
    #[schema(value_type = Vec<MessageDoc>)]
    results: &'a [Message],
}

/// Message history.
///
/// The messages between the caller and `target`, newest first (without `target`: every
/// message the caller sent or received).
#[utoipa::path(
    get,
    path = "/api/v1/message/",
    tag = "messages",
    params(HistoryParams),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of messages, newest first", body = PageBody),
        (status = 400, description = "A malformed query, or a page too deep (use `before`)", body = ErrorBody,
            example = json!({"error": "page 500 is too deep (at most 3000 messages may be skipped): page with ?before=<id of the oldest message you have> instead"})),
        (status = 404, description = "Unknown `target`", body = ErrorBody,
            example = json!({"error": "user not found"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn list_messages(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    OriginalUri(uri): OriginalUri,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Response, ApiError> {
    let query = HistoryQuery {
        before: params.before.map(MessageId),
        page: params.page,
        limit: params.limit,
    };
    let service = state.service();
    let page = match &params.target {
        Some(target) => service.conversation(&caller, target, query).await?,
        None => service.all_messages(&caller, query).await?,
    };
    let limit = params
        .limit
        .unwrap_or(service.config().default_page_size)
        .min(service.config().max_page_size)
        .max(1);
    let links = Links {
        path: uri.path(),
        params: &params,
    };
    let (next, previous) = links.build(&page, limit);
    Ok(Json(PageBody {
        count: page.total,
        next,
        previous,
        results: &page.messages,
    })
    .into_response())
}

/// Builds `next` and `previous` as absolute-path URLs (the path the client used, so they
/// work wherever the host nested the router).
struct Links<'a> {
    path: &'a str,
    params: &'a HistoryParams,
}

impl Links<'_> {
    fn build(&self, page: &MessagePage, limit: u32) -> (Option<String>, Option<String>) {
        let params = self.params;
        match params.page {
            // Page numbers, as in the original app (also when combined with `before`).
            Some(number) => {
                let seen = u64::from(number).saturating_mul(u64::from(limit));
                let more = params.before.is_some() && page.messages.len() as u32 == limit
                    || params.before.is_none() && seen < page.total;
                let next = more.then(|| self.url(params.before, Some(number.saturating_add(1))));
                let previous = match number {
                    0 | 1 => None,
                    2 => Some(self.url(params.before, None)),
                    n => Some(self.url(params.before, Some(n - 1))),
                };
                (next, previous)
            }
            // Cursors: `next` continues below the oldest message of this page.
            None => {
                let full = page.messages.len() as u32 == limit;
                let more = match params.before {
                    None => full && (page.messages.len() as u64) < page.total,
                    Some(_) => full,
                };
                let next = match page.messages.last() {
                    Some(oldest) if more => Some(self.url(Some(oldest.id.0), None)),
                    _ => None,
                };
                // A page below a cursor links back to the newest page.
                let previous = params.before.map(|_| self.url(None, None));
                (next, previous)
            }
        }
    }

    fn url(&self, before: Option<i64>, page: Option<u32>) -> String {
        let mut url = String::with_capacity(self.path.len() + 64);
        url.push_str(self.path);
        let mut separator = '?';
        let mut push = |key: &str, value: &str| {
            url.push(separator);
            separator = '&';
            url.push_str(key);
            url.push('=');
            encode_component(value, &mut url);
        };
        if let Some(target) = &self.params.target {
            push("target", target);
        }
        if let Some(limit) = self.params.limit {
            push("limit", &limit.to_string());
        }
        if let Some(before) = before {
            push("before", &before.to_string());
        }
        if let Some(page) = page {
            push("page", &page.to_string());
        }
        url
    }
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub(crate) const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn encode_component(value: &str, out: &mut String) {
    out.extend(percent_encoding::utf8_percent_encode(value, COMPONENT));
}

/// `POST /api/v1/message/` body.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"recipient": "bob", "body": "hi"}))]
pub(crate) struct SendForm {
    /// Who the message is for (found without regard to case).
    recipient: String,
    /// The text: trimmed; 1 to 4,000 characters (configurable) after trimming; no control
    /// characters but newline and tab.
    body: String,
}

/// Send a message.
///
/// Sends a message; 201 once it is durably stored, then both users' sockets are notified.
/// A retry with the same `Idempotency-Key` answers with the message first stored (and the
/// header `Idempotent-Replayed: true`).
#[utoipa::path(
    post,
    path = "/api/v1/message/",
    tag = "messages",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key by the same sender stores nothing new and answers with the first message", example = "7f9c2ba4-e88f-11ee-9b0c-3b2a7d1c2e5f")
    ),
    request_body(description = "The message, as JSON or as a form", content(
        (SendForm = "application/json", example = json!({"recipient": "bob", "body": "hi"})),
        (SendForm = "application/x-www-form-urlencoded", example = json!({"recipient": "bob", "body": "hi"}))
    )),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        // Before the route's own entries: its 403 replaces BodyErrors' cross-site one.
        BodyErrors,
        (status = 201, description = "Stored (or replayed for a known `Idempotency-Key`)", body = MessageDoc,
            headers(("Idempotent-Replayed" = String, description = "`true` when an earlier message was replayed"))),
        (status = 400, description = "Bad input: empty or too long body, control characters, invalid UTF-8, malformed body", body = ErrorBody,
            example = json!({"error": "message body is empty"})),
        (status = 403, description = "A block stands between the caller and the recipient, either way (nothing stored), or a send policy of the host (`chatcore::SendPolicy`) refused it, with its reason, or a request from another site riding on the session cookie", body = ErrorBody,
            example = json!({"error": "you cannot message this user"})),
        (status = 404, description = "Unknown recipient", body = ErrorBody,
            example = json!({"error": "user not found"})),
        (status = 422, description = "The `Idempotency-Key` was used for another message, or a send policy of the host found the message unacceptable", body = ErrorBody,
            example = json!({"error": "this Idempotency-Key was used for a different message"})),
        (status = 429, description = "Sending too fast", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait")),
            example = json!({"error": "too many requests, slow down"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn send_message(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    JsonOrForm(form): JsonOrForm<SendForm>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_owned(),
        ),
    };
    let sent = state
        .service()
        .send(
            &caller,
            SendRequest {
                recipient: form.recipient,
                body: form.body,
                idempotency_key,
            },
        )
        .await?;
    let mut response = (StatusCode::CREATED, Json(&*sent.message)).into_response();
    if sent.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One message.
///
/// One message, for its sender or its recipient; 404 for anyone else and for an id that does
/// not exist (the same answer, so ids cannot be probed).
#[utoipa::path(
    get,
    path = "/api/v1/message/{id}/",
    tag = "messages",
    params(("id" = i64, Path, description = "The message id", example = 17)),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The message", body = MessageDoc),
        (status = 404, description = "No such message for the caller", body = ErrorBody,
            example = json!({"error": "message not found"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn get_message(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let message = state.service().message(&caller, message_id(id)?).await?;
    Ok(Json(message).into_response())
}

/// The message id of a path; a malformed id is as unknown as a missing one.
fn message_id(id: Result<Path<String>, PathRejection>) -> Result<MessageId, ApiError> {
    id.ok()
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .map(MessageId)
        .ok_or_else(|| ApiError::from(chatcore::Error::NotFound(chatcore::Entity::Message)))
}

/// `PATCH /api/v1/message/{id}/` body.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"body": "hi, fixed"}))]
pub(crate) struct EditForm {
    /// The new text, under the rules of a send's: trimmed; 1 to 4,000 characters
    /// (configurable) after trimming; no control characters but newline and tab.
    body: String,
}

/// Edit a message.
///
/// Replaces the text of a message the caller sent; the message gains `"edited"` (when).
/// Both users' sockets get `{"type": "edit", "position", "data": <message>}`; unread counts
/// do not change. The server may limit how long after sending a message can be edited
/// (`--edit-window`; none by default).
#[utoipa::path(
    patch,
    path = "/api/v1/message/{id}/",
    tag = "messages",
    params(("id" = i64, Path, description = "The message id", example = 17)),
    request_body(description = "The new text, as JSON or as a form", content(
        (EditForm = "application/json", example = json!({"body": "hi, fixed"})),
        (EditForm = "application/x-www-form-urlencoded", example = json!({"body": "hi, fixed"}))
    )),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        // Before the route's own entries: its 403 replaces BodyErrors' cross-site one.
        BodyErrors,
        (status = 200, description = "The message as edited", body = MessageDoc,
            example = json!({"id": 17, "user": "alice", "recipient": "bob",
                "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi, fixed",
                "edited": "2026-11-28T10:01:30.000001Z"})),
        (status = 400, description = "Bad input: empty or too long body, control characters, malformed body", body = ErrorBody,
            example = json!({"error": "message body is empty"})),
        (status = 403, description = "The caller received this message (only its sender may change it), a block stands between the two users (`you cannot message this user`), the edit window has passed, or a send policy of the host refused the new text, or a request from another site riding on the session cookie", body = ErrorBody,
            example = json!({"error": "only the sender of a message can change it"})),
        (status = 404, description = "No such message for the caller, or it was deleted", body = ErrorBody,
            example = json!({"error": "message not found"})),
        (status = 422, description = "A send policy of the host found the new text unacceptable", body = ErrorBody,
            example = json!({"error": "this text is not acceptable"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn edit_message(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
    JsonOrForm(form): JsonOrForm<EditForm>,
) -> Result<Response, ApiError> {
    let message = state
        .service()
        .edit_message(&caller, message_id(id)?, &form.body)
        .await?;
    Ok(Json(message).into_response())
}

/// Delete a message.
///
/// Deletes a message the caller sent: its text is removed from storage for good, and it
/// stays in both histories as `{"id", "user", "recipient", "timestamp", "body": "",
/// "edited": null, "deleted": true}`. Both users' sockets get `{"type": "delete", "position",
/// "data": <the tombstone>}`; unread counts do not change. Deleting again answers 204 too.
#[utoipa::path(
    delete,
    path = "/api/v1/message/{id}/",
    tag = "messages",
    params(("id" = i64, Path, description = "The message id", example = 17)),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Deleted (or already deleted)"),
        (status = 403, description = "The caller received this message: only its sender may delete it (or a cross-site request riding on the session cookie)", body = ErrorBody,
            example = json!({"error": "only the sender of a message can change it"})),
        (status = 404, description = "No such message for the caller", body = ErrorBody,
            example = json!({"error": "message not found"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn delete_message(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.service().delete_message(&caller, message_id(id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Export my data.
///
/// Every message the caller sent or received (tombstones included), newest first, as one
/// JSON document `{"username": "alice", "messages": [<message>, ...]}`, streamed: the server
/// reads the history in pages (500 messages by default) and writes each page as it comes,
/// so an export of any size holds one page in memory. Messages stored after the export
/// began are not in it. Should storage fail midway, the connection is cut before the
/// document is complete (the status was already sent): retry.
#[utoipa::path(
    get,
    path = "/api/v1/auth/export",
    tag = "auth",
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The caller's data, streamed (chunked)", content_type = "application/json",
            body = ExportDoc),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn export(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    // The first page is read before answering, so a storage failure is a plain 503.
    let chat = state.service().clone();
    let first = chat.export_page(&caller, None).await?;
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(br#"{"username":"#);
    serde_json::to_writer(&mut head, &caller.username).map_err(|e| chatcore::Error::internal("export", e))?;
    head.extend_from_slice(br#","messages":["#);
    let start = ExportState {
        chat,
        user: caller,
        page: Some(first),
        head: Some(head),
        first_message: true,
    };
    let pages = futures_util::stream::try_unfold(start, |mut at| async move {
        let Some(page) = at.page.take() else {
            return Ok::<_, chatcore::Error>(None);
        };
        let mut chunk = at.head.take().unwrap_or_default();
        if page.is_empty() {
            chunk.extend_from_slice(b"]}");
            return Ok(Some((axum::body::Bytes::from(chunk), at)));
        }
        for message in &page {
            if !std::mem::take(&mut at.first_message) {
                chunk.push(b',');
            }
            serde_json::to_writer(&mut chunk, message).map_err(|e| chatcore::Error::internal("export", e))?;
        }
        let before = page.last().map(|m| m.id);
        at.page = Some(at.chat.export_page(&at.user, before).await?);
        Ok(Some((axum::body::Bytes::from(chunk), at)))
    });
    Ok((
        [(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

/// Where an export stream stands: the page to write next (`None` once the document is
/// closed), and what goes before it.
struct ExportState {
    chat: chatcore::ChatService,
    user: chatcore::User,
    page: Option<Vec<Message>>,
    head: Option<Vec<u8>>,
    first_message: bool,
}

/// The export document.
#[derive(ToSchema)]
#[schema(as = Export, example = json!({"username": "alice", "messages": [
    {"id": 18, "user": "alice", "recipient": "bob", "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi", "edited": null}
]}))]
#[allow(dead_code)] // only described: the handler writes the document as it streams
pub(crate) struct ExportDoc {
    /// The caller's name.
    username: String,
    /// Every message the caller sent or received, newest first.
    messages: Vec<MessageDoc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_components() {
        let mut out = String::new();
        encode_component("a+b@c d/é", &mut out);
        assert_eq!(out, "a%2Bb%40c%20d%2F%C3%A9");
    }
}
