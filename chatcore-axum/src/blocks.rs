//! The block routes: block and unblock a user, list whom the caller blocks. The rules (both
//! directions refused, idempotent, nobody blocks themself) are `chatcore::ChatService`'s.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chatcore::BlockListQuery;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use crate::auth::Caller;
use crate::body::ApiQuery;
use crate::error::ApiError;
use crate::openapi::{ErrorBody, ServerErrors, Unauthenticated};
use crate::state::ApiState;

/// The user a path names; a path that does not parse names nobody.
fn username(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    name.map(|Path(name)| name)
        .map_err(|_| ApiError::from(chatcore::Error::NotFound(chatcore::Entity::User)))
}

/// The errors of blocking and unblocking besides every route's.
#[derive(IntoResponses)]
#[allow(dead_code)] // only described: `ApiError` renders them
enum BlockErrors {
    /// The caller named themself
    #[response(status = 400, example = json!({"error": "you cannot block yourself"}))]
    Oneself(ErrorBody),
    /// A cross-site request riding on the session cookie
    #[response(status = 403, example = json!({"error": "cross-site request refused"}))]
    CrossSite(ErrorBody),
    /// Unknown user
    #[response(status = 404, example = json!({"error": "user not found"}))]
    Unknown(ErrorBody),
}

/// Block a user.
///
/// From now on neither the caller nor `username` can message the other, nor edit a message
/// sent to the other: those sends and edits answer 403 `{"error": "you cannot message this
/// user"}` and nothing is stored or notified. Typing frames between the two are dropped.
/// Both still read their history and may delete their own messages. A send that was answered
/// before this request was answered may have been stored; none after. Blocking again
/// changes nothing (204). The block is not an event: no frame goes to either user.
#[utoipa::path(
    put,
    path = "/api/v1/block/{username}",
    tag = "blocks",
    params(("username" = String, Path, description = "The user to block (found without regard to case)", example = "bob")),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Blocked (or already blocked)"),
        BlockErrors, Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn block(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.service().block(&caller, &username(name)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Unblock a user.
///
/// Ends the caller's block of `username`: messages flow again, unless `username` blocks the
/// caller too. Unblocking someone not blocked changes nothing (204).
#[utoipa::path(
    delete,
    path = "/api/v1/block/{username}",
    tag = "blocks",
    params(("username" = String, Path, description = "The user to unblock (found without regard to case)", example = "bob")),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Not blocked (any more)"),
        BlockErrors, Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn unblock(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.service().unblock(&caller, &username(name)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/v1/block/?after=&limit=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BlockListParams {
    /// Only names after this one (the last name of the previous page).
    #[param(example = "bob")]
    after: Option<String>,
    /// At most this many users (the server's user page size by default, and at most: 1,000
    /// unless configured).
    #[param(example = 100)]
    limit: Option<u32>,
}

/// One user the caller blocks.
#[derive(Serialize, ToSchema)]
#[schema(as = BlockedUser, example = json!({"username": "bob"}))]
struct BlockedEntry<'a> {
    /// The name as its user chose to write it.
    username: &'a str,
}

/// Whom I block.
///
/// The users the caller blocks, sorted by name (without regard to case), a page at a time:
/// the next page starts `after` the last name of this one; a page shorter than `limit` is
/// the last.
#[utoipa::path(
    get,
    path = "/api/v1/block/",
    tag = "blocks",
    params(BlockListParams),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The users the caller blocks, sorted by name", body = Vec<BlockedEntry>,
            example = json!([{"username": "bob"}, {"username": "Zed"}])),
        (status = 400, description = "A malformed query", body = ErrorBody,
            example = json!({"error": "limit must be at least 1"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn list_blocked(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<BlockListParams>,
) -> Result<Response, ApiError> {
    let users = state
        .service()
        .blocked_users(
            &caller,
            BlockListQuery {
                after: params.after,
                limit: params.limit,
            },
        )
        .await?;
    let entries: Vec<BlockedEntry<'_>> = users
        .iter()
        .map(|u| BlockedEntry {
            username: u.username.as_str(),
        })
        .collect();
    Ok(Json(entries).into_response())
}
