//! Sweep mode (`--sweep-rates`): the open-loop measurement once per offered rate, over the
//! same users and the same sockets.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::listen::read_frames;
use super::phase::run_phase;
use super::procfs::load_average;
use super::setup::Setup;
use super::tally::{ConnectionLog, tally};
use crate::cli::Args;
use crate::progress::Progress;
use crate::report::{SweepReport, SweepStep, utc_timestamp};
use crate::{Error, Result};

/// Sweep mode (`--sweep-rates`): the open-loop measurement once per offered rate, each for
/// `--duration` seconds, over the same users and the same sockets. Each step's frames are
/// matched to that step's sends only (every expected frame is in, or the grace period is
/// over, before the next step starts).
///
/// The caller's runtime is used; `main` builds one with `--client-threads` workers.
pub async fn run_sweep(args: &Args, progress: Progress) -> Result<SweepReport> {
    args.validate()?;
    if args.sweep_rates.is_empty() {
        return Err(Error::Usage("run_sweep needs --sweep-rates".into()));
    }
    // The HTTP client's pool is sized for the open loop.
    let mut base = args.clone();
    base.rate = args.sweep_rates.first().copied();
    let setup = Setup::new(&base, &progress).await?;
    let sockets = setup.open_all(&base, &progress).await?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let mut drains = Vec::with_capacity(sockets.len());
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| {
            let (ask, requests) = mpsc::unbounded_channel();
            drains.push((user, ask));
            tokio::spawn(read_frames(
                ws,
                user,
                epoch,
                stop.clone(),
                setup.live.clone(),
                Some(requests),
            ))
        })
        .collect();
    let mut steps = Vec::with_capacity(args.sweep_rates.len());
    for (n, &rate) in args.sweep_rates.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(args.sweep_pause_ms)).await;
        }
        let mut step_args = base.clone();
        step_args.rate = Some(rate);
        let ctx = setup.context(&step_args, "/api/v1/message/", true, setup.conns_per_user.clone())?;
        // Sends are timed from the step's epoch, frames from the sweep's.
        let shift = u64::try_from(ctx.epoch.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let label = format!("{rate:.0} msgs/s");
        let (send, mut records) = run_phase(ctx, &step_args, &progress, &label).await;
        setup.grace(&step_args).await;
        for record in &mut records {
            record.start_ns = record.start_ns.saturating_add(shift);
        }
        let mut logs = Vec::with_capacity(drains.len());
        for (user, ask) in &drains {
            let (reply, answer) = oneshot::channel();
            let log = match ask.send(reply) {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            // A reader that is gone has dropped its connection (counted in an earlier step).
            logs.push(log.unwrap_or(ConnectionLog {
                user: *user,
                ..Default::default()
            }));
        }
        let notifications = tally(&records, &mut logs, &setup.conns_per_user);
        let step = SweepStep {
            send,
            notifications,
            load_average: load_average(),
        };
        progress.note(&step.summary_line());
        steps.push(step);
    }
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    Ok(SweepReport {
        url: args.base_url().to_owned(),
        label: args.label.clone(),
        date: utc_timestamp(chrono::Utc::now()),
        users: setup.sessions.len(),
        connections: args.connections,
        senders: args.senders,
        step_secs: args.duration,
        client_threads: None,
        steps,
    })
}
