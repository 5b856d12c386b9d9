//! The ceiling phase (`--ceiling`): the same load against the server's trivial endpoint
//! (`--ceiling-path`), before any socket is open, to show what the server and this client can
//! do at all.

use super::phase::run_phase;
use super::setup::Setup;
use crate::Result;
use crate::cli::Args;
use crate::progress::Progress;
use crate::report::PhaseReport;

/// Runs the ceiling phase over `setup`'s users.
pub(super) async fn run_ceiling(setup: &Setup, args: &Args, progress: &Progress) -> Result<PhaseReport> {
    // No sockets: the endpoint answers without an id and notifies nobody.
    let ctx = setup.context(args, &args.ceiling_path, false, vec![0; setup.sessions.len()])?;
    let (report, _) = run_phase(ctx, args, progress, "ceiling").await;
    progress.note(&format!(
        "ceiling: {:.1} sends/s ({} errors)",
        report.sends_per_sec, report.send_errors
    ));
    Ok(report)
}
