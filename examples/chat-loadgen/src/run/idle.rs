//! Idle mode (`--idle-connections N --hold SECS`): N sockets held open, to measure the
//! server's memory per connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Live;
use super::listen::{open_sockets, read_frames};
use super::procfs::rss_kib;
use super::setup::http_client;
use crate::Result;
use crate::auth::sessions;
use crate::cli::Args;
use crate::progress::Progress;
use crate::report::IdleReport;

/// Idle mode: opens `--idle-connections` sockets over the users, holds them for `--hold`
/// seconds, and reports how many opened and stayed open. With `--server-pid` it also reads the
/// server's RSS before and with the sockets open.
pub async fn run_idle(args: &Args, progress: Progress) -> Result<IdleReport> {
    args.validate()?;
    let requested = args.idle_connections.unwrap_or(0);
    let http = http_client(args)?;
    let sessions = sessions(args, &http, &progress).await?;
    let settle = Duration::from_millis(args.settle_ms.max(1_000));
    let mut report = IdleReport {
        url: args.base_url().to_owned(),
        users: sessions.len(),
        requested,
        ..Default::default()
    };
    if let Some(pid) = args.server_pid {
        tokio::time::sleep(settle).await;
        report.server_rss_before_kib = rss_kib(pid);
    }
    progress.note(&format!(
        "{} users ready, no connection open (server RSS now: the baseline); opening {requested} connections",
        sessions.len()
    ));
    let started = Instant::now();
    let (sockets, errors) = open_sockets(args, &sessions, requested, &progress).await;
    report.open_secs = started.elapsed().as_secs_f64();
    report.opened = sockets.len();
    report.failed = errors.len();
    report.first_error = errors.into_iter().next();
    let live = Arc::new(Live::default());
    let stop = CancellationToken::new();
    let epoch = Instant::now();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| tokio::spawn(read_frames(ws, user, epoch, stop.clone(), live.clone(), None)))
        .collect();
    progress.note(&format!(
        "all {} connections open ({} failed); holding them {:.0} s: read the server's RSS now",
        report.opened, report.failed, args.hold
    ));
    let hold = Duration::from_secs_f64(args.hold);
    let holding = async {
        if let Some(pid) = args.server_pid {
            tokio::time::sleep(settle.min(hold)).await;
            report.server_rss_open_kib = rss_kib(pid);
            tokio::time::sleep(hold.saturating_sub(settle)).await;
        } else {
            tokio::time::sleep(hold).await;
        }
    };
    // Ctrl-C ends a long hold early and still closes the sockets and reports.
    tokio::select! {
        () = holding => {}
        _ = tokio::signal::ctrl_c() => progress.note("interrupted: closing the connections"),
    }
    report.held_secs = epoch.elapsed().as_secs_f64();
    report.dropped = live.dropped.load(Ordering::Relaxed) as usize;
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    if let (Some(before), Some(open)) = (report.server_rss_before_kib, report.server_rss_open_kib)
        && report.opened > 0
    {
        report.server_kib_per_connection = Some((open as f64 - before as f64) / report.opened as f64);
    }
    Ok(report)
}
