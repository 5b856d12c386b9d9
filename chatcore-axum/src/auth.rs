//! Who the caller is: the [`Authenticator`] trait, the same-origin (CSRF) check, and the
//! [`Caller`] extractor the handlers use.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::FromRequestParts;
use chatcore::{SessionId, User};
use chrono::{DateTime, Utc};
use http::request::Parts;
use http::{HeaderMap, Method, header};

use crate::error::ApiError;
use crate::state::ApiState;

/// Decides who sent a request. The host implements it over its own users and sessions; the
/// router calls it for every route but the auth routes, and for `/ws` before the upgrade.
///
/// `Ok(None)` means "not authenticated" (401). An `Err` is mapped like any other
/// [`chatcore::Error`] (e.g. [`chatcore::Error::Unavailable`] → 503).
///
/// Requests that carry an `Authorization` header are taken to be authenticated by it and are
/// exempt from the same-origin check; every other unsafe request (a POST, a WebSocket
/// upgrade) is assumed to ride on an ambient credential such as a cookie, and must come from
/// the request's own origin (or a [trusted one](crate::ApiConfig::trusted_origins)).
///
/// A complete authenticator that maps each caller to their own chat user, created the first
/// time they are seen (the dependencies: `async-trait`, `http`, `chatcore`, `chatcore-axum`):
///
/// ```
/// use std::sync::Arc;
///
/// use async_trait::async_trait;
/// use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, User};
/// use chatcore_axum::Authenticator;
/// use http::request::Parts;
///
/// /// Trusts the `x-user` header set by the host's reverse proxy. Only behind a proxy that
/// /// sets it and strips any a client sent: anyone who can send it is whoever it names.
/// struct ProxyHeader {
///     chat: ChatService,
/// }
///
/// #[async_trait]
/// impl Authenticator for ProxyHeader {
///     async fn authenticate(&self, parts: &Parts) -> chatcore::Result<Option<User>> {
///         let Some(name) = parts.headers.get("x-user").and_then(|v| v.to_str().ok()) else {
///             return Ok(None); // no one: 401
///         };
///         if let Some(user) = self.chat.find_user(name).await? {
///             return Ok(Some(user));
///         }
///         // First visit: provision the chat user. A concurrent first visit may win the race.
///         match self.chat.create_user(name).await {
///             Ok(user) => Ok(Some(user)),
///             Err(chatcore::Error::Conflict(_)) => self.chat.find_user(name).await,
///             Err(error) => Err(error),
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> chatcore::Result<()> {
/// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
/// let auth = ProxyHeader { chat: chat.clone() };
/// let parts = |name: &str| http::Request::get("/").header("x-user", name).body(()).unwrap().into_parts().0;
/// let alice = auth.authenticate(&parts("alice")).await?.expect("alice");
/// let bob = auth.authenticate(&parts("bob")).await?.expect("bob");
/// assert_ne!(alice.id, bob.id);
/// assert_eq!(auth.authenticate(&parts("alice")).await?.map(|user| user.id), Some(alice.id));
/// let app: axum::Router = chatcore_axum::router(chat, auth);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The user who sent the request, `None` when it carries no valid credential.
    async fn authenticate(&self, parts: &Parts) -> chatcore::Result<Option<User>>;

    /// The user and the login session the request was made with. `/ws` uses it so that the
    /// connection closes when that session ends (logout, expiry, account removal, see
    /// [`chatcore::ChatService::end_session`]). The default knows no sessions: the user alone.
    async fn authenticate_session(&self, parts: &Parts) -> chatcore::Result<Option<Authenticated>> {
        Ok(self
            .authenticate(parts)
            .await?
            .map(|user| Authenticated { user, session: None }))
    }

    /// Whether the session `caller` opened a `/ws` connection with is still live, asked by
    /// that connection every [`crate::ApiConfig::ws_session_recheck`] (connections opened
    /// without a session never ask). `headers` are the upgrade request's `Authorization` and
    /// `Cookie` headers. `Ok(false)` closes the connection with 4001; an error leaves it open
    /// until the next check.
    ///
    /// This is how a connection learns that its session was ended by a process whose
    /// revocation does not reach this one (an operator command against a SQLite file, a
    /// notifier that does not cross processes): read the storage, not a cache. The default
    /// answers `true`: an authenticator whose sessions end only through
    /// [`chatcore::ChatService::end_session`] (which closes the connections itself) needs
    /// nothing more.
    async fn session_is_live(&self, caller: &Authenticated, headers: &HeaderMap) -> chatcore::Result<bool> {
        let _ = (caller, headers);
        Ok(true)
    }
}

