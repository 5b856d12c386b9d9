//! Latency histograms and the report: as JSON and as a table for a human.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, from 1 µs to one hour, 3 significant digits.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    const MAX_MICROS: u64 = 3_600_000_000;

    /// An empty histogram.
    pub(crate) fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        Self(Histogram::new_with_bounds(1, Self::MAX_MICROS, 3).expect("valid histogram bounds"))
    }

    /// Records one latency; values beyond an hour count as an hour.
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, Self::MAX_MICROS));
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        self.0.add(&other.0).expect("histograms with the same bounds");
    }

    /// How many values were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.0.len()
    }

    /// Percentiles in milliseconds.
    pub(crate) fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1_000.0,
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// Percentiles of a latency distribution, in milliseconds (all 0 when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

/// One sending phase: against the message endpoint, or against the ceiling endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseReport {
    /// The path POSTed to.
    pub path: String,
    /// Sends answered with success.
    pub sent: u64,
    /// Sends that failed (error status, timeout, connection error, answer without an id).
    pub send_errors: u64,
    /// The first failure, for a human.
    pub first_error: Option<String>,
    /// Seconds from the first send to the last answer.
    pub elapsed_secs: f64,
    /// Successful sends per second.
    pub sends_per_sec: f64,
    /// Offered load (open loop), messages per second; `None` for closed loop.
    pub offered_rate: Option<f64>,
    /// Open loop: sends held back past their scheduled time because `--max-in-flight` sends
    /// were outstanding. Their send and notification latencies count from the scheduled
    /// start, so a server that falls behind shows it (no coordinated omission).
    pub late_starts: u64,
    /// Open loop: how late each send started against its schedule (the client's timer and
    /// scheduling jitter, plus any hold-back). A p99 of a few ms means the client kept up.
    pub start_lag: Option<LatencySummary>,
    /// Send latency: POST start (the scheduled start for held-back sends) to the full answer.
    pub send_latency: LatencySummary,
    /// With `--read-every`: the recipients' read markers and inbox reads during the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<ReadsReport>,
    /// CPU time (user + system) the load generator used during the phase, seconds (Linux).
    pub client_cpu_secs: Option<f64>,
    /// CPU time the server used during the phase, seconds (with `--server-pid`).
    pub server_cpu_secs: Option<f64>,
}

/// The read-state work of a phase run with `--read-every`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReadsReport {
    /// Read markers moved (`POST /api/v1/conversation/<peer>/read` answered with success).
    pub marks: u64,
    /// First inbox pages read (`GET /api/v1/conversation/` answered with success).
    pub inbox_reads: u64,
    /// Marks and inbox reads that failed.
    pub errors: u64,
    /// Latency of the read marker POSTs.
    pub mark_read_latency: LatencySummary,
    /// Latency of the inbox GETs.
    pub inbox_latency: LatencySummary,
}

impl PhaseReport {
    /// Microseconds of client CPU per successful send: if it approaches the server's, the
    /// client, not the server, limits the throughput on a shared machine.
    pub(crate) fn client_cpu_us_per_send(&self) -> Option<f64> {
        per_send(self.client_cpu_secs, self.sent)
    }

    /// Microseconds of server CPU per successful send (with `--server-pid`).
    pub(crate) fn server_cpu_us_per_send(&self) -> Option<f64> {
        per_send(self.server_cpu_secs, self.sent)
    }
}

fn per_send(cpu_secs: Option<f64>, sent: u64) -> Option<f64> {
    cpu_secs.filter(|_| sent > 0).map(|secs| secs * 1e6 / sent as f64)
}

/// The notifications observed during the message phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NotificationReport {
    /// Frames that should have arrived: for each stored message, one per open connection of
    /// the sender and one per open connection of the recipient (once if they are the same).
    pub expected: u64,
    /// Expected frames that arrived (first arrival per connection and message).
    pub received: u64,
    /// Expected frames that never arrived within the grace period. Must be 0.
    pub lost: u64,
    /// Extra copies of a frame on the same connection. Must be 0.
    pub duplicated: u64,
    /// Frames about messages this connection's user neither sent nor received in this run
    /// (e.g. a send that timed out on the client but was stored). Should be 0.
    pub unexpected: u64,
    /// `{"resync": true}` frames.
    pub resyncs: u64,
    /// Frames that were not notifications.
    pub other_frames: u64,
    /// Connections that closed or failed before the end.
    pub connections_dropped: u64,
    /// Notification latency: POST start to the frame at a recipient's connection.
    pub latency: LatencySummary,
}

