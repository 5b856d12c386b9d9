//! # chat-loadgen
//!
//! A load generator for a chatcore server (and for any server that speaks the original
//! Django app's API). It creates users, opens WebSockets to `/ws`, sends messages from
//! concurrent senders, and reports:
//! - sends per second and send latency (p50, p90, p99, max);
//! - notification latency, from the start of the POST to the frame at the recipient's socket
//!   (p50, p99, max);
//! - notifications lost and duplicated: every connection of the sender and of the recipient
//!   must get each message exactly once (both must be 0);
//! - with `--ceiling`, the same load against the server's trivial `POST /_bench/echo`, and the
//!   ratio of the two throughputs;
//! - with `--idle-connections N --hold SECS`, N idle sockets held open to measure the server's
//!   memory per connection.
//!
//! Run the server with its send rate limit off (`chat-server --send-rate-per-sec 0`, and its
//! per-address login and registration limits off with `--logins-per-minute 0
//! --registrations-per-hour 0`, plus `--bench-endpoints` for `--ceiling`); otherwise sends beyond the limit answer 429 and are
//! counted as errors.
//!
//! ```text
//! chat-loadgen --url http://127.0.0.1:8000 --users 50 --connections 100 --senders 32 --duration 10
//! chat-loadgen --senders 8 --rate 2000 --duration 20 --json-out rate-2000.json
//! chat-loadgen --ceiling --count 100000
//! chat-loadgen --senders 16 --sweep-rates 250,500,1000,2000 --duration 5 --plot latency.png
//! chat-loadgen --users 100 --idle-connections 10000 --hold 30 --server-pid "$(pidof chat-server)"
//! chat-loadgen --auth original --cookie-file cookies.txt --url http://127.0.0.1:8001
//! ```
//!
//! # Options
//!
//! `chat-loadgen --help` prints every option with its environment variable and default; the
//! crate's `README.md` gives the measurement procedures. In short ([`Args`] has the details):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `--url` (`CHAT_LOADGEN_URL`) | `http://127.0.0.1:8000` | the server |
//! | `--auth token\|original` | `token` | fresh users with Bearer tokens, or session cookies of existing users |
//! | `--users`, `--connections`, `--senders` | 10, 20, 8 | users created, WebSockets (round-robin over users), concurrent senders |
//! | `--duration` / `--count` | 10 s / none | how long, or how many messages |
//! | `--rate`, `--max-in-flight` | none (closed loop), 1024 | open-loop offered load in msgs/s over all senders |
//! | `--sweep-rates R1,R2,..`, `--plot FILE.png`, `--label` | none | sweep mode: one open-loop step per rate, a table, a latency-vs-load PNG |
//! | `--grace-ms`, `--linger-ms`, `--settle-ms` | 2000, 250, 200 | wait for stragglers, for late duplicates, for subscriptions |
//! | `--ceiling`, `--ceiling-path` | off, `/_bench/echo` | run the same load against the trivial endpoint first; report the ratio |
//! | `--idle-connections N`, `--hold SECS` | none, 60 | idle mode: hold N sockets for the memory measurement |
//! | `--server-pid` | none | read the server's CPU per phase and RSS (idle mode) from `/proc` |
//! | `--cookie-file`, `--login-users`, `--login-url` | none, none, `/accounts/login/` | original mode's credentials |
//! | `--client-threads` | 2 | worker threads of the client's runtime |
//! | `--http-client hyper\|reqwest` | `hyper` | the senders' HTTP client (reqwest for comparison) |
//! | `--json`, `--json-out FILE`, `--quiet` | off | JSON on stdout, JSON to a file, no progress bars |
//!
//! The exit status is 0 for a clean run, 2 when a send failed or a notification was lost or
//! duplicated (idle mode: a socket failed or dropped), 1 when the run could not happen, 64 for
//! bad options.
//!
//! # As a library
//!
//! The binary is a thin shell over [`run_load`], [`run_sweep`] (with [`plot::draw`]) and
//! [`run_idle`], which tests call directly:
//!
//! ```no_run
//! # async fn demo() -> chat_loadgen::Result<()> {
//! use clap::Parser;
//! let args = chat_loadgen::Args::parse_from(["chat-loadgen", "--url", "http://127.0.0.1:8000", "--count", "200"]);
//! let report = chat_loadgen::run_load(&args, chat_loadgen::Progress::new(false)).await?;
//! assert_eq!(report.notifications.lost, 0);
//! println!("{}", report.to_table());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `cli.rs`: [`Args`], the command line and its checks.
//! - `auth.rs`: users and credentials: register + login for Bearer tokens, or session cookies
//!   (cookie file or Django login form) for the original app.
//! - `frame.rs`: reading `/ws` frames and send answers (`{"message": "<id>"}` with or without
//!   `data`).
//! - `run/`: the runs themselves, one file per job: the three modes (`load.rs`, `sweep.rs`,
//!   `idle.rs`), the ceiling phase, the shared setup and grace period, one phase of senders,
//!   one send, the closed and the open loop, the WebSocket listeners, and `tally.rs`, which
//!   matches frames to sends after the run (`run/mod.rs` lists them).
//! - `report.rs`: hdrhistogram latencies, [`Report`], [`SweepReport`] and [`IdleReport`] as
//!   JSON and tables.
//! - `plot.rs`: the sweep's PNG (notification latency against offered load) with `plotters`.
//! - `transport.rs`: the senders' own HTTP/1.1 keep-alive connections over hyper (reqwest cost
//!   more CPU per request than the server's ceiling endpoint; it remains for setup and https).
//! - `progress.rs`: progress bars on standard error.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
mod cli;
mod error;
pub mod frame;
pub mod plot;
mod progress;
mod report;
mod run;
mod transport;

pub use cli::{Args, AuthMode, HttpClient};
pub use error::{Error, Result};
pub use progress::Progress;
pub use report::{
    IdleReport, LatencySummary, NotificationReport, PhaseReport, Report, SweepReport, SweepStep,
};
pub use run::procfs::{cpu_secs, load_average};
pub use run::{run_idle, run_load, run_sweep};
