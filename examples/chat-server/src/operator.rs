//! The operator commands' work (`create-user`, `list-users`, `set-password`,
//! `revoke-sessions`, `delete-user`), done in one place for both ways of doing it: by the
//! command itself on a database it opens ([`Operator::Direct`]), or by the running server
//! that holds a SQLite file, asked through its control socket ([`Operator::Server`], served by
//! [`crate::control`] with these same [`AccountOps`] calls). Either way the same service calls
//! apply the same rules and the command prints the same answer.

use std::sync::Arc;

use chatcore::{Backend, ChatService, User, UserQuery};
use chatcore_axum::SessionAuthenticator;
use serde::{Deserialize, Serialize};

use crate::control::{ControlClient, ControlError};
use crate::{App, ServerError, ServerOptions, storage};

/// A user, as the commands print it and the control socket answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The user's id.
    pub id: i64,
    /// The user's name.
    pub username: String,
}

impl From<User> for Account {
    fn from(user: User) -> Self {
        Self {
            id: user.id.0,
            username: user.username.as_str().to_owned(),
        }
    }
}

/// The answer of `list-users` (`GET /users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// The users, sorted by name.
    pub users: Vec<Account>,
}

/// The answer of `set-password` and `revoke-sessions`: whose sessions ended, how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsEnded {
    /// The user's name as stored.
    pub username: String,
    /// How many sessions ended.
    pub ended_sessions: u64,
}

impl SessionsEnded {
    fn of(user: &User, ended: u64) -> Self {
        Self {
            username: user.username.as_str().to_owned(),
            ended_sessions: ended,
        }
    }
}

/// The answer of `delete-user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDeleted {
    /// The deleted user's name, which stays reserved.
    pub username: String,
    /// How many of their messages became tombstones.
    pub erased_messages: u64,
}

/// The account work of the commands over one service and authenticator: what a command does
/// on its own database, and what the running server does when asked on its control socket.
#[derive(Clone)]
pub struct AccountOps {
    chat: ChatService,
    sessions: SessionAuthenticator,
    backend: Arc<dyn Backend>,
}

impl AccountOps {
    /// The operations over `app`'s service and authenticator, on `backend` (its store).
    pub fn new(app: &App, backend: &Arc<dyn Backend>) -> Self {
        Self {
            chat: app.chat.clone(),
            sessions: app.sessions.clone(),
            backend: backend.clone(),
        }
    }

    /// Creates `username` with `password`, through the authenticator: the name and password
    /// rules, and the hashing, of the register route.
    pub async fn create_user(&self, username: &str, password: &str) -> Result<Account, ServerError> {
        Ok(self.sessions.register(username, password).await?.into())
    }

    /// Up to `limit` users whose names start with `prefix`, sorted by name.
    pub async fn list_users(&self, prefix: String, limit: u32) -> Result<UserList, ServerError> {
        list_users(&*self.backend, prefix, limit).await
    }

    /// Gives `username` a new password and ends every session of theirs.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<SessionsEnded, ServerError> {
        let user = self.user(username).await?;
        let (user, ended) = self
            .sessions
            .set_password(&self.chat, user.username.as_str(), password)
            .await?;
        Ok(SessionsEnded::of(&user, ended))
    }

    /// Ends every session of `username` and closes their WebSockets (4001).
    pub async fn revoke_sessions(&self, username: &str) -> Result<SessionsEnded, ServerError> {
        let user = self.user(username).await?;
        let ended = self.sessions.revoke_sessions(&self.chat, &user).await?;
        Ok(SessionsEnded::of(&user, ended))
    }

    /// Deletes `username`'s account as `DELETE /api/v1/auth/account` does, without the password.
    pub async fn delete_user(&self, username: &str) -> Result<AccountDeleted, ServerError> {
        let user = self.user(username).await?;
        let erased = self.sessions.delete_account(&self.chat, &user).await?;
        Ok(AccountDeleted {
            username: user.username.as_str().to_owned(),
            erased_messages: erased,
        })
    }

    /// The user named `username` (any case), [`ServerError::NoSuchUser`] when none is.
    async fn user(&self, username: &str) -> Result<User, ServerError> {
        self.chat
            .find_user(username)
            .await?
            .ok_or_else(|| ServerError::NoSuchUser(username.to_owned()))
    }
}

/// `list-users` on a store: needs no service (and so no notifier).
async fn list_users(backend: &dyn Backend, prefix: String, limit: u32) -> Result<UserList, ServerError> {
    let query = UserQuery {
        exclude: None,
        prefix,
        after: None,
        limit,
    };
    let users = backend.list_users(&query).await?;
    Ok(UserList {
        users: users.into_iter().map(Account::from).collect(),
    })
}