/// Everything a load run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The server's base URL.
    pub url: String,
    /// `token` or `original`.
    pub auth: String,
    /// Users.
    pub users: usize,
    /// WebSocket connections open during the message phase.
    pub connections: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Client runtime worker threads (`None` when the caller's runtime was used).
    pub client_threads: Option<usize>,
    /// The message phase.
    pub send: PhaseReport,
    /// What the connections received.
    pub notifications: NotificationReport,
    /// The ceiling phase, with `--ceiling`.
    pub ceiling: Option<PhaseReport>,
    /// Message sends per second divided by ceiling sends per second, with `--ceiling`.
    pub ratio_to_ceiling: Option<f64>,
}

impl Report {
    /// `true` when no notification was lost or duplicated and no send failed.
    pub fn is_clean(&self) -> bool {
        self.notifications.lost == 0
            && self.notifications.duplicated == 0
            && self.send.send_errors == 0
            && self.send.reads.as_ref().is_none_or(|r| r.errors == 0)
    }

    /// The report as a table for a human.
    ///
    /// ```
    /// let table = chat_loadgen::Report::default().to_table();
    /// assert!(table.contains("sends/s"));
    /// ```
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "target {} ({} auth): {} users, {} connections, {} senders{}",
            self.url,
            self.auth,
            self.users,
            self.connections,
            self.senders,
            self.client_threads
                .map(|t| format!(", {t} client threads"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "phase", "sent", "errors", "sends/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "secs"
        );
        let mut phase_row = |name: &str, p: &PhaseReport| {
            let l = &p.send_latency;
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>7} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.2}",
                name,
                p.sent,
                p.send_errors,
                p.sends_per_sec,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                p.elapsed_secs
            );
        };
        if let Some(ceiling) = &self.ceiling {
            phase_row("ceiling", ceiling);
        }
        phase_row("send", &self.send);
        if let Some(reads) = &self.send.reads {
            let (m, i) = (&reads.mark_read_latency, &reads.inbox_latency);
            let _ = writeln!(
                out,
                "read markers: {} (p50 {:.3} ms, p99 {:.3} ms); inbox pages: {} (p50 {:.3} ms, p99 {:.3} ms); {} errors",
                reads.marks, m.p50_ms, m.p99_ms, reads.inbox_reads, i.p50_ms, i.p99_ms, reads.errors
            );
        }
        for (name, phase) in [("ceiling", self.ceiling.as_ref()), ("send", Some(&self.send))] {
            let Some(phase) = phase else { continue };
            let fmt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
            if phase.client_cpu_secs.is_some() || phase.server_cpu_secs.is_some() {
                let _ = writeln!(
                    out,
                    "{name} CPU per send: client {} us, server {} us",
                    fmt(phase.client_cpu_us_per_send()),
                    fmt(phase.server_cpu_us_per_send())
                );
            }
        }
        if let Some(rate) = self.send.offered_rate {
            let lag = self.send.start_lag.unwrap_or_default();
            let _ = writeln!(
                out,
                "offered load {rate:.1} msgs/s (open loop): {} sends held back by --max-in-flight, start lag p50 {:.3} ms p99 {:.3} ms",
                self.send.late_starts, lag.p50_ms, lag.p99_ms
            );
        }
        if let Some(ratio) = self.ratio_to_ceiling {
            let _ = writeln!(out, "send throughput / ceiling throughput: {ratio:.3}");
        }
        let n = &self.notifications;
        let _ = writeln!(
            out,
            "notifications: {} expected, {} received, {} lost, {} duplicated, {} unexpected, {} resyncs, {} connections dropped",
            n.expected, n.received, n.lost, n.duplicated, n.unexpected, n.resyncs, n.connections_dropped
        );
        let l = &n.latency;
        let _ = writeln!(
            out,
            "notification latency (POST start -> recipient frame): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} frames)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        );
        for (name, phase) in [("send", Some(&self.send)), ("ceiling", self.ceiling.as_ref())] {
            if let Some(error) = phase.and_then(|p| p.first_error.as_deref()) {
                let _ = writeln!(out, "first {name} error: {error}");
            }
        }
        let verdict = if self.notifications.lost == 0 && self.notifications.duplicated == 0 {
            "OK: no notification lost or duplicated"
        } else {
            "FAIL: notifications lost or duplicated"
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

/// One step of a sweep: the open-loop message phase at one offered rate, and what the
/// connections received during it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepStep {
    /// The message phase (`send.offered_rate` is the step's rate).
    pub send: PhaseReport,
    /// The notifications of this step's messages.
    pub notifications: NotificationReport,
    /// The machine's 1-minute load average at the end of the step (Linux `/proc/loadavg`):
    /// on a shared machine, how much else competed for the cores.
    pub load_average: Option<f64>,
}

impl SweepStep {
    /// Offered load of the step, messages per second.
    pub(crate) fn offered_rate(&self) -> f64 {
        self.send.offered_rate.unwrap_or(0.0)
    }

    /// `true` when no notification was lost or duplicated and no send failed.
    pub(crate) fn is_clean(&self) -> bool {
        self.notifications.lost == 0 && self.notifications.duplicated == 0 && self.send.send_errors == 0
    }

    /// One line for the progress output.
    pub(crate) fn summary_line(&self) -> String {
        let l = &self.notifications.latency;
        format!(
            "{:.0} msgs/s offered: {:.1} sends/s, notification p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} lost, {} duplicated",
            self.offered_rate(),
            self.send.sends_per_sec,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            self.notifications.lost,
            self.notifications.duplicated
        )
    }
}

/// A sweep (`--sweep-rates`): one [`SweepStep`] per offered rate, over the same users and
/// sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    /// The server's base URL.
    pub url: String,
    /// `--label`: what the server is (for the plot's title).
    pub label: Option<String>,
    /// When the sweep ended, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// Users.
    pub users: usize,
    /// WebSocket connections open during the sweep.
    pub connections: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Seconds of sending per step (`--duration`).
    pub step_secs: f64,
    /// Client runtime worker threads (`None` when the caller's runtime was used).
    pub client_threads: Option<usize>,
    /// The steps, in the order run.
    pub steps: Vec<SweepStep>,
}

