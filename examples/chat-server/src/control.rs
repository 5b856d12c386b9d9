//! The control socket (`--control-socket`): a Unix domain socket where the running server
//! takes the operator commands, as HTTP/1.1 + JSON (so `curl --unix-socket` works too).
//!
//! A SQLite file is held by one process (its lock file), so the commands cannot open it
//! beside a running server; instead they ask that server here ([`ControlClient`]), and it
//! does the work with the same [`AccountOps`] calls a command makes on a database it opens
//! itself. The server owns the users' WebSockets, so a revocation or a deletion closes them
//! at once.
//!
//! Access: the socket file has mode 0600, so only the server's user (and root) may connect,
//! as with PostgreSQL's or Docker's sockets; the server also checks each connection's peer
//! credentials against the file's owner, which closes the moment between creating the file
//! and narrowing its mode.
//!
//! Routes (not part of the public API description):
//! - `POST /users` `{"username", "password"}` → 201 `{"id", "username"}`
//! - `GET /users?prefix=&limit=` → `{"users": [{"id", "username"}]}`
//! - `PUT /users/{name}/password` `{"password"}` → `{"username", "ended_sessions"}`
//! - `POST /users/{name}/revoke-sessions` → `{"username", "ended_sessions"}`
//! - `DELETE /users/{name}` → `{"username", "erased_messages"}`
//!
//! Errors are `{"error": "..."}` with the API's statuses: 404 for an unknown user, 400 for a
//! bad name or password, 409 for a name taken.
//!
//! A command sends its database file's identity in `chatcore-database-file` (device and
//! inode, `DEV:INO`): a server on another database (a `--control-socket` pointing at the
//! wrong server) refuses with 409 instead of changing the wrong users. Without the header
//! (curl) nothing is checked.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::{delete, get, post, put};
use chatcore_axum::ApiError;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ServerError;
use crate::operator::{Account, AccountDeleted, AccountOps, SessionsEnded, UserList};