/// Who a request comes from, and with which login session ([`Authenticator::authenticate_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The caller.
    pub user: User,
    /// The session the credential belongs to, when the authenticator has sessions.
    pub session: Option<SessionInfo>,
}

/// A login session as a connection needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Names the session among the user's (see [`chatcore::SessionId`]).
    pub id: SessionId,
    /// When it expires: a connection opened with it closes then.
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
impl<T: Authenticator + ?Sized> Authenticator for Arc<T> {
    async fn authenticate(&self, parts: &Parts) -> chatcore::Result<Option<User>> {
        (**self).authenticate(parts).await
    }

    async fn authenticate_session(&self, parts: &Parts) -> chatcore::Result<Option<Authenticated>> {
        (**self).authenticate_session(parts).await
    }

    async fn session_is_live(&self, caller: &Authenticated, headers: &HeaderMap) -> chatcore::Result<bool> {
        (**self).session_is_live(caller, headers).await
    }
}

/// The authenticated user of a request. Extracting it answers 401 (with
/// `WWW-Authenticate: Bearer`) when the authenticator knows no caller, and 403 for a
/// cross-site POST or WebSocket upgrade riding on a cookie.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub User);

/// The caller with their session, for `/ws`.
#[derive(Debug, Clone)]
pub(crate) struct CallerSession(pub Authenticated);

impl FromRequestParts<ApiState> for CallerSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = state
            .authenticator()
            .authenticate_session(parts)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        check_same_origin(parts, &state.config().trusted_origins)?;
        Ok(CallerSession(caller))
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let user = state
            .authenticator()
            .authenticate(parts)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        check_same_origin(parts, &state.config().trusted_origins)?;
        Ok(Caller(user))
    }
}

/// The CSRF check: an unsafe request (anything but GET, HEAD and OPTIONS, and any WebSocket
/// upgrade) without an `Authorization` header must come from the request's own origin when
/// it names one (`Origin`, or else `Referer`). Requests naming no origin (non-browser
/// clients) pass; browsers always send `Origin` on cross-site POSTs and WebSocket upgrades.
pub(crate) fn check_same_origin(parts: &Parts, trusted: &[TrustedOrigin]) -> Result<(), ApiError> {
    let headers = &parts.headers;
    let safe_method = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = headers.contains_key(header::UPGRADE);
    if (safe_method && !upgrade) || headers.contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    let Some(claimed) = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
    else {
        return Ok(());
    };
    let claimed = claimed.to_str().unwrap_or("");
    // `null` and anything else that is not an origin is never trusted.
    let trusted_claim = origin_of(claimed).is_some_and(|claim| trusted.iter().any(|t| t.0 == claim));
    if same_origin(claimed, headers) || trusted_claim {
        Ok(())
    } else {
        Err(ApiError::forbidden("cross-site request refused"))
    }
}

/// An origin (`scheme://host[:port]`) trusted besides the request's own
/// ([`crate::ApiConfig::trusted_origins`]). Only [`TrustedOrigin::parse`] makes one, so a
/// setting that is not an origin fails where it is read, never at request time.
///
/// ```
/// use chatcore_axum::TrustedOrigin;
/// assert!(TrustedOrigin::parse("https://app.example.com").is_ok());
/// assert!(TrustedOrigin::parse("https://app.example.com:8443").is_ok());
/// for bad in ["", " ", "app.example.com", "null", "https://", "https://app.example.com/path"] {
///     assert!(TrustedOrigin::parse(bad).is_err(), "{bad:?}");
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedOrigin((String, String));

