//! Extractors that answer bad input with our JSON errors instead of axum's plain-text ones.

use axum::body::{Body, Bytes};
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
            // axum's form decoder replaces invalid UTF-8 with U+FFFD; we refuse it, as JSON
            // does, rather than store text the client never sent.
            let method = req.method().clone();
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = Bytes::from_request(req, state).await?;
            if std::str::from_utf8(&percent_decoded(&bytes)).is_err() {
                return Err(ApiError::bad_request("the form body is not valid UTF-8"));
            }
            let mut checked = Request::new(Body::from(bytes));
            *checked.method_mut() = method;
            if let Some(content_type) = content_type {
                checked.headers_mut().insert(header::CONTENT_TYPE, content_type);
            }
            let Form(value) = Form::<T>::from_request(checked, state).await?;
            Ok(Self(value))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json or application/x-www-form-urlencoded",
            ))
        }
    }
}

/// A form body with its `%XX` escapes decoded (`+` and the separators left as they are:
/// they are ASCII, so UTF-8 validity is the same for the whole as for each field).
fn percent_decoded(form: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::with_capacity(form.len());
    let mut i = 0;
    while i < form.len() {
        match (
            form[i],
            form.get(i + 1).copied().and_then(hex),
            form.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high << 4) | low);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    decoded
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

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(
            super::percent_decoded(b"a=%C3%A9+x&b=%2"),
            "a=\u{e9}+x&b=%2".as_bytes()
        );
        assert!(std::str::from_utf8(&super::percent_decoded(b"body=%FF%FEhi")).is_err());
        assert_eq!(super::percent_decoded(b"%zz%4"), b"%zz%4");
    }
}
