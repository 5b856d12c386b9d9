//! Command-line flags and environment variables (clap). Every limit of the HTTP contract is
//! here, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The chatcore standalone server.
#[derive(Debug, Parser)]
#[command(name = "chat-server", version, about, long_about = None)]
pub struct Cli {
    /// Server options (also used by the operator subcommands for the database).
    #[command(flatten)]
    pub server: ServerOptions,
    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How many users `list-users` (and the control socket's `GET /users`) lists unless told.
pub const DEFAULT_LIST_LIMIT: u32 = 1000;

/// Operator subcommands. Against a running server that holds a SQLite file, they run in that
/// server, through its control socket (`--control-socket`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Create a user with a password (asked at a prompt, or read from stdin with --password-stdin).
    CreateUser {
        /// The new user's name: 1-150 letters, digits and @ . + - _.
        username: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users, sorted by name.
    ListUsers {
        /// Only names starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: u32,
    },
    /// Give a user a new password (asked at a prompt, or read from stdin with
    /// --password-stdin) and end every session of theirs: their open WebSockets close (at once
    /// in a server on a SQLite file or through a redis or postgres notifier, else within
    /// --ws-session-recheck-secs).
    SetPassword {
        /// The user's name (any case).
        username: String,
        /// Read the password from the first line of standard input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user's account for good, as the user can (DELETE /api/v1/auth/account)
    /// without the password: sessions end, the password goes, every message they sent
    /// becomes a tombstone, the name stays reserved. Asks for confirmation at a terminal.
    DeleteUser {
        /// The user's name (any case).
        username: String,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// End every session of a user: their tokens and cookies stop working, their open
    /// WebSockets close (at once in a server on a SQLite file or through a redis or postgres
    /// notifier, else within --ws-session-recheck-secs).
    RevokeSessions {
        /// The user's name (any case).
        username: String,
    },
    /// Apply the database schema migrations and exit.
    Migrate,
    /// Print the OpenAPI 3.1 description of the API (what the server serves at
    /// /api/v1/openapi.json) and exit; touches no database.
    Openapi {
        /// Write it to this file instead of standard output (the repository keeps it in
        /// docs/openapi.json).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether the server measures itself (`--metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsMode {
    /// Install a Prometheus recorder and serve `/metrics`.
    On,
    /// Measure nothing, serve no `/metrics` (every handle in the libraries is a no-op).
    Off,
}

/// SQLite durability (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    /// fsync before answering: an acknowledged send survives power loss (default). The fsync
    /// runs on its own thread while the next commit is written (readers may see a commit up to
    /// one fsync before it is durable).
    Full,
    /// Like `full`, but SQLite fsyncs inside each commit: a commit is visible only once it is
    /// durable. Slower under load.
    FullInCommit,
    /// fsync at checkpoints only: survives a crash of the process, may lose the last commits on power loss.
    Normal,
    /// No fsync at all: fastest, for throwaway data only.
    Off,
}

/// A feature switch (`--presence on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Which transport carries notifications (`--notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NotifyKind {
    /// In this process only: one server.
    Local,
    /// Redis pub/sub (`--redis URL`): several servers.
    Redis,
    /// PostgreSQL `LISTEN`/`NOTIFY` on the `--database` (which must be PostgreSQL): several
    /// servers, no other service.
    Postgres,
}

/// The notification transport the options resolve to ([`ServerOptions::notifier_choice`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierChoice {
    /// In this process only.
    Local,
    /// Redis at this URL.
    Redis(String),
    /// PostgreSQL `LISTEN`/`NOTIFY` on the database at this URL.
    Postgres(String),
}

impl NotifierChoice {
    /// Which transport, without its URL (which may hold a password): for the log.
    pub fn kind(&self) -> NotifyKind {
        match self {
            NotifierChoice::Local => NotifyKind::Local,
            NotifierChoice::Redis(_) => NotifyKind::Redis,
            NotifierChoice::Postgres(_) => NotifyKind::Postgres,
        }
    }
}

/// Everything the server is configured with. Each flag has an environment variable, and may
/// come before or after a subcommand (`--database x list-users` = `list-users --database x`).
#[derive(Debug, Clone, Args)]
pub struct ServerOptions {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    /// A host name is resolved once at start (`localhost:8000`), the first address is used.
    #[arg(long, global = true, env = "CHAT_LISTEN", default_value = "127.0.0.1:8000", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Database: `sqlite://PATH` (relative to the working directory; `sqlite:///abs/path` for an
    /// absolute one), `sqlite::memory:`, or `mysql://user:pass@host:port/db`.
    #[arg(
        long,
        global = true,
        env = "CHAT_DATABASE_URL",
        default_value = "sqlite://chat.db"
    )]
    pub database: String,

