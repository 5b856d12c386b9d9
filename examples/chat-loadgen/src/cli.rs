//! The command line: every option, its environment variable and its default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::Error;

/// How the load generator authenticates its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// The chatcore server: registers fresh users (`POST /api/v1/auth/register`), logs each in
    /// (`POST /api/v1/auth/login`) and sends `Authorization: Bearer <token>` everywhere.
    Token,
    /// A server that speaks the original Django app's API: users exist already; the tool gets a
    /// session cookie for each (from `--cookie-file`, or by logging in through the login form
    /// with `--login-users`) and sends the cookie plus the `X-CSRFToken` header.
    Original,
}

/// Which HTTP client sends the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpClient {
    /// Each sender drives its own HTTP/1.1 keep-alive connections with hyper: the least CPU
    /// per request (plain `http://` only; `https://` uses reqwest).
    Hyper,
    /// reqwest's shared keep-alive pool: more CPU per request; for comparison.
    Reqwest,
}

/// Load generator for a chatcore server: creates users, opens WebSockets, sends messages and
/// reports send throughput, send and notification latency, and lost or duplicated
/// notifications.
///
/// Run the server with its send rate limit off (`chat-server --send-rate-per-sec 0`) and its per-address login and registration limits
/// off (`--logins-per-minute 0 --registrations-per-hour 0`), otherwise sends beyond the limit answer 429 and count as errors. `--ceiling` needs the
/// server started with `--bench-endpoints`.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-loadgen", version, about, args_override_self = true)]
pub struct Args {
    /// Base URL of the server (a path prefix is kept: `http://host/chat` sends to
    /// `http://host/chat/api/v1/message/`).
    #[arg(long, env = "CHAT_LOADGEN_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// Base URL for the WebSockets, when they should connect to another node of the same
    /// deployment than the one receiving the sends (cross-node notification latency through
    /// Redis). Default: `--url`.
    #[arg(long, env = "CHAT_LOADGEN_WS_URL")]
    pub ws_base_url: Option<String>,

    /// How users authenticate.
    #[arg(long, value_enum, env = "CHAT_LOADGEN_AUTH", default_value_t = AuthMode::Token)]
    pub auth: AuthMode,

    /// Users to create (token mode). In original mode, the number of users read from
    /// `--cookie-file` / `--login-users` (this flag is then ignored).
    #[arg(long, env = "CHAT_LOADGEN_USERS", default_value_t = 10)]
    pub users: usize,

    /// WebSocket connections to open, spread round-robin over the users (connection j
    /// belongs to user j mod users).
    #[arg(long, env = "CHAT_LOADGEN_CONNECTIONS", default_value_t = 20)]
    pub connections: usize,

    /// Concurrent senders; sender k sends as user k mod users, to the other users in turn.
    #[arg(long, env = "CHAT_LOADGEN_SENDERS", default_value_t = 8)]
    pub senders: usize,

    /// How long to send, in seconds (ignored when `--count` is given).
    #[arg(long, env = "CHAT_LOADGEN_DURATION", default_value_t = 10.0)]
    pub duration: f64,

    /// Send exactly this many messages in total instead of sending for `--duration`.
    #[arg(long, env = "CHAT_LOADGEN_COUNT")]
    pub count: Option<u64>,

    /// Offered load in messages per second, over all senders (open loop: sends start on
    /// schedule whether or not earlier ones have answered, and latency is measured from the
    /// scheduled start). Without it every sender sends its next message as soon as the last
    /// one answered (closed loop).
    #[arg(long, env = "CHAT_LOADGEN_RATE")]
    pub rate: Option<f64>,

    /// Sweep mode: run the open-loop measurement once per offered rate (messages per second
    /// over all senders, comma-separated, e.g. `250,500,1000,2000`), each for `--duration`
    /// seconds, over the same users and sockets; report one row per rate (and draw them with
    /// `--plot`). Replaces `--rate`; not with `--count`, `--ceiling` or the idle mode.
    #[arg(long, value_name = "RATES", value_delimiter = ',', num_args = 1..)]
    pub sweep_rates: Vec<f64>,