impl TrustedOrigin {
    /// Parses `scheme://host[:port]` (`http` or `https`, no path, query or user info).
    ///
    /// Errors: [`chatcore::Error::Invalid`] naming the entry.
    pub fn parse(origin: &str) -> chatcore::Result<Self> {
        let bad =
            || chatcore::Error::invalid(format!("trusted origin {origin:?} is not scheme://host[:port]"));
        let uri: http::Uri = origin.parse().map_err(|_| bad())?;
        let scheme = uri.scheme_str().ok_or_else(bad)?.to_ascii_lowercase();
        let authority = uri.authority().ok_or_else(bad)?;
        let path_ok = matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("") | Some("/")
        );
        if !matches!(scheme.as_str(), "http" | "https")
            || authority.host().is_empty()
            || authority.as_str().contains('@')
            || !path_ok
            || origin.ends_with('/')
        {
            return Err(bad());
        }
        Ok(Self((scheme, authority.as_str().to_ascii_lowercase())))
    }
}

impl std::fmt::Display for TrustedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.0.0, self.0.1)
    }
}

impl std::str::FromStr for TrustedOrigin {
    type Err = chatcore::Error;

    fn from_str(origin: &str) -> chatcore::Result<Self> {
        Self::parse(origin)
    }
}

/// `scheme://authority` of an origin or URL, lowercased; `None` for anything else (`null`).
fn origin_of(url: &str) -> Option<(String, String)> {
    let uri: http::Uri = url.parse().ok()?;
    Some((
        uri.scheme_str()?.to_ascii_lowercase(),
        uri.authority()?.as_str().to_ascii_lowercase(),
    ))
}

fn same_origin(claimed: &str, headers: &HeaderMap) -> bool {
    let Some((_, authority)) = origin_of(claimed) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    authority == host.to_ascii_lowercase()
        || authority == with_default_port(claimed, &host.to_ascii_lowercase())
}

/// `host` with the default port of `claimed`'s scheme, to compare `https://a.example` with
/// `Host: a.example:443`.
fn with_default_port(claimed: &str, host: &str) -> String {
    let port = if claimed.starts_with("https:") {
        ":443"
    } else {
        ":80"
    };
    host.strip_suffix(port).unwrap_or(host).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri("/api/v1/message/");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn same_origin_rules() {
        let host = ("host", "chat.example:8000");
        let ok = |p: Parts| check_same_origin(&p, &[]).is_ok();
        assert!(ok(parts(Method::POST, &[host])));
        assert!(ok(parts(
            Method::POST,
            &[host, ("origin", "http://chat.example:8000")]
        )));
        assert!(ok(parts(
            Method::POST,
            &[host, ("referer", "http://chat.example:8000/page")]
        )));
        assert!(!ok(parts(
            Method::POST,
            &[host, ("origin", "http://evil.example")]
        )));
        assert!(!ok(parts(Method::POST, &[host, ("origin", "null")])));
        assert!(!ok(parts(
            Method::POST,
            &[host, ("referer", "https://evil.example/x")]
        )));
        assert!(ok(parts(
            Method::POST,
            &[
                host,
                ("origin", "http://evil.example"),
                ("authorization", "Bearer x")
            ]
        )));
        assert!(ok(parts(Method::GET, &[host, ("origin", "http://evil.example")])));
        assert!(!ok(parts(
            Method::GET,
            &[host, ("origin", "http://evil.example"), ("upgrade", "websocket")]
        )));
        assert!(ok(parts(
            Method::POST,
            &[("host", "a.example:443"), ("origin", "https://a.example")]
        )));
        let trusted = vec![TrustedOrigin::parse("https://app.example").unwrap()];
        let p = parts(Method::POST, &[host, ("origin", "https://APP.example")]);
        assert!(check_same_origin(&p, &trusted).is_ok());
        // The scheme counts, and `null` (a sandboxed frame, a file) is never trusted.
        let p = parts(Method::POST, &[host, ("origin", "http://app.example")]);
        assert!(check_same_origin(&p, &trusted).is_err());
        let p = parts(Method::POST, &[host, ("origin", "null")]);
        assert!(check_same_origin(&p, &trusted).is_err());
    }
}
