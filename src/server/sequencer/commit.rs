//! The commit stage: a thread of its own that writes a sealed batch in one transaction,
//! rewrites the hardware's log head record, and only then answers the batch's callers. The
//! sequencer meanwhile orders and signs the next batch; it hands over the next batch only
//! once this one's outcome is known, so a failed commit never has a successor on disk.

use std::{collections::HashMap, sync::Arc, sync::mpsc, thread};

use super::{PendingReceipt, Reply, SequencerError, SignedReceipt, receipt_answer};
use crate::{
    backend::Backend,
    ledger::{
        Batch, Store,
        head::LogHead,
        merkle::{self, Hash},
    },
};

/// A batch sealed by the sequencer: rows to write and callers to answer once written.
#[derive(Default)]
pub(super) struct CommitBatch {
    pub batch: Batch,
    /// The tree after this batch: its size and root, for the log head record.
    pub tree: (u64, Hash),
    pub receipts: Vec<PendingReceipt>,
    /// Retries of a request made earlier in the same batch: (request id, reply).
    pub followers: Vec<(String, Reply<SignedReceipt>)>,
    pub key_replies: Vec<Reply<()>>,
}

impl CommitBatch {
    /// Answers every caller: each its receipt, or all the same error.
    pub fn answer(self, outcome: Result<(), &str>) {
        if let Err(message) = outcome {
            self.fail(|| SequencerError::NotStored(message.to_owned()));
            return;
        }
        self.succeed();
    }

    /// Answers every caller UNAVAILABLE: queued in a fleet, not yet integrated (a retry
    /// with the same request id gets the receipt once it is).
    pub fn answer_pending(self, message: &str) {
        self.fail(|| SequencerError::Pending(message.to_owned()));
    }

    fn fail(self, error: impl Fn() -> SequencerError) {
        for pending in self.receipts {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err(error()));
            }
        }
        for (_, reply) in self.followers {
            let _ = reply.send(Err(error()));
        }
        for reply in self.key_replies {
            let _ = reply.send(Err(error()));
        }
    }

    fn succeed(self) {
        for pending in &self.receipts {
            tracing::info!(actor = %pending.row.actor, sequence = pending.row.sequence,
                log_index = pending.row.log_index, key_id = %pending.row.key_id, "receipt signed");
        }
        let by_request: HashMap<&str, SignedReceipt> = self
            .receipts
            .iter()
            .filter_map(|p| Some((p.request_id.as_deref()?, receipt_answer(p))))
            .collect();
        for (id, reply) in self.followers {
            let answer = by_request
                .get(id.as_str())
                .cloned()
                .ok_or_else(|| SequencerError::NotStored("retry lost its original".into()));
            let _ = reply.send(answer);
        }
        for mut pending in self.receipts {
            if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Ok(pending.into_answer()));
            }
        }
        for reply in self.key_replies {
            let _ = reply.send(Ok(()));
        }
    }
}

enum Job {
    Commit(Box<CommitBatch>),
    /// A fleet retry that waits for its entry to be integrated.
    Follow(super::fleet::Follow),
    /// Bring the log head record up to the store (after a failed rewrite), then answer.
    SyncHead(mpsc::Sender<Result<(), SequencerError>>),
}

/// The sequencer's side of the commit thread.
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
    results: mpsc::Receiver<Result<(), String>>,
    in_flight: usize,
    thread: Option<thread::JoinHandle<()>>,
}

/// The commit thread's state: the write connection and the hardware's log head.
struct Writer {
    store: Store,
    backend: Arc<dyn Backend>,
    /// The log head record the hardware holds (`None`: the backend keeps none). Rewritten
    /// after every commit, before anyone is answered.
    head: Option<LogHead>,
    /// A commit went through but the record could not be rewritten: it is behind the store.
    head_behind: bool,
    /// In a fleet: batches are queued for the integrator instead (`fleet.rs`).
    fleet: Option<super::fleet::Sink>,
}

impl Committer {
    pub fn start(
        store: Store,
        backend: Arc<dyn Backend>,
        head: Option<LogHead>,
        fleet: Option<super::fleet::Sink>,
    ) -> Result<Self, SequencerError> {
        let (jobs, inbox) = mpsc::channel();
        let (outcomes, results) = mpsc::channel();
        let writer = Writer {
            store,
            backend,
            head,
            head_behind: false,
            fleet,
        };
        let thread = thread::Builder::new()
            .name("actseal-commit".into())
            .spawn(move || writer.run(inbox, outcomes))
            .map_err(|e| SequencerError::NotStored(format!("cannot start commit thread: {e}")))?;
        Ok(Committer {
            jobs,
            results,
            in_flight: 0,
            thread: Some(thread),
        })
    }