/// Why the control socket could not be opened, or a command could not be done through it.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The server could not open its control socket at `path` (at start).
    #[error("cannot open the control socket {} ({hint})", path.display())]
    Open {
        /// The socket's path.
        path: PathBuf,
        /// What the operator may do about it.
        hint: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Another live server answers on the socket the server was to open.
    #[error(
        "another server answers on the control socket {}: stop it, or give this one another --control-socket",
        path.display()
    )]
    InUse {
        /// The socket's path.
        path: PathBuf,
    },
    /// Something that is not a socket (a file, a directory) is where the socket goes: the
    /// server removes only a socket a stopped server left.
    #[error(
        "{} exists and is not a socket: remove it, or give another --control-socket",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A running server holds the SQLite file, and the command was told `--control-socket
    /// off`: it cannot ask the server, and changes nothing.
    #[error(
        "a running server holds the database, and --control-socket is off for this command: give it \
         the server's --control-socket PATH to run it in the server, or stop the server. Nothing was changed"
    )]
    Off {
        /// The store's refusal, naming the database and its lock file.
        #[source]
        held: chatcore::Error,
    },
    /// A running server holds the SQLite file, and nothing answers on the control socket.
    #[error(
        "a running server holds the database, but no control socket answers at {} ({reason}): that \
         server runs with --control-socket off or at another path. Give the command its \
         --control-socket PATH, or stop the server. Nothing was changed",
        socket.display()
    )]
    NoServer {
        /// Where the command looked.
        socket: PathBuf,
        /// Why connecting failed.
        reason: io::Error,
        /// The store's refusal, naming the database and its lock file.
        #[source]
        held: chatcore::Error,
    },
    /// A running server holds the SQLite file, and its control socket is not the caller's
    /// to use.
    #[error(
        "a running server holds the database, and its control socket {} is not yours to use \
         (permission denied): run the command as the server's user. Nothing was changed",
        socket.display()
    )]
    Forbidden {
        /// The socket.
        socket: PathBuf,
        /// The store's refusal, naming the database and its lock file.
        #[source]
        held: chatcore::Error,
    },
    /// The running server refused the command (an unknown user, a bad password, ...).
    #[error("{message} (the running server answered {status})")]
    Refused {
        /// The answer's status.
        status: StatusCode,
        /// The answer's `error`.
        message: String,
    },
    /// The exchange with the server failed (it stopped mid-answer, answered nonsense).
    #[error("the exchange with the server on the control socket {} failed", socket.display())]
    Exchange {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `POST /users`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewUser {
    /// The name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// `PUT /users/{name}/password`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewPassword {
    /// The new password.
    pub password: String,
}

/// `GET /users`' query: the options of `list-users`, with its defaults.
#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    crate::options::DEFAULT_LIST_LIMIT
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

/// The running control socket: serves until [`ControlServer::stop`], and its file goes with
/// it (also when the server fails and drops it).
pub struct ControlServer {
    file: SocketFile,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl ControlServer {
    /// Opens the control socket at `path` and serves `ops` there. Call it while holding the
    /// database (a SQLite file's lock): a socket file found at `path` is then one a stopped
    /// server left, replaced; one that still answers belongs to a server on another database
    /// ([`ControlError::InUse`]); anything else there is left alone
    /// ([`ControlError::NotASocket`]).
    ///
    /// `database` is the SQLite file the server holds, if any: commands that name another
    /// file are refused.
    pub async fn start(path: &Path, ops: AccountOps, database: Option<&Path>) -> Result<Self, ControlError> {
        let open = |hint: &'static str, source: io::Error| ControlError::Open {
            path: path.to_owned(),
            hint,
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(found) if std::os::unix::fs::FileTypeExt::is_socket(&found.file_type()) => {
                match UnixStream::connect(path).await {
                    Ok(_) => {
                        return Err(ControlError::InUse {
                            path: path.to_owned(),
                        });
                    }
                    Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path)
                            .map_err(|error| open("cannot remove the socket a stopped server left", error))?;
                        tracing::info!(path = %path.display(), "replaced the control socket a stopped server left");
                    }
                    Err(error) => {
                        return Err(open("cannot tell whether a server still answers there", error));
                    }
                }
            }
            Ok(_) => {
                return Err(ControlError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(open("check the path and its directory's permissions", error)),
        }
        let listener = UnixListener::bind(path).map_err(|error| {
            let hint = match error.kind() {
                io::ErrorKind::NotFound => "its directory does not exist: check --control-socket",
                io::ErrorKind::PermissionDenied => {
                    "the server's user may not create files in its directory: check --control-socket"
                }
                io::ErrorKind::InvalidInput => {
                    "a socket path has at most 107 bytes: give a shorter --control-socket"
                }
                _ => "check --control-socket",
            };
            open(hint, error)
        })?;
        let created = std::fs::symlink_metadata(path)
            .map_err(|error| open("the socket vanished as it was created", error))?;
        let file = SocketFile {
            path: path.to_owned(),
            identity: (created.dev(), created.ino()),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|error| open("cannot restrict it to the server's user", error))?;
        let listener = OwnerOnly {
            listener,
            owner: created.uid(),
        };
        let served = Served {
            identity: database.and_then(file_identity),
            database: database.map(Path::to_owned),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(ops, served))
                .with_graceful_shutdown(async {
                    // A dropped sender stops it too.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(path = %path.display(), "control socket open");
        Ok(Self { file, stop, task })
    }

    /// Stops accepting, lets the commands in progress finish (at most `grace`, then drops
    /// them), and removes the socket file.
    pub async fn stop(self, grace: Duration) -> io::Result<()> {
        let Self { file, stop, mut task } = self;
        // Err: the server task ended already; its result is collected below.
        let _ = stop.send(());
        let served = match tokio::time::timeout(grace, &mut task).await {
            Ok(joined) => joined.unwrap_or_else(|error| Err(io::Error::other(error))),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    "control socket commands still running after the shutdown grace period were dropped"
                );
                Ok(())
            }
        };
        drop(file);
        served
    }
}

/// The socket file, removed when dropped if it is still the one this server created (not
/// one a later server put there).
struct SocketFile {
    path: PathBuf,
    /// Device and inode.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|found| (found.dev(), found.ino()) == self.identity);
        if ours && let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

/// The listener, accepting only connections of the socket file's owner (the server's user)
/// and of root: the file's mode already says so, from the moment it is set; this also turns
/// away whoever connected just before.
struct OwnerOnly {
    listener: UnixListener,
    owner: u32,
}

impl axum::serve::Listener for OwnerOnly {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // axum's accept logs and retries the listener's errors.
            let (stream, address) = axum::serve::Listener::accept(&mut self.listener).await;
            match stream.peer_cred() {
                Ok(peer) if peer.uid() == self.owner || peer.uid() == 0 => return (stream, address),
                Ok(peer) => {
                    tracing::warn!(
                        uid = peer.uid(),
                        "refused a control socket connection of another user"
                    )
                }
                Err(error) => {
                    tracing::warn!(%error, "refused a control socket connection whose user is unknown")
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The header in which a command names its database file, `DEV:INO`.
pub const DATABASE_HEADER: &str = "chatcore-database-file";

/// The device and inode of `path` (following links), `DEV:INO`.
fn file_identity(path: &Path) -> Option<String> {
    let found = std::fs::metadata(path).ok()?;
    Some(format!("{}:{}", found.dev(), found.ino()))
}

/// The database the server holds, to check commands against.
#[derive(Clone)]
struct Served {
    /// `DEV:INO` of the SQLite file; `None` for another database.
    identity: Option<String>,
    database: Option<PathBuf>,
}

/// Refuses (409) a command whose `chatcore-database-file` names another database than the
/// server's.
async fn same_database(
    State(served): State<Served>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(asked) = request.headers().get(DATABASE_HEADER) else {
        return next.run(request).await;
    };
    if served.identity.is_some() && asked.to_str().ok() == served.identity.as_deref() {
        return next.run(request).await;
    }
    let serves = match &served.database {
        Some(path) => format!("the SQLite file {}", path.display()),
        None => "no SQLite file".to_owned(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "this control socket's server serves {serves}, not the command's database: give the command \
             the --control-socket of the server on its database"
        ),
    )
    .into_response()
}

fn router(ops: AccountOps, served: Served) -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{name}", delete(delete_user))
        .route("/users/{name}/password", put(set_password))
        .route("/users/{name}/revoke-sessions", post(revoke_sessions))
        .fallback(|| async { ApiError::not_found("no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .route_layer(axum::middleware::from_fn_with_state(served, same_database))
        .with_state(ops)
}

/// What a failed command answers: the API's status for the service's errors.
fn refusal(error: ServerError) -> ApiError {
    match error {
        ServerError::NoSuchUser(_) => ApiError::not_found(error.to_string()),
        ServerError::Chat(error) => ApiError::from(error),
        other => {
            tracing::error!(error = %other, "a control socket command failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn name(path: Result<UrlPath<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|UrlPath(name)| name)
        .map_err(|rejection| ApiError::from_rejection(rejection.status(), rejection.body_text()))
}

async fn create_user(
    State(ops): State<AccountOps>,
    body: Result<Json<NewUser>, JsonRejection>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    let Json(new) = body?;
    let account = ops
        .create_user(&new.username, &new.password)
        .await
        .map_err(refusal)?;
    tracing::info!(user = %account.username, "control socket: created the user");
    Ok((StatusCode::CREATED, Json(account)))
}

async fn list_users(
    State(ops): State<AccountOps>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UserList>, ApiError> {
    let Query(query) = query?;
    Ok(Json(
        ops.list_users(query.prefix, query.limit).await.map_err(refusal)?,
    ))
}

async fn set_password(
    State(ops): State<AccountOps>,
    path: Result<UrlPath<String>, PathRejection>,
    body: Result<Json<NewPassword>, JsonRejection>,
) -> Result<Json<SessionsEnded>, ApiError> {
    let (name, Json(new)) = (name(path)?, body?);
    let ended = ops.set_password(&name, &new.password).await.map_err(refusal)?;
    tracing::info!(user = %ended.username, ended = ended.ended_sessions, "control socket: set the password");
    Ok(Json(ended))
}

async fn revoke_sessions(
    State(ops): State<AccountOps>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<SessionsEnded>, ApiError> {
    let ended = ops.revoke_sessions(&name(path)?).await.map_err(refusal)?;
    tracing::info!(user = %ended.username, ended = ended.ended_sessions, "control socket: revoked the sessions");
    Ok(Json(ended))
}

async fn delete_user(
    State(ops): State<AccountOps>,
    path: Result<UrlPath<String>, PathRejection>,
) -> Result<Json<AccountDeleted>, ApiError> {
    let deleted = ops.delete_user(&name(path)?).await.map_err(refusal)?;
    tracing::info!(user = %deleted.username, erased = deleted.erased_messages, "control socket: deleted the account");
    Ok(Json(deleted))
}

/// An operator command's connection to the running server's control socket.
pub struct ControlClient {
    socket: PathBuf,
    /// `DEV:INO` of the command's database file, sent with each request.
    database: Option<String>,
    sender: SendRequest<Body>,
}

impl ControlClient {
    /// Connects to the control socket at `socket` of the server whose hold on the database
    /// made the store refuse with `held` (kept for the error when nothing answers).
    pub async fn connect(socket: &Path, held: chatcore::Error) -> Result<Self, ControlError> {
        let database =
            chatcore_sqlite::DatabaseInUse::of(&held).and_then(|held| file_identity(&held.database));
        let stream = match UnixStream::connect(socket).await {
            Ok(stream) => stream,
            Err(reason) if reason.kind() == io::ErrorKind::PermissionDenied => {
                return Err(ControlError::Forbidden {
                    socket: socket.to_owned(),
                    held,
                });
            }
            Err(reason) => {
                return Err(ControlError::NoServer {
                    socket: socket.to_owned(),
                    reason,
                    held,
                });
            }
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| exchange(socket, error))?;
        tokio::spawn(async move {
            // Its failure also fails the request in progress, which reports it.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control socket connection ended");
            }
        });
        Ok(Self {
            socket: socket.to_owned(),
            database,
            sender,
        })
    }

    /// `POST /users`.
    pub async fn create_user(&mut self, username: &str, password: &str) -> Result<Account, ControlError> {
        let body = NewUser {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self.call(Method::POST, "/users".to_owned(), Some(&body)).await
    }

    /// `GET /users?prefix=&limit=`.
    pub async fn list_users(&mut self, prefix: &str, limit: u32) -> Result<UserList, ControlError> {
        let prefix = utf8_percent_encode(prefix, NON_ALPHANUMERIC);
        self.call(
            Method::GET,
            format!("/users?prefix={prefix}&limit={limit}"),
            None::<&()>,
        )
        .await
    }

    /// `PUT /users/{name}/password`.
    pub async fn set_password(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<SessionsEnded, ControlError> {
        let body = NewPassword {
            password: password.to_owned(),
        };
        self.call(Method::PUT, user_path(username, "/password"), Some(&body))
            .await
    }

    /// `POST /users/{name}/revoke-sessions`.
    pub async fn revoke_sessions(&mut self, username: &str) -> Result<SessionsEnded, ControlError> {
        self.call(Method::POST, user_path(username, "/revoke-sessions"), None::<&()>)
            .await
    }

    /// `DELETE /users/{name}`.
    pub async fn delete_user(&mut self, username: &str) -> Result<AccountDeleted, ControlError> {
        self.call(Method::DELETE, user_path(username, ""), None::<&()>)
            .await
    }

    /// One request, its answer parsed as `T` when it succeeded, else its `error` as
    /// [`ControlError::Refused`].
    async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: String,
        body: Option<&impl Serialize>,
    ) -> Result<T, ControlError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        let request = match &self.database {
            Some(identity) => request.header(DATABASE_HEADER, identity),
            None => request,
        };
        let request = match body {
            Some(body) => {
                let json = serde_json::to_vec(body).map_err(|error| exchange(&self.socket, error))?;
                request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json))
            }
            None => request.body(Body::empty()),
        }
        .map_err(|error| exchange(&self.socket, error))?;
        self.sender
            .ready()
            .await
            .map_err(|error| exchange(&self.socket, error))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| exchange(&self.socket, error))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
            .await
            .map_err(|error| exchange(&self.socket, error))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|error| exchange(&self.socket, error));
        }
        let message = match serde_json::from_slice::<ErrorAnswer>(&bytes) {
            Ok(answer) => answer.error,
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        Err(ControlError::Refused { status, message })
    }
}

/// `/users/{name}{rest}`, the name percent-encoded.
fn user_path(username: &str, rest: &str) -> String {
    format!("/users/{}{rest}", utf8_percent_encode(username, NON_ALPHANUMERIC))
}

fn exchange(socket: &Path, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ControlError {
    ControlError::Exchange {
        socket: socket.to_owned(),
        source: error.into(),
    }
}
