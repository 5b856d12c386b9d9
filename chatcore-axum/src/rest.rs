//! The REST routes: the user directory and messages (list, send, get one).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use chatcore::{DirectoryQuery, HistoryQuery, Message, MessageId, MessagePage, SendRequest};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::body::{ApiQuery, JsonOrForm};
use crate::error::ApiError;
use crate::state::ApiState;

/// `GET /api/v1/user/?q=&limit=&after=`.
#[derive(Deserialize)]
pub(crate) struct DirectoryParams {
    q: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

#[derive(Serialize)]
struct UserEntry<'a> {
    username: &'a str,
}

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
    let entries: Vec<UserEntry<'_>> = users
        .iter()
        .map(|u| UserEntry {
            username: u.username.as_str(),
        })
        .collect();
    Ok(Json(entries).into_response())
}

/// `GET /api/v1/message/?target=&page=&before=&limit=`.
#[derive(Deserialize)]
pub(crate) struct HistoryParams {
    target: Option<String>,
    page: Option<u32>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// The paginated list, in the original app's shape.
#[derive(Serialize)]
struct PageBody<'a> {
    count: u64,
    next: Option<String>,
    previous: Option<String>,
    results: &'a [Message],
}

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
#[derive(Deserialize)]
pub(crate) struct SendForm {
    recipient: String,
    body: String,
}

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

pub(crate) async fn get_message(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    // A malformed id is as unknown as a missing one.
    let id = id
        .ok()
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .ok_or(())
        .map_err(|_| ApiError::from(chatcore::Error::NotFound(chatcore::Entity::Message)))?;
    let message = state.service().message(&caller, MessageId(id)).await?;
    Ok(Json(message).into_response())
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