    /// Sweep mode: pause between two steps (milliseconds), so the server drains what the last
    /// step left.
    #[arg(long, default_value_t = 1_000)]
    pub sweep_pause_ms: u64,

    /// Sweep mode: draw notification latency (p50, p99, max) against offered load into this
    /// PNG file (1000 x 600, log-log).
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,

    /// Sweep mode: what the plot's title says about the server (e.g. `chat-server, SQLite`);
    /// default: the URL.
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,

    /// Open loop only: most sends in flight at once over all senders; beyond it a sender
    /// waits (and its late starts show in the latency, measured from the schedule).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Closed loop, chatcore servers: after every Nth answered send of a sender, its recipient
    /// marks the conversation read up to that message (`POST /api/v1/conversation/<sender>/read`)
    /// and reads the first page of their inbox (`GET /api/v1/conversation/`), before the
    /// sender's next send: read markers, read events and inbox reads under the send load.
    /// Their latencies are reported apart. 0 (the default) turns it off.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub read_every: u64,

    /// Size of each message body in bytes (at least the tag that identifies the send).
    #[arg(long, default_value_t = 32)]
    pub body_size: usize,

    /// After the last send, wait at most this long (milliseconds) for missing notifications.
    #[arg(long, default_value_t = 2_000)]
    pub grace_ms: u64,

    /// Once every expected notification arrived, keep listening this long (milliseconds) to
    /// catch late duplicates.
    #[arg(long, default_value_t = 250)]
    pub linger_ms: u64,

    /// Pause (milliseconds) between opening the sockets and the first send, so the server has
    /// subscribed every connection (the token mode also connects with `?since=0`, which
    /// replays anything sent meanwhile).
    #[arg(long, default_value_t = 200)]
    pub settle_ms: u64,

    /// Also run the same load against the ceiling endpoint first and report the send
    /// throughput as a ratio of it (needs the server's `--bench-endpoints`). Meant for closed
    /// loop: with `--rate` both phases run at the offered rate and the ratio says only
    /// whether the server kept up.
    #[arg(long)]
    pub ceiling: bool,

    /// Path of the ceiling endpoint: answers a `{"recipient","body"}` JSON POST with no work.
    #[arg(long, default_value = "/_bench/echo")]
    pub ceiling_path: String,

    /// Print the report as JSON on standard output instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,

    /// HTTP client of the senders (setup always uses reqwest).
    #[arg(long, value_enum, default_value_t = HttpClient::Hyper)]
    pub http_client: HttpClient,

    /// Worker threads of the client's runtime (the client and server often share 2 cores).
    #[arg(long, env = "CHAT_LOADGEN_CLIENT_THREADS", default_value_t = 2)]
    pub client_threads: usize,

    /// Prefix of the user names created (token mode); default: `lg` + a run-unique suffix.
    #[arg(long)]
    pub user_prefix: Option<String>,