    /// Redis URL (e.g. `redis://127.0.0.1:6379`): carry notifications over Redis pub/sub so that
    /// several server processes sharing one MySQL act as one. Without it, notifications stay in
    /// this process.
    #[arg(long, global = true, env = "CHAT_REDIS_URL")]
    pub redis: Option<String>,

    /// Prefix of the Redis channels, so several deployments can share one Redis.
    #[arg(long, global = true, env = "CHAT_REDIS_PREFIX", default_value = "chatcore:")]
    pub redis_prefix: String,

    /// How notifications reach the WebSockets: `local` (this process only), `redis` (needs
    /// `--redis`) or `postgres` (LISTEN/NOTIFY on the `--database`, which must be PostgreSQL).
    /// Without it: `redis` when `--redis` is given, else `postgres` when the database is
    /// PostgreSQL (so several servers on one PostgreSQL act as one with no other service),
    /// else `local`.
    #[arg(long, global = true, env = "CHAT_NOTIFY", value_enum)]
    pub notify: Option<NotifyKind>,

    /// The PostgreSQL LISTEN/NOTIFY channel (lowercase letters, digits, `_`): the same on
    /// every server of one deployment, different for deployments sharing one database.
    #[arg(long, global = true, env = "CHAT_NOTIFY_CHANNEL", default_value = "chatcore")]
    pub notify_channel: String,

    /// Largest request body in bytes; larger requests get 413.
    #[arg(long, global = true, env = "CHAT_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// Longest message body in characters after trimming; longer ones get 400.
    #[arg(long, global = true, env = "CHAT_MAX_MESSAGE_CHARS", default_value_t = 4000)]
    pub max_message_chars: usize,

    /// Sends per second per user after the burst; beyond it 429 with Retry-After. 0 turns the limit off.
    #[arg(long, global = true, env = "CHAT_SEND_RATE_PER_SEC", default_value_t = 20)]
    pub send_rate_per_sec: u32,

    /// Sends a user may make in a burst before the rate applies. 0 turns the limit off.
    #[arg(long, global = true, env = "CHAT_SEND_BURST", default_value_t = 100)]
    pub send_burst: u32,

    /// How many seconds after sending a message its sender may still edit it
    /// (`PATCH /api/v1/message/{id}/`); past it 403. Unset: no window (edits always allowed).
    /// Deleting is never limited. Must be at least 1 when set.
    #[arg(long, global = true, env = "CHAT_EDIT_WINDOW", value_name = "SECONDS")]
    pub edit_window: Option<u64>,

    /// Messages per history page when the client asks for no size.
    #[arg(long, global = true, env = "CHAT_PAGE_SIZE", default_value_t = 15)]
    pub page_size: u32,

    /// Largest history page a client may ask for (`?limit=`); larger requests are clamped.
    #[arg(long, global = true, env = "CHAT_MAX_PAGE_SIZE", default_value_t = 100)]
    pub max_page_size: u32,

    /// Conversations per inbox page (`GET /api/v1/conversation/`) when the client asks for no size.
    #[arg(long, global = true, env = "CHAT_INBOX_PAGE", default_value_t = 20)]
    pub inbox_page: u32,

