//! Progress bars on standard error, or nothing (`--quiet`, tests).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Makes progress bars, or hidden ones when disabled.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// Visible bars when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    /// A bar counting to `len`.
    pub(crate) fn bar(&self, what: &str, len: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}")
        {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A bar over `secs` seconds whose message the caller keeps up to date.
    pub(crate) fn timer(&self, what: &str, secs: f64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new((secs * 1_000.0) as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>30} [{elapsed_precise}] {wide_bar} {percent:>3}%")
        {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar
    }

    /// Prints a line above any bar (or plainly), on standard error, unless disabled.
    pub fn note(&self, line: &str) {
        if self.enabled {
            eprintln!("{line}");
        }
    }
}