impl SweepReport {
    /// `true` when no step lost or duplicated a notification or failed a send.
    pub fn is_clean(&self) -> bool {
        self.steps.iter().all(SweepStep::is_clean)
    }

    /// The label, or the URL without one.
    pub(crate) fn title_target(&self) -> String {
        match &self.label {
            Some(label) => format!("{label} ({})", self.url),
            None => self.url.clone(),
        }
    }

    /// The sweep as a table, one row per offered rate.
    ///
    /// ```
    /// let table = chat_loadgen::SweepReport::default().to_table();
    /// assert!(table.contains("offered/s"));
    /// ```
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sweep against {}, {}: {} users, {} connections, {} senders, {} s per step{}",
            self.title_target(),
            self.date,
            self.users,
            self.connections,
            self.senders,
            self.step_secs,
            self.client_threads
                .map(|t| format!(", {t} client threads"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6} {:>7} {:>6}",
            "offered/s",
            "sent/s",
            "errors",
            "notif p50",
            "notif p99",
            "notif max",
            "send p50",
            "send p99",
            "lost",
            "dup",
            "late",
            "load"
        );
        for step in &self.steps {
            let (n, s) = (&step.notifications, &step.send);
            let _ = writeln!(
                out,
                "{:>10.0} {:>10.1} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>6} {:>6} {:>7} {:>6}",
                step.offered_rate(),
                s.sends_per_sec,
                s.send_errors,
                n.latency.p50_ms,
                n.latency.p99_ms,
                n.latency.max_ms,
                s.send_latency.p50_ms,
                s.send_latency.p99_ms,
                n.lost,
                n.duplicated,
                s.late_starts,
                step.load_average
                    .map_or_else(|| "n/a".to_owned(), |l| format!("{l:.2}"))
            );
        }
        let _ = writeln!(
            out,
            "latencies in ms; notification latency is POST start -> recipient frame; late = sends held back by --max-in-flight; load = 1-minute load average after the step"
        );
        for step in &self.steps {
            if let Some(error) = &step.send.first_error {
                let _ = writeln!(out, "first error at {:.0} msgs/s: {error}", step.offered_rate());
            }
        }
        let verdict = if self
            .steps
            .iter()
            .all(|s| s.notifications.lost == 0 && s.notifications.duplicated == 0)
        {
            "OK: no notification lost or duplicated"
        } else {
            "FAIL: notifications lost or duplicated"
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

/// `YYYY-MM-DD HH:MM UTC` for a point in time.
pub(crate) fn utc_timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// What the idle-connections mode observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IdleReport {
    /// The server's base URL.
    pub url: String,
    /// Users the connections were spread over.
    pub users: usize,
    /// Connections asked for.
    pub requested: usize,
    /// Connections that opened.
    pub opened: usize,
    /// Connections that failed to open.
    pub failed: usize,
    /// The first failure, for a human.
    pub first_error: Option<String>,
    /// Seconds it took to open them all.
    pub open_secs: f64,
    /// Seconds they were held.
    pub held_secs: f64,
    /// Connections that closed during the hold.
    pub dropped: usize,
    /// With `--server-pid`: the server's resident memory with the users created and no
    /// connection open, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// With `--server-pid`: the server's resident memory with the connections open, KiB.
    pub server_rss_open_kib: Option<u64>,
    /// With `--server-pid`: (open - before) / opened, KiB per idle connection.
    pub server_kib_per_connection: Option<f64>,
}

impl IdleReport {
    /// The report as text for a human.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "target {}: {} of {} idle connections opened over {} users in {:.2} s ({} failed), held {:.1} s, {} dropped during the hold\n",
            self.url,
            self.opened,
            self.requested,
            self.users,
            self.open_secs,
            self.failed,
            self.held_secs,
            self.dropped
        );
        if let (Some(before), Some(open)) = (self.server_rss_before_kib, self.server_rss_open_kib) {
            let _ = writeln!(
                out,
                "server RSS: {before} KiB before, {open} KiB with the connections open: {:.2} KiB per idle connection",
                self.server_kib_per_connection.unwrap_or(0.0)
            );
        }
        if let Some(error) = &self.first_error {
            let _ = writeln!(out, "first error: {error}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for ms in 1..=90 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 91..=100 {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p90_ms - 90.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.mean_ms - 50.5).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn empty_and_extreme_values() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
        let mut h = Latency::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(100_000));
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 3_600_000.0 * 0.999, "{s:?}");
    }

    #[test]
    fn utc_timestamps() {
        let at = |secs| utc_timestamp(chrono::DateTime::from_timestamp(secs, 0).unwrap());
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(at(1_709_251_199), "2024-02-29 23:59 UTC");
        assert_eq!(at(4_102_444_800), "2100-01-01 00:00 UTC");
        assert_eq!(at(1_795_876_200), "2026-11-28 14:30 UTC");
    }

    #[test]
    fn sweep_table_has_a_row_per_step() {
        let step = |rate: f64, p99: f64, lost: u64| {
            let mut step = SweepStep::default();
            step.send.offered_rate = Some(rate);
            step.send.sends_per_sec = rate * 0.99;
            step.notifications.latency.p99_ms = p99;
            step.notifications.lost = lost;
            step
        };
        let mut sweep = SweepReport {
            url: "http://127.0.0.1:1".into(),
            label: Some("sqlite".into()),
            steps: vec![step(250.0, 1.5, 0), step(8000.0, 42.25, 0)],
            ..Default::default()
        };
        let table = sweep.to_table();
        assert!(table.contains("sqlite (http://127.0.0.1:1)"), "{table}");
        assert!(table.contains("42.250") && table.contains("7920.0"), "{table}");
        assert!(table.contains("OK"), "{table}");
        assert!(sweep.is_clean());
        assert!(
            SweepStep::default()
                .summary_line()
                .contains("0 lost, 0 duplicated")
        );
        sweep.steps[1].notifications.lost = 2;
        assert!(!sweep.is_clean());
        assert!(sweep.to_table().contains("FAIL"));
        let json = serde_json::to_value(&sweep).unwrap();
        assert_eq!(json["steps"][1]["send"]["offered_rate"], 8000.0);
        assert_eq!(json["steps"][1]["notifications"]["lost"], 2);
    }

    #[test]
    fn table_and_json_carry_the_figures() {
        let mut report = Report {
            url: "http://127.0.0.1:1".into(),
            auth: "token".into(),
            users: 5,
            connections: 10,
            senders: 2,
            ..Default::default()
        };
        report.send.sent = 200;
        report.send.sends_per_sec = 1234.5;
        report.notifications.lost = 3;
        report.ceiling = Some(PhaseReport {
            sent: 400,
            sends_per_sec: 2469.0,
            ..Default::default()
        });
        report.ratio_to_ceiling = Some(0.5);
        let table = report.to_table();
        assert!(table.contains("1234.5"), "{table}");
        assert!(table.contains("ceiling"), "{table}");
        assert!(table.contains("0.500"), "{table}");
        assert!(table.contains("3 lost"), "{table}");
        assert!(table.contains("FAIL"), "{table}");
        assert!(!report.is_clean());
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["send"]["sent"], 200);
        assert_eq!(json["notifications"]["lost"], 3);
        assert_eq!(json["ratio_to_ceiling"], 0.5);
        assert_eq!(json["ceiling"]["sent"], 400);
    }
}