    /// Largest inbox page a client may ask for (`?limit=`); larger requests are clamped.
    #[arg(long, global = true, env = "CHAT_MAX_INBOX_PAGE", default_value_t = 100)]
    pub max_inbox_page: u32,
    /// Most messages a numbered page (`?page=N`) may skip, (N-1) x limit; a deeper page gets
    /// 400 telling the client to page with `?before=<id>` (same cost at any depth). 0 allows
    /// page 1 only.
    #[arg(long, global = true, env = "CHAT_MAX_PAGE_OFFSET", default_value_t = 3000)]
    pub max_page_offset: u32,

    /// Users per directory page (and page of `GET /api/v1/block/`) when the client asks for no
    /// size, and the most it may ask for.
    #[arg(long, global = true, env = "CHAT_USER_PAGE_SIZE", default_value_t = 1000)]
    pub user_page_size: u32,

    /// Most missed events replayed to a reconnecting WebSocket (`?since=`); beyond it the
    /// client gets `{"type":"resync","resync":true}`.
    #[arg(long, global = true, env = "CHAT_CATCH_UP_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub catch_up_limit: u32,

    /// Events a WebSocket reads from storage per catch-up page (its memory holds one page).
    #[arg(long, global = true, env = "CHAT_CATCH_UP_PAGE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub catch_up_page: u32,

    /// A catch-up page also ends once its message bodies reach this many bytes.
    #[arg(long, global = true, env = "CHAT_CATCH_UP_PAGE_BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub catch_up_page_bytes: u64,

    /// Catch-up reads of one user that may run at once; more wait their turn.
    #[arg(long, global = true, env = "CHAT_CATCH_UP_READS_PER_USER", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub catch_up_reads_per_user: u64,

    /// WebSockets one user may hold open on this server; one more closes their oldest (1008).
    #[arg(long, global = true, env = "CHAT_MAX_SOCKETS_PER_USER", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sockets_per_user: u64,

    /// Notifications queued per WebSocket; past it the events that do not fit are read from
    /// storage once the socket gets to them.
    #[arg(long, global = true, env = "CHAT_WS_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_queue: u64,

    /// Milliseconds a live notification that arrived ahead of an earlier one waits for it
    /// before the socket reads the missing events from storage.
    #[arg(long, global = true, env = "CHAT_WS_GAP_WAIT_MS", default_value_t = 50)]
    pub ws_gap_wait_ms: u64,

    /// Let the notifications of one commit gather into one write per WebSocket: 3-5% more
    /// sends/s when the server is saturated, at the price of a longer notification tail then.
    #[arg(long, global = true, env = "CHAT_WS_GATHER_FRAMES")]
    pub ws_gather_frames: bool,

    /// Seconds between pings on an open WebSocket.
    #[arg(long, global = true, env = "CHAT_WS_PING_SECS", default_value_t = 30)]
    pub ws_ping_secs: u64,

    /// Seconds after a missed pong before a WebSocket is considered dead and dropped.
    #[arg(long, global = true, env = "CHAT_WS_PING_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_ping_timeout_secs: u64,