    /// Hands a sealed batch over; its callers are answered once it is durable.
    pub fn send(&mut self, batch: CommitBatch) {
        match self.jobs.send(Job::Commit(Box::new(batch))) {
            Ok(()) => self.in_flight += 1,
            Err(mpsc::SendError(Job::Commit(batch))) => {
                batch.answer(Err("the commit stage stopped"))
            }
            Err(_) => {}
        }
    }

    /// Waits for every batch handed over; the first failure's message, if any.
    pub fn wait(&mut self) -> Result<(), String> {
        let mut outcome = Ok(());
        while self.in_flight > 0 {
            self.in_flight -= 1;
            let result = self
                .results
                .recv()
                .unwrap_or_else(|_| Err("the commit stage stopped".into()));
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }

    /// Whether every batch handed over has had its outcome taken (by `wait` or `poll`).
    pub fn idle(&self) -> bool {
        self.in_flight == 0
    }

    /// The outcome of batches already finished, without waiting for the one in flight.
    pub fn poll(&mut self) -> Result<(), String> {
        let mut outcome = Ok(());
        while self.in_flight > 0 {
            match self.results.try_recv() {
                Ok(result) => {
                    self.in_flight -= 1;
                    if outcome.is_ok() {
                        outcome = result;
                    }
                }
                Err(_) => break,
            }
        }
        outcome
    }

    /// Hands a fleet retry to the waiter, which answers it once its entry is integrated.
    pub fn follow(&self, follow: super::fleet::Follow) {
        let _ = self.jobs.send(Job::Follow(follow));
    }

    /// Brings the hardware's log head record up to the store, if a rewrite failed earlier.
    pub fn sync_head(&mut self) -> Result<(), SequencerError> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Job::SyncHead(reply))
            .map_err(|_| SequencerError::Stopped)?;
        answer.recv().map_err(|_| SequencerError::Stopped)?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.wait();
        let (jobs, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, jobs));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    fn run(mut self, inbox: mpsc::Receiver<Job>, outcomes: mpsc::Sender<Result<(), String>>) {
        for job in inbox {
            match (job, self.fleet.as_mut()) {
                (Job::Commit(batch), Some(sink)) => {
                    let _ = outcomes.send(sink.queue(*batch));
                }
                (Job::Follow(follow), Some(sink)) => sink.follow(follow),
                // The head is the integrator's in a fleet.
                (Job::SyncHead(reply), Some(_)) => {
                    let _ = reply.send(Ok(()));
                }
                (Job::Follow(_), None) => {}
                (Job::Commit(batch), None) => {
                    let result = self.commit(&batch).map_err(|e| e.to_string());
                    if let Err(message) = &result {
                        tracing::error!(error = %message, "batch failed; nothing in it was acknowledged");
                    }
                    batch.answer(result.as_ref().map(|_| ()).map_err(String::as_str));
                    let _ = outcomes.send(result);
                }
                (Job::SyncHead(reply), None) => {
                    let _ = reply.send(self.sync_head());
                }
            }
        }
    }

    /// DB commit, then the record, then the answers (a crash between leaves the store ahead
    /// of the record, which the next start accepts and records).
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), SequencerError> {
        if let Err(e) = self.store.commit(&batch.batch) {
            // A commit whose answer was lost may have been stored: the next head is counted
            // from the store, not from this batch.
            self.head_behind = self.head.is_some();
            return Err(e.into());
        }
        self.record_head(batch.tree, batch.batch.requests.len())
    }

    fn record_head(
        &mut self,
        (size, root): (u64, Hash),
        requests: usize,
    ) -> Result<(), SequencerError> {
        let Some(head) = self.head else {
            return Ok(());
        };
        let requests = if self.head_behind {
            self.store.request_count_below(size)?
        } else {
            head.requests + requests as u64
        };
        let next = LogHead {
            size,
            root,
            requests,
            ..head
        };
        if let Err(e) = self.backend.write_log_head(&next.encode()) {
            self.head_behind = true;
            tracing::error!(error = %e, size, "cannot record the log head in the hardware; nothing of this batch is acknowledged");
            return Err(e.into());
        }
        self.head = Some(next);
        self.head_behind = false;
        Ok(())
    }

    /// Brings the record up to the store after a failed rewrite, before a stored answer
    /// goes out.
    fn sync_head(&mut self) -> Result<(), SequencerError> {
        if !self.head_behind {
            return Ok(());
        }
        let Some(head) = self.head else {
            return Ok(());
        };
        let size = self.store.next_log_index()?;
        let next = LogHead {
            size,
            root: merkle::root_at(&self.store, size)?,
            requests: self.store.request_count_below(size)?,
            ..head
        };
        self.backend.write_log_head(&next.encode())?;
        self.head = Some(next);
        self.head_behind = false;
        Ok(())
    }
}
