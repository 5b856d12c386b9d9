//! The load test: users, the optional ceiling phase, sockets, the message phase, the grace
//! period and the accounting.

use tokio_util::sync::CancellationToken;

use super::ceiling::run_ceiling;
use super::listen::read_frames;
use super::phase::run_phase;
use super::setup::Setup;
use super::tally::tally;
use crate::Result;
use crate::cli::Args;
use crate::progress::Progress;
use crate::report::Report;

/// Runs the whole load test against the server named in `args`: users, optional ceiling
/// phase, sockets, message phase, grace period, accounting.
///
/// The caller's runtime is used; `main` builds one with `--client-threads` workers.
pub async fn run_load(args: &Args, progress: Progress) -> Result<Report> {
    args.validate()?;
    let setup = Setup::new(args, &progress).await?;
    let users = setup.sessions.len();

    let ceiling = if args.ceiling {
        Some(run_ceiling(&setup, args, &progress).await?)
    } else {
        None
    };

    let sockets = setup.open_all(args, &progress).await?;
    let ctx = setup.context(args, "/api/v1/message/", true, setup.conns_per_user.clone())?;
    let stop = CancellationToken::new();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| {
            tokio::spawn(read_frames(
                ws,
                user,
                ctx.epoch,
                stop.clone(),
                setup.live.clone(),
                None,
            ))
        })
        .collect();
    let (send, records) = run_phase(ctx, args, &progress, "sending").await;
    setup.grace(args).await;
    stop.cancel();
    let mut logs = Vec::with_capacity(readers.len());
    for reader in readers {
        if let Ok(log) = reader.await {
            logs.push(log);
        }
    }
    let notifications = tally(&records, &mut logs, &setup.conns_per_user);
    let ratio_to_ceiling = ceiling
        .as_ref()
        .filter(|c| c.sends_per_sec > 0.0)
        .map(|c| send.sends_per_sec / c.sends_per_sec);
    Ok(Report {
        url: args.base_url().to_owned(),
        auth: format!("{:?}", args.auth).to_lowercase(),
        users,
        connections: args.connections,
        senders: args.senders,
        client_threads: None,
        send,
        notifications,
        ceiling,
        ratio_to_ceiling,
    })
}