    /// How often each open WebSocket checks in the database that its session still exists
    /// (closing with 4001 when not): how long a socket outlives a session ended where the
    /// notifier does not reach this server (an operator command against MySQL without
    /// redis). A logout or deletion through the server, or through a redis or postgres
    /// notifier, closes sockets at once. 0 turns the check off.
    #[arg(
        long,
        global = true,
        env = "CHAT_WS_SESSION_RECHECK_SECS",
        default_value_t = 60
    )]
    pub ws_session_recheck_secs: u64,

    /// Milliseconds a WebSocket client may take to accept one frame (its receive window
    /// full); past it the socket is dropped as lagging (counted in
    /// `chatcore_ws_closed_total{reason="lagging"}`) and the client reconnects with `since`.
    #[arg(long, global = true, env = "CHAT_WS_SEND_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ws_send_timeout_ms: u64,

    /// Presence: who is online, told to the users who share a conversation with them
    /// (`presence` frames, `online`/`last_seen` in the inbox and the directory),
    /// deployment-wide over the notifier. `off` drops all of it.
    #[arg(long, global = true, env = "CHAT_PRESENCE", value_enum, default_value_t = Switch::On)]
    pub presence: Switch,

    /// Milliseconds a user whose last WebSocket closed stays online, so that a reloaded
    /// page sends no offline/online pair.
    #[arg(long, global = true, env = "CHAT_PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,

    /// Milliseconds between presence rounds: each watcher gets at most one `presence` frame
    /// per round, listing every change.
    #[arg(long, global = true, env = "CHAT_PRESENCE_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_interval_ms: u64,

    /// Milliseconds without word from a server after which the others show its users
    /// offline (a server killed without goodbye); each server speaks every third of it.
    #[arg(
        long,
        global = true,
        env = "CHAT_PRESENCE_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub presence_timeout_ms: u64,

    /// Typing frames one WebSocket may send in a burst; extra ones are dropped. 0 turns
    /// typing off.
    #[arg(long, global = true, env = "CHAT_TYPING_BURST", default_value_t = 5)]
    pub typing_burst: u32,

    /// Typing frames per second one WebSocket may send after the burst.
    #[arg(long, global = true, env = "CHAT_TYPING_RATE_PER_SEC", default_value_t = 1)]
    pub typing_rate_per_sec: u32,

    /// How long a typing indication holds unless renewed (`expires_in_ms`), in milliseconds.
    #[arg(long, global = true, env = "CHAT_TYPING_EXPIRY_MS", default_value_t = 6000)]
    pub typing_expiry_ms: u64,

    /// Mark the session cookie `Secure` (when served over HTTPS, e.g. behind a TLS proxy).
    #[arg(long, global = true, env = "CHAT_SECURE_COOKIES")]
    pub secure_cookies: bool,

    /// How long a login session lasts, in hours.
    #[arg(long, global = true, env = "CHAT_SESSION_HOURS", default_value_t = 14 * 24, value_parser = clap::value_parser!(u64).range(1..))]
    pub session_hours: u64,

    /// Live sessions this server keeps in memory so authenticated requests skip the
    /// database; a logout on any node reaches every node's cache (through Redis when
    /// configured). 0 turns the cache off.
    #[arg(
        long,
        global = true,
        env = "CHAT_SESSION_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub session_cache_capacity: u64,

    /// Longest a session stays cached before the database is asked again, in seconds. 0
    /// turns the cache off.
    #[arg(
        long,
        global = true,
        env = "CHAT_SESSION_CACHE_TTL_SECS",
        default_value_t = 300
    )]
    pub session_cache_ttl_secs: u64,

    /// How often expired sessions are deleted from the database, in seconds. 0 turns the
    /// sweep off.
    #[arg(
        long,
        global = true,
        env = "CHAT_EXPIRED_SESSION_SWEEP_SECS",
        default_value_t = 3600
    )]
    pub expired_session_sweep_secs: u64,

    /// Logins accepted per minute from one client address (an IPv6 /64 counts as one);
    /// beyond it 429 with Retry-After. 0 turns the limit off.
    #[arg(long, global = true, env = "CHAT_LOGINS_PER_MINUTE", default_value_t = 10)]
    pub logins_per_minute: u32,

    /// Registrations accepted per hour from one client address; beyond it 429 with
    /// Retry-After. 0 turns the limit off.
    #[arg(
        long,
        global = true,
        env = "CHAT_REGISTRATIONS_PER_HOUR",
        default_value_t = 10
    )]
    pub registrations_per_hour: u32,

    /// The server runs behind a reverse proxy that appends the client's address to
    /// X-Forwarded-For: the login and registration limits count the last entry, not the
    /// proxy's address. Only behind such a proxy (otherwise clients pick their address).
    #[arg(long, global = true, env = "CHAT_BEHIND_PROXY")]
    pub behind_proxy: bool,

    /// Other origins (like `https://app.example.com`) allowed to POST with the session cookie
    /// and to open WebSockets, besides the server's own. Repeat or comma-separate.
    /// Each entry must be `scheme://host[:port]`; anything else (an empty entry, a missing
    /// scheme, a path) stops the server at start.
    #[arg(long, global = true, env = "CHAT_TRUSTED_ORIGINS", value_delimiter = ',')]
    pub trusted_origin: Vec<chatcore_axum::TrustedOrigin>,

    /// SQLite durability: `full` (default), `full-in-commit`, `normal` or `off`.
    #[arg(long, global = true, env = "CHAT_SQLITE_SYNCHRONOUS", value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_synchronous: SqliteSync,

    /// SQLite reader threads.
    #[arg(long, global = true, env = "CHAT_SQLITE_READERS", default_value_t = 4)]
    pub sqlite_readers: usize,

    /// Seconds a database call may go unanswered (a hung or partitioned MySQL, a stuck SQLite
    /// writer) before the request gets 503 with Retry-After; the server recovers by itself
    /// once the database answers.
    #[arg(long, global = true, env = "CHAT_STORAGE_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub storage_timeout_secs: u64,

    /// MySQL or PostgreSQL connection pool size (on PostgreSQL the readers' pool: the batch
    /// writer that stores sends holds two connections more, its own and a spare).
    #[arg(long, global = true, env = "CHAT_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Seconds a client may take to send a whole request head; a slower one is disconnected.
    #[arg(long, global = true, env = "CHAT_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,

    /// Seconds a request body may go without a byte arriving; then 408.
    #[arg(long, global = true, env = "CHAT_BODY_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,

    /// Seconds a connection may stay open with no request in progress (keep-alive, or before
    /// its first request); WebSockets have their own pings.
    #[arg(long, global = true, env = "CHAT_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Largest request head (request line and headers) in bytes, at least 8192; larger gets
    /// 431 (414 for a request line alone too long).
    #[arg(long, global = true, env = "CHAT_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(8192..))]
    pub max_header_bytes: u64,

    /// Most headers in one request; more gets 431.
    #[arg(long, global = true, env = "CHAT_MAX_HEADERS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_headers: u64,

    /// Most open connections (WebSockets included); past it new connections are closed at
    /// once (counted, logged at most every 10 s). Lowered at start to fit the descriptor
    /// limit minus --descriptor-reserve.
    #[arg(long, global = true, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Most open connections from one client address (an IPv6 /64 counts as one).
    #[arg(long, global = true, env = "CHAT_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_address: u64,

    /// File descriptors kept free for the database, files and logs: connections never use them.
    #[arg(long, global = true, env = "CHAT_DESCRIPTOR_RESERVE", default_value_t = 256)]
    pub descriptor_reserve: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before the connections
    /// still open are closed.
    #[arg(long, global = true, env = "CHAT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Seconds between SIGTERM/SIGINT and the start of the shutdown during which /readyz
    /// answers 503 while everything else (the listener included) still serves, so a load
    /// balancer takes the server out of rotation first. 0: shut down at once (/readyz still
    /// fails before the listener closes).
    #[arg(long, global = true, env = "CHAT_SHUTDOWN_DRAIN_SECS", default_value_t = 0)]
    pub shutdown_drain_secs: u64,

    /// Milliseconds /readyz waits for the database's trivial read before answering 503.
    #[arg(long, global = true, env = "CHAT_READINESS_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub readiness_timeout_ms: u64,

    /// Serve `POST /_bench/echo` (parse the JSON, answer it): the framework ceiling that the
    /// load generator compares against. Off by default.
    #[arg(long, global = true, env = "CHAT_BENCH_ENDPOINTS")]
    pub bench_endpoints: bool,

    /// Install an in-process send policy that allows every message: what the policy hook
    /// itself costs a send, for benchmarks (it changes no answer). Off by default.
    #[arg(long, global = true, env = "CHAT_BENCH_ALLOW_ALL_POLICY")]
    pub bench_allow_all_policy: bool,

    /// Prometheus metrics: `on` (a recorder, and `/metrics` in the Prometheus text format) or
    /// `off` (nothing measured or served; the same binary measured both ways shows what
    /// metrics cost).
    #[arg(long, global = true, env = "CHAT_METRICS", value_enum, default_value_t = MetricsMode::On)]
    pub metrics: MetricsMode,

    /// Serve `/metrics` on this address only, not on the main listener (port 0 picks a free
    /// port; the chosen address is printed before the main one).
    #[arg(long, global = true, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The control socket: a Unix domain socket (mode 0600, so only the server's user, and
    /// root, may use it) where the running server takes the operator commands (`create-user`,
    /// `set-password`, `revoke-sessions`, ...) as HTTP/1.1 + JSON, so that they work while it
    /// holds a SQLite file. A path, or `off`. Default: `<database file>-chatcore.sock` beside a
    /// SQLite file database, off for `sqlite::memory:`, MySQL and PostgreSQL (whose commands
    /// run beside the servers; a path given there serves curl). A command that finds the
    /// SQLite file held looks for the running server at the same path.
    #[arg(long, global = true, env = "CHAT_CONTROL_SOCKET", value_name = "PATH|off", value_parser = parse_control_socket)]
    pub control_socket: Option<ControlSocket>,

    /// Log format.
    #[arg(long, global = true, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax (e.g. `info`, `chatcore=debug,tower_http=debug`).
    #[arg(long, global = true, env = "CHAT_LOG", default_value = "info")]
    pub log: String,

    /// Webhooks and the HTTP send policy (`--webhook-*`, `--policy-*`).
    #[command(flatten)]
    pub hooks: crate::hooks::HookOptions,
}

