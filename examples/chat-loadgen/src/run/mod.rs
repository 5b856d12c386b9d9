//! The runs: a load test ([`run_load`]), a sweep of offered rates ([`run_sweep`]) and idle
//! sockets held open ([`run_idle`]).
//!
//! Nothing is shared on the hot path: each sender keeps its own list of `(id, start)` and its
//! own histogram, each connection keeps its own list of `(id, arrival)`; only a few relaxed
//! counters ([`Live`], for the progress bar and the end of the grace period) are shared. Frames
//! are matched to sends by id after the run, so a frame that arrives before its POST has
//! answered needs no special care.
//!
//! # Layout
//! - `load.rs`, `sweep.rs`, `idle.rs`: the three modes, start to finish.
//! - `ceiling.rs`: the ceiling phase (the same load against the server's trivial endpoint).
//! - `setup.rs`: users, their headers and the HTTP client shared by every phase; the grace
//!   period after the last send.
//! - `phase.rs`: one phase with all senders, merged into a [`PhaseReport`](crate::PhaseReport).
//! - `send.rs`: one send, the send budget, and what a sender records.
//! - `closed_loop.rs`, `open_loop.rs`: the two ways a sender paces its sends.
//! - `listen.rs`: opening the WebSockets and reading their frames.
//! - `tally.rs`: notification accounting, matching frames to sends after the run.
//! - `procfs.rs`: CPU time, memory and load average from `/proc`.

mod ceiling;
mod closed_loop;
mod idle;
mod listen;
mod load;
mod open_loop;
mod phase;
pub(crate) mod procfs;
mod send;
mod setup;
mod sweep;
mod tally;

use std::sync::atomic::AtomicU64;

pub use idle::run_idle;
pub use load::run_load;
pub use sweep::run_sweep;

/// Counters shared by all tasks, for progress and for knowing when every frame is in.
#[derive(Debug, Default)]
struct Live {
    /// Sends answered with success.
    sent: AtomicU64,
    /// Frames the successful sends call for, over all connections.
    expected_frames: AtomicU64,
    /// Notification frames received, over all connections.
    frames: AtomicU64,
    /// Connections that closed or failed before they were told to stop.
    dropped: AtomicU64,
}
