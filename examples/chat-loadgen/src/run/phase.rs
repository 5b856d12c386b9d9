//! One phase: every sender at once, a progress bar, and their logs merged into one
//! [`PhaseReport`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::closed_loop::closed_loop;
use super::open_loop::open_loop;
use super::procfs::cpu_secs;
use super::send::{Plan, SendContext};
use super::tally::SendRecord;
use crate::Args;
use crate::progress::Progress;
use crate::report::{Latency, PhaseReport, ReadsReport};

/// Runs one phase with all senders; returns its report and the successful sends.
pub(super) async fn run_phase(
    ctx: Arc<SendContext>,
    args: &Args,
    progress: &Progress,
    label: &str,
) -> (PhaseReport, Vec<SendRecord>) {
    let plan = Arc::new(Plan::from_args(args));
    let senders = args.senders;
    let client_cpu_before = cpu_secs(std::process::id());
    let server_cpu_before = args.server_pid.and_then(cpu_secs);
    let cap = args.max_in_flight.div_ceil(senders).max(1);
    let bar = match args.count {
        Some(count) => progress.bar(label, count),
        None => progress.timer(label, args.duration),
    };
    let stop_bar = CancellationToken::new();
    let ticker = tick(&bar, &stop_bar, &ctx, label, args.count.is_some());
    let tasks: Vec<_> = (0..senders)
        .map(|k| {
            let (ctx, plan) = (ctx.clone(), plan.clone());
            let rate = args.rate;
            tokio::spawn(async move {
                match rate {
                    Some(rate) => open_loop(&ctx, &plan, k, senders, rate, cap).await,
                    None => closed_loop(&ctx, &plan, k).await,
                }
            })
        })
        .collect();
    let mut report = PhaseReport {
        path: ctx.url.path().to_owned(),
        offered_rate: args.rate,
        ..Default::default()
    };
    let mut latency = Latency::new();
    let mut start_lag = Latency::new();
    let mut mark_read = Latency::new();
    let mut inbox = Latency::new();
    let mut read_errors = 0;
    let mut records = Vec::new();
    let mut last_done_ns = 0;
    for task in tasks {
        match task.await {
            Ok(log) => {
                latency.merge(&log.latency);
                start_lag.merge(&log.start_lag);
                mark_read.merge(&log.mark_read);
                inbox.merge(&log.inbox);
                read_errors += log.read_errors;
                report.sent += log.latency.count();
                report.send_errors += log.errors;
                report.late_starts += log.late;
                if report.first_error.is_none() {
                    report.first_error = log.first_error;
                }
                last_done_ns = last_done_ns.max(log.last_done_ns);
                records.extend(log.records);
            }
            Err(join_error) => {
                report.send_errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("a sender failed: {join_error}"));
            }
        }
    }
    report.client_cpu_secs = client_cpu_before
        .zip(cpu_secs(std::process::id()))
        .map(|(before, after)| after - before);
    report.server_cpu_secs = server_cpu_before
        .zip(args.server_pid.and_then(cpu_secs))
        .map(|(before, after)| after - before);
    stop_bar.cancel();
    let _ = ticker.await;
    bar.finish_and_clear();
    report.elapsed_secs = Duration::from_nanos(last_done_ns).as_secs_f64();
    report.sends_per_sec = if report.elapsed_secs > 0.0 {
        report.sent as f64 / report.elapsed_secs
    } else {
        0.0
    };
    report.send_latency = latency.summary();
    report.start_lag = args.rate.map(|_| start_lag.summary());
    report.reads = (ctx.read_every > 0).then(|| ReadsReport {
        marks: mark_read.count(),
        inbox_reads: inbox.count(),
        errors: read_errors,
        mark_read_latency: mark_read.summary(),
        inbox_latency: inbox.summary(),
    });
    (report, records)
}

/// Moves `bar` five times a second until `stop`: sends so far (`counting`), or time elapsed.
fn tick(
    bar: &ProgressBar,
    stop: &CancellationToken,
    ctx: &SendContext,
    label: &str,
    counting: bool,
) -> JoinHandle<()> {
    let label = label.to_owned();
    let (bar, stop, live, epoch) = (bar.clone(), stop.clone(), ctx.live.clone(), ctx.epoch);
    let sent_before = live.sent.load(Ordering::Relaxed);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let sent = live.sent.load(Ordering::Relaxed) - sent_before;
            if counting {
                bar.set_position(sent);
            } else {
                bar.set_position(epoch.elapsed().as_millis() as u64);
                bar.set_message(format!("{label}: {sent} sent"));
            }
        }
    })
}