    /// Password of the users created (token mode) or of `--login-users` lines without one.
    #[arg(
        long,
        env = "CHAT_LOADGEN_PASSWORD",
        default_value = "loadgen-password",
        hide_env_values = true
    )]
    pub password: String,

    /// Concurrent requests while creating and logging in users (the server hashes passwords
    /// slowly on purpose).
    #[arg(long, default_value_t = 8)]
    pub setup_concurrency: usize,

    /// Concurrent WebSocket handshakes while opening connections.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,

    /// Timeout of each HTTP request and WebSocket handshake, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,

    /// Idle mode: open this many WebSockets (spread over `--users`), hold them for `--hold`
    /// seconds, send nothing, and report how many stayed open. Used to measure the server's
    /// memory per idle connection.
    #[arg(long, value_name = "N")]
    pub idle_connections: Option<usize>,

    /// Idle mode: how long to hold the connections open, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub hold: f64,

    /// Process id of the server, when it runs on this machine. The report then gives the
    /// server's CPU time per phase (from `/proc/PID/stat`), and the idle mode reads its
    /// resident memory (`/proc/PID/status`) before opening the connections and with them
    /// open, and reports the memory per connection.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Original mode: a file of `username=SESSIONID` lines (session cookies of users that
    /// exist already). Blank lines and lines starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,

    /// Original mode: a file of `username:password` lines (or bare `username`, which uses
    /// `--password`); each user logs in through `--login-url`.
    #[arg(long, value_name = "FILE")]
    pub login_users: Option<PathBuf>,

    /// Original mode: path of the Django login form (GET for the CSRF token, then POST
    /// `username`, `password`, `csrfmiddlewaretoken`).
    #[arg(long, default_value = "/accounts/login/")]
    pub login_url: String,

    /// Original mode: name of the session cookie.
    #[arg(long, default_value = "sessionid")]
    pub session_cookie: String,

    /// Original mode: name of the CSRF cookie (its value goes in `X-CSRFToken`).
    #[arg(long, default_value = "csrftoken")]
    pub csrf_cookie: String,

    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Args {
    /// Checks the options that clap cannot: positive counts, a usable URL, the files the
    /// original mode needs.
    ///
    /// ```
    /// use clap::Parser;
    /// let args = chat_loadgen::Args::parse_from(["chat-loadgen", "--users", "0"]);
    /// assert!(args.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Usage(what.to_owned()));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("--url must start with http:// or https://");
        }
        if self.auth == AuthMode::Token && self.users == 0 {
            return bad("--users must be at least 1");
        }
        if self.senders == 0 && self.idle_connections.is_none() {
            return bad("--senders must be at least 1");
        }
        if self.client_threads == 0 || self.setup_concurrency == 0 || self.connect_concurrency == 0 {
            return bad("--client-threads, --setup-concurrency and --connect-concurrency must be at least 1");
        }
        if !(self.duration.is_finite() && self.duration > 0.0) && self.count.is_none() {
            return bad("--duration must be a positive number of seconds");
        }
        if self.count == Some(0) {
            return bad("--count must be at least 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return bad("--rate must be a positive number of messages per second");
        }
        if !self.sweep_rates.is_empty() {
            if !self.sweep_rates.iter().all(|r| r.is_finite() && *r > 0.0) {
                return bad("--sweep-rates must be positive numbers of messages per second");
            }
            if self.rate.is_some() || self.count.is_some() || self.ceiling || self.idle_connections.is_some()
            {
                return bad(
                    "--sweep-rates cannot be combined with --rate, --count, --ceiling or --idle-connections",
                );
            }
            if !(self.duration.is_finite() && self.duration > 0.0) {
                return bad("--sweep-rates needs a positive --duration per step");
            }
        } else if self.plot.is_some() {
            return bad("--plot needs --sweep-rates");
        }
        if let Some(plot) = &self.plot
            && !plot.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
        {
            return bad("--plot must name a .png file");
        }
        if self.max_in_flight == 0 {
            return bad("--max-in-flight must be at least 1");
        }
        if self.read_every > 0 && (self.rate.is_some() || !self.sweep_rates.is_empty()) {
            return bad("--read-every works in the closed loop only (not with --rate or --sweep-rates)");
        }
        if self.read_every > 0 && self.auth != AuthMode::Token {
            return bad("--read-every needs a chatcore server (--auth token)");
        }
        if !(self.request_timeout.is_finite() && self.request_timeout > 0.0) {
            return bad("--request-timeout must be a positive number of seconds");
        }
        if !(self.hold.is_finite() && self.hold >= 0.0) {
            return bad("--hold must be a number of seconds, 0 or more");
        }
        if !self.ceiling_path.starts_with('/') || !self.login_url.starts_with('/') {
            return bad("--ceiling-path and --login-url must start with /");
        }
        if let Some(prefix) = &self.user_prefix
            && !prefix.chars().all(crate::auth::is_username_char)
        {
            return bad("--user-prefix may hold only letters, digits and @ . + - _");
        }
        if self.auth == AuthMode::Original {
            match (&self.cookie_file, &self.login_users) {
                (Some(_), Some(_)) => return bad("give either --cookie-file or --login-users, not both"),
                (None, None) => return bad("--auth original needs --cookie-file or --login-users"),
                _ => {}
            }
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// The WebSocket URL of `/ws` on the server (`--ws-base-url`, or `--url`).
    pub(crate) fn ws_url(&self) -> String {
        let base = self
            .ws_base_url
            .as_deref()
            .map_or(self.base_url(), |url| url.trim_end_matches('/'));
        let rest = base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
            .unwrap_or_else(|| base.to_owned());
        format!("{rest}/ws")
    }

    /// The per-request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["chat-loadgen"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        Args::command().debug_assert();
        let args = parse(&[]);
        assert_eq!(args.url, "http://127.0.0.1:8000");
        assert_eq!(args.auth, AuthMode::Token);
        assert_eq!((args.users, args.connections, args.senders), (10, 20, 8));
        assert!(args.validate().is_ok());
        let help = Args::command().render_long_help().to_string();
        for flag in [
            "--rate",
            "--ceiling",
            "--idle-connections",
            "--cookie-file",
            "--client-threads",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        assert!(help.contains("[default: 10]"), "defaults shown in --help");
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--url", "127.0.0.1:8000"][..],
            &["--senders", "0"],
            &["--rate", "0"],
            &["--rate=-3"],
            &["--count", "0"],
            &["--duration", "0"],
            &["--auth", "original"],
            &["--user-prefix", "no spaces"],
            &["--ceiling-path", "_bench/echo"],
            &["--client-threads", "0"],
            &["--sweep-rates", "100,0"],
            &["--sweep-rates", "100", "--rate", "5"],
            &["--sweep-rates", "100", "--count", "5"],
            &["--sweep-rates", "100", "--ceiling"],
            &["--sweep-rates", "100", "--plot", "out.svg"],
            &["--plot", "out.png"],
        ] {
            assert!(parse(bad).validate().is_err(), "{bad:?} accepted");
        }
        assert!(Args::try_parse_from(["chat-loadgen", "--users", "many"]).is_err());
        assert!(Args::try_parse_from(["chat-loadgen", "--auth", "basic"]).is_err());
    }

    #[test]
    fn count_replaces_duration_and_original_needs_a_source() {
        assert!(parse(&["--duration", "0", "--count", "5"]).validate().is_ok());
        assert!(
            parse(&["--auth", "original", "--cookie-file", "c.txt"])
                .validate()
                .is_ok()
        );
        let both = parse(&["--auth", "original", "--cookie-file", "c", "--login-users", "u"]);
        assert!(both.validate().is_err());
    }

    #[test]
    fn sweep_rates_are_a_list() {
        let args = parse(&["--sweep-rates", "250,500,1000", "--plot", "a.PNG", "--label", "x"]);
        assert_eq!(args.sweep_rates, vec![250.0, 500.0, 1000.0]);
        assert!(args.validate().is_ok());
        assert!(parse(&[]).sweep_rates.is_empty());
    }

    #[test]
    fn urls() {
        let args = parse(&["--url", "https://example.test/"]);
        assert_eq!(args.base_url(), "https://example.test");
        assert_eq!(args.ws_url(), "wss://example.test/ws");
        let args = parse(&["--url", "http://127.0.0.1:9/chat/"]);
        assert_eq!(args.ws_url(), "ws://127.0.0.1:9/chat/ws");
        let other_node = parse(&["--ws-base-url", "http://127.0.0.1:10/"]);
        assert_eq!(other_node.ws_url(), "ws://127.0.0.1:10/ws");
    }
}
