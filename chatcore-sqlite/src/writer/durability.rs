//! Answering a batch only once it is durable. With a pipelined sync the writer commits
//! without waiting for the disk and hands each batch here; the sync thread `fdatasync`s the
//! WAL once for every batch committed since its last sync, then answers them all. The
//! backlog keeps the writer from running far ahead of the disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use chatcore::metrics::StoreMetrics;
use chatcore::{Error, Result};

use super::{Outcome, WriteOp, Writer};
use crate::config::{Location, SqliteConfig, Synchronous};

impl Writer {
    /// Without a sync thread: let SQLite sync at each commit after all.
    pub(super) fn sync_in_line(&mut self) {
        self.wal_to_sync = None;
        if let Err(e) = self
            .ctx
            .conn
            .pragma_update(None, "synchronous", Synchronous::Full.pragma_value())
        {
            tracing::warn!(error = %e, "could not set synchronous=FULL");
        }
    }

    /// Answers committed writes once they are durable: at once when SQLite synced in the
    /// commit, else through the sync thread.
    pub(super) fn answer_when_durable(&mut self, committed: Vec<Committed>) {
        if committed.is_empty() {
            return;
        }
        match &self.sync_queue {
            Some(queue) => {
                self.unsynced.add(1);
                if let Err(unsent) = queue.send(committed) {
                    self.unsynced.remove(1);
                    // The sync thread is gone (it only ends after the queue closes): sync here.
                    let committed = unsent.0;
                    let synced = self.sync_now();
                    answer_all(committed, synced.as_ref().err());
                }
            }
            None => answer_all(committed, None),
        }
    }

    /// Makes everything committed so far durable (a no-op when SQLite syncs at commit).
    pub(super) fn sync_now(&self) -> Result<()> {
        match &self.wal_to_sync {
            Some(wal) => sync_wal(wal, &mut None, &self.metrics),
            None => Ok(()),
        }
    }
}

/// A committed write and its answer, held until the commit is durable.
pub(super) type Committed = (WriteOp, Outcome);

/// How many committed batches may wait for the sync thread before the writer waits too, so
/// commits and syncs overlap without the writer running far ahead in many small commits
/// (two halved the send rate: the writer waited with work queued).
pub(super) const MAX_UNSYNCED_BATCHES: usize = 4;

/// A count of batches committed but not yet synced, which the writer can wait on.
#[derive(Default)]
pub(super) struct Backlog {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, usize> {
        // A plain counter: a panic elsewhere cannot leave it half-updated.
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn add(&self, n: usize) {
        *self.lock() += n;
    }

    pub(super) fn remove(&self, n: usize) {
        let mut count = self.lock();
        *count = count.saturating_sub(n);
        self.changed.notify_all();
    }

    /// Blocks while `limit` or more batches are waiting.
    pub(super) fn wait_below(&self, limit: usize) {
        let mut count = self.lock();
        while *count >= limit {
            count = self.changed.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The WAL to sync from a separate thread: with [`Synchronous::Full`] on a file and
/// [`SqliteConfig::pipelined_sync`] on.
pub(super) fn wal_path_to_sync(config: &SqliteConfig) -> Option<PathBuf> {
    match &config.location {
        Location::File(path) if config.synchronous == Synchronous::Full && config.pipelined_sync => {
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            Some(PathBuf::from(wal))
        }
        _ => None,
    }
}

/// The sync thread: takes every batch committed since its last sync, syncs the WAL once
/// (`fdatasync`), then answers them all. Ends when the writer closes the queue.
pub(super) fn sync_and_answer(
    wal: &Path,
    queue: &Receiver<Vec<Committed>>,
    unsynced: &Backlog,
    metrics: &StoreMetrics,
) {
    let mut file = None;
    while let Ok(first) = queue.recv() {
        let mut batches = vec![first];
        batches.extend(queue.try_iter());
        let synced = sync_wal(wal, &mut file, metrics);
        unsynced.remove(batches.len());
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the SQLite WAL failed; the writes it covers are reported as failed");
            // After a failed fsync the kernel may have dropped the dirty pages: reopen.
            file = None;
        }
        for committed in batches {
            answer_all(committed, synced.as_ref().err());
        }
    }
}

/// `fdatasync` of the WAL, opening it on first use, timed. Syncing any descriptor of the
/// file flushes the writes SQLite made through its own.
fn sync_wal(wal: &Path, file: &mut Option<File>, metrics: &StoreMetrics) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::storage_unavailable(std::io::Error::new(
            e.kind(),
            format!("syncing {}: {e}", wal.display()),
        ))
    };
    let wal_file = match file {
        Some(f) => f,
        None => file.insert(File::open(wal).map_err(failed)?),
    };
    let started = Instant::now();
    let synced = wal_file.sync_data().map_err(failed);
    metrics.synced(started.elapsed());
    synced
}

/// Answers committed writes, or fails them all with a copy of `sync_error`.
fn answer_all(committed: Vec<Committed>, sync_error: Option<&Error>) {
    for (op, outcome) in committed {
        match sync_error {
            None => op.answer(outcome),
            Some(e) => op.fail(Error::storage_unavailable(format!(
                "the write committed but could not be made durable: {e}"
            ))),
        }
    }
}
