//! Extractors that answer bad input with our JSON errors instead of axum's plain-text ones.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::{Form, Json};
use http::request::Parts;
use http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body as JSON (`application/json`) or as a form
/// (`application/x-www-form-urlencoded`); any other content type is 415, malformed input
/// 400, a body over the limit 413.
pub(crate) struct JsonOrForm<T>(pub T);

impl<T, S> FromRequest<S> for JsonOrForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
        {
            let Json(value) = Json::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else if essence == "application/x-www-form-urlencoded" {
            let Form(value) = Form::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json or application/x-www-form-urlencoded",
            ))
        }
    }
}

/// Query parameters; a malformed query is 400 JSON.
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}