/// Where an operator command does its work.
pub enum Operator {
    /// On the database the command opened itself (no server holds it, or several servers
    /// share it: MySQL, PostgreSQL), through a service with the server's notifier, so what
    /// the command ends reaches the running servers where the notifier does.
    Direct {
        /// The open store.
        backend: Arc<dyn Backend>,
        /// The command's options, for the service it builds.
        options: Box<ServerOptions>,
    },
    /// In the running server that holds the SQLite file, asked on its control socket: it owns
    /// the sockets, so they close at once.
    Server(ControlClient),
}

impl Operator {
    /// Where `command` works: on the database named by `options` (created when missing), or,
    /// when that is a SQLite file a running server holds, in that server through its control
    /// socket. Never on a file behind a server: with no control socket answering, the error
    /// says so.
    pub async fn open(options: &ServerOptions) -> Result<Self, ServerError> {
        let backend = match storage::open(options).await {
            Ok(backend) => backend,
            Err(ServerError::Database { source, .. })
                if chatcore_sqlite::DatabaseInUse::of(&source).is_some() =>
            {
                return match options.control_socket()? {
                    Some(socket) => Ok(Operator::Server(ControlClient::connect(&socket, source).await?)),
                    None => Err(ControlError::Off { held: source }.into()),
                };
            }
            Err(error) => return Err(error),
        };
        if let Err(error) = storage::migrate(&*backend).await {
            backend.close().await?;
            return Err(error);
        }
        Ok(Operator::Direct {
            backend,
            options: Box::new(options.clone()),
        })
    }

    /// Like [`Operator::open`] for a `command` that only reads or changes what exists: a
    /// mistyped path must not leave a new, empty database behind.
    pub async fn open_existing(options: &ServerOptions, command: &str) -> Result<Self, ServerError> {
        storage::require_existing(options, command)?;
        Self::open(options).await
    }

    /// The operations on the command's own store, through a service built as the server
    /// builds it.
    async fn ops(backend: &Arc<dyn Backend>, options: &ServerOptions) -> Result<AccountOps, ServerError> {
        Ok(AccountOps::new(&App::new(options, backend).await?, backend))
    }

    /// See [`AccountOps::create_user`].
    pub async fn create_user(&mut self, username: &str, password: &str) -> Result<Account, ServerError> {
        match self {
            Operator::Direct { backend, options } => {
                Self::ops(backend, options)
                    .await?
                    .create_user(username, password)
                    .await
            }
            Operator::Server(client) => Ok(client.create_user(username, password).await?),
        }
    }

    /// See [`AccountOps::list_users`].
    pub async fn list_users(&mut self, prefix: String, limit: u32) -> Result<UserList, ServerError> {
        match self {
            Operator::Direct { backend, .. } => list_users(&**backend, prefix, limit).await,
            Operator::Server(client) => Ok(client.list_users(&prefix, limit).await?),
        }
    }

    /// See [`AccountOps::set_password`].
    pub async fn set_password(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<SessionsEnded, ServerError> {
        match self {
            Operator::Direct { backend, options } => {
                Self::ops(backend, options)
                    .await?
                    .set_password(username, password)
                    .await
            }
            Operator::Server(client) => Ok(client.set_password(username, password).await?),
        }
    }

    /// See [`AccountOps::revoke_sessions`].
    pub async fn revoke_sessions(&mut self, username: &str) -> Result<SessionsEnded, ServerError> {
        match self {
            Operator::Direct { backend, options } => {
                Self::ops(backend, options).await?.revoke_sessions(username).await
            }
            Operator::Server(client) => Ok(client.revoke_sessions(username).await?),
        }
    }

    /// See [`AccountOps::delete_user`].
    pub async fn delete_user(&mut self, username: &str) -> Result<AccountDeleted, ServerError> {
        match self {
            Operator::Direct { backend, options } => {
                Self::ops(backend, options).await?.delete_user(username).await
            }
            Operator::Server(client) => Ok(client.delete_user(username).await?),
        }
    }

    /// When the open WebSockets of a user whose sessions ended close, for the operator.
    pub fn sockets_note(&self) -> String {
        match self {
            Operator::Direct { options, .. } => match options.notifier_choice() {
                // 0 turns the recheck off: nothing tells those servers' sockets.
                Ok(crate::options::NotifierChoice::Local) if options.ws_session_recheck_secs == 0 => {
                    "open WebSockets stay open until they reconnect (--ws-session-recheck-secs 0 turns the \
                     check off; give the servers a recheck interval or --notify redis|postgres)"
                        .to_owned()
                }
                Ok(crate::options::NotifierChoice::Local) => format!(
                    "open WebSockets close within --ws-session-recheck-secs ({} s unless the servers set another)",
                    options.ws_session_recheck_secs
                ),
                _ => "open WebSockets close at once".to_owned(),
            },
            // The server owns the sockets: it told them to close before it answered.
            Operator::Server(_) => "open WebSockets close at once".to_owned(),
        }
    }

    /// Closes the command's own store (flushing SQLite); nothing to close in a server.
    pub async fn close(self) -> Result<(), ServerError> {
        match self {
            Operator::Direct { backend, .. } => Ok(backend.close().await?),
            Operator::Server(_) => Ok(()),
        }
    }
}