impl ServerOptions {
    /// Options with every default, listening on `listen`, storing in `database`; for tests.
    pub fn for_tests(listen: SocketAddr, database: impl Into<String>) -> Self {
        let mut options = Cli::parse_from(["chat-server"]).server;
        options.listen = listen;
        options.database = database.into();
        options
    }

    /// The deadline of every storage call.
    pub fn storage_timeout(&self) -> Duration {
        Duration::from_secs(self.storage_timeout_secs)
    }

    /// The connection limits and timeouts.
    pub fn serve_config(&self) -> chatcore_axum::ServeConfig {
        let count = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        chatcore_axum::ServeConfig {
            header_read_timeout: Duration::from_secs(self.header_timeout_secs),
            request_body_timeout: Duration::from_secs(self.body_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_header_bytes: count(self.max_header_bytes),
            max_headers: count(self.max_headers),
            max_connections: count(self.max_connections),
            max_connections_per_address: count(self.max_connections_per_address),
            descriptor_reserve: count(self.descriptor_reserve),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }

    /// The notification transport: `--notify` if given (checked against `--redis` and
    /// `--database`), else the default rule described on [`ServerOptions::notify`]. A choice
    /// that cannot work is [`crate::ServerError::Config`], never quietly replaced by another.
    ///
    /// ```
    /// use chat_server::options::{NotifierChoice, NotifyKind, ServerOptions};
    /// let mut options = ServerOptions::for_tests("127.0.0.1:0".parse().unwrap(), "postgres://db/chat");
    /// assert_eq!(options.notifier_choice().unwrap(), NotifierChoice::Postgres("postgres://db/chat".into()));
    /// options.redis = Some("redis://r".into());
    /// assert_eq!(options.notifier_choice().unwrap(), NotifierChoice::Redis("redis://r".into()));
    /// options.notify = Some(NotifyKind::Local);
    /// assert!(options.notifier_choice().is_err(), "local with a Redis URL is a contradiction");
    /// ```
    pub fn notifier_choice(&self) -> Result<NotifierChoice, crate::ServerError> {
        let postgres = matches!(
            crate::storage::DatabaseUrl::parse(&self.database),
            Ok(crate::storage::DatabaseUrl::Postgres(_))
        );
        let config = |message: &str| Err(crate::ServerError::Config(message.to_owned()));
        match (self.notify, &self.redis) {
            (Some(NotifyKind::Local), Some(_)) => config("--notify local contradicts --redis: drop one"),
            (Some(NotifyKind::Local), None) => Ok(NotifierChoice::Local),
            (Some(NotifyKind::Redis) | None, Some(url)) => Ok(NotifierChoice::Redis(url.clone())),
            (Some(NotifyKind::Redis), None) => config("--notify redis needs --redis URL"),
            (Some(NotifyKind::Postgres), Some(_)) => {
                config("--notify postgres contradicts --redis: drop one")
            }
            (Some(NotifyKind::Postgres), None) if !postgres => {
                config("--notify postgres needs a postgres:// --database")
            }
            (Some(NotifyKind::Postgres), None) => Ok(NotifierChoice::Postgres(self.database.clone())),
            (None, None) if postgres => Ok(NotifierChoice::Postgres(self.database.clone())),
            (None, None) => Ok(NotifierChoice::Local),
        }
    }

    /// Where the control socket is, `None` for none: `--control-socket`, else beside a
    /// SQLite file database (`<file>-chatcore.sock`, beside its lock file) and none for the
    /// others. The server opens it there and the operator commands look for it there.
    ///
    /// ```
    /// use chat_server::options::ServerOptions;
    /// let options = |database: &str| ServerOptions::for_tests("127.0.0.1:0".parse().unwrap(), database);
    /// assert_eq!(options("sqlite://data/chat.db").control_socket().unwrap(), Some("data/chat.db-chatcore.sock".into()));
    /// assert_eq!(options("sqlite::memory:").control_socket().unwrap(), None);
    /// assert_eq!(options("postgres://db/chat").control_socket().unwrap(), None);
    /// ```
    pub fn control_socket(&self) -> Result<Option<PathBuf>, crate::ServerError> {
        use crate::storage::DatabaseUrl;
        Ok(match &self.control_socket {
            Some(ControlSocket::Off) => None,
            Some(ControlSocket::At(path)) => Some(path.clone()),
            None => match DatabaseUrl::parse(&self.database)? {
                DatabaseUrl::SqliteFile(database) => {
                    let mut path = database.into_os_string();
                    path.push("-chatcore.sock");
                    Some(PathBuf::from(path))
                }
                DatabaseUrl::SqliteMemory | DatabaseUrl::Mysql(_) | DatabaseUrl::Postgres(_) => None,
            },
        })
    }

    /// The session lifetime.
    pub fn session_lifetime(&self) -> Duration {
        Duration::from_secs(self.session_hours.saturating_mul(3600))
    }

    /// The authenticator's settings.
    pub fn session_config(&self) -> chatcore_axum::SessionConfig {
        chatcore_axum::SessionConfig {
            secure_cookies: self.secure_cookies,
            session_lifetime: self.session_lifetime(),
            session_cache_capacity: self.session_cache_capacity,
            session_cache_ttl: Duration::from_secs(self.session_cache_ttl_secs),
            expired_session_sweep: Duration::from_secs(self.expired_session_sweep_secs),
            logins_per_minute: self.logins_per_minute,
            registrations_per_hour: self.registrations_per_hour,
            behind_proxy: self.behind_proxy,
            ..chatcore_axum::SessionConfig::default()
        }
    }
}

/// `--control-socket`: where the control socket is, or that there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSocket {
    /// No control socket (`off`).
    Off,
    /// At this path (a file named `off` is `./off`).
    At(PathBuf),
}

/// `--control-socket`: `off`, or a path (not empty).
pub fn parse_control_socket(value: &str) -> Result<ControlSocket, String> {
    match value {
        "off" => Ok(ControlSocket::Off),
        "" => Err("empty: give the socket's path, or `off`".to_owned()),
        path => Ok(ControlSocket::At(PathBuf::from(path))),
    }
}

/// `--listen`: `IP:PORT`, or `HOST:PORT` resolved now (the first address it resolves to).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = value.parse() {
        return Ok(address);
    }
    let mut addresses = value.to_socket_addrs().map_err(|error| {
        format!(
            "cannot resolve {value:?} ({error}): expected HOST:PORT, like 127.0.0.1:8000 or localhost:8000"
        )
    })?;
    addresses
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address: expected HOST:PORT, like 127.0.0.1:8000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "chat-server",
                "--database",
                "sqlite://x.db",
                "list-users",
                "--prefix",
                "a",
            ][..],
            &[
                "chat-server",
                "list-users",
                "--database",
                "sqlite://x.db",
                "--prefix",
                "a",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.server.database, "sqlite://x.db", "{args:?}");
            assert!(matches!(cli.command, Some(Command::ListUsers { ref prefix, .. }) if prefix == "a"));
        }
    }

    #[test]
    fn listen_takes_a_host_name() {
        let cli = Cli::try_parse_from(["chat-server", "--listen", "localhost:8000"]).expect("parses");
        assert!(cli.server.listen.ip().is_loopback());
        assert_eq!(cli.server.listen.port(), 8000);
        let error = Cli::try_parse_from(["chat-server", "--listen", "localhost"]).unwrap_err();
        assert!(error.to_string().contains("expected HOST:PORT"), "{error}");
    }

    #[test]
    fn session_defaults_are_the_libraries() {
        let options = Cli::parse_from(["chat-server"]).server;
        assert_eq!(
            options.session_config(),
            chatcore_axum::SessionConfig {
                session_lifetime: options.session_lifetime(),
                ..Default::default()
            }
        );
        let flags = [
            "chat-server",
            "--session-cache-capacity",
            "0",
            "--logins-per-minute",
            "3",
            "--registrations-per-hour",
            "0",
            "--expired-session-sweep-secs",
            "60",
            "--behind-proxy",
        ];
        let config = Cli::parse_from(flags).server.session_config();
        assert_eq!(config.session_cache_capacity, 0);
        assert_eq!(config.logins_per_minute, 3);
        assert_eq!(config.registrations_per_hour, 0);
        assert_eq!(config.expired_session_sweep, Duration::from_secs(60));
        assert!(config.behind_proxy);
    }

    #[test]
    fn edge_defaults_are_the_libraries() {
        let options = Cli::parse_from(["chat-server"]).server;
        assert_eq!(options.serve_config(), chatcore_axum::ServeConfig::default());
        assert!(Cli::try_parse_from(["chat-server", "--max-header-bytes", "100"]).is_err());
        assert!(Cli::try_parse_from(["chat-server", "--idle-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn control_socket_flag() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["chat-server"][..], args].concat());
        let socket = |args: &[&str]| parse(args).unwrap().server.control_socket().unwrap();
        assert_eq!(socket(&[]), Some(PathBuf::from("chat.db-chatcore.sock")));
        assert_eq!(socket(&["--control-socket", "off"]), None);
        assert_eq!(
            socket(&[
                "--database",
                "mysql://db/chat",
                "--control-socket",
                "/run/chat.sock"
            ]),
            Some(PathBuf::from("/run/chat.sock"))
        );
        let error = parse(&["--control-socket", ""]).unwrap_err();
        assert!(
            error.to_string().contains("give the socket's path, or `off`"),
            "{error}"
        );
    }

    #[test]
    fn sqlite_durability_flags() {
        let parse = |value: &str| {
            Cli::parse_from(["chat-server", "--sqlite-synchronous", value])
                .server
                .sqlite_synchronous
        };
        assert_eq!(
            Cli::parse_from(["chat-server"]).server.sqlite_synchronous,
            SqliteSync::Full
        );
        assert_eq!(parse("full-in-commit"), SqliteSync::FullInCommit);
        assert_eq!(parse("normal"), SqliteSync::Normal);
        assert!(Cli::try_parse_from(["chat-server", "--sqlite-synchronous", "fast"]).is_err());
    }
}
