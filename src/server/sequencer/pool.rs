//! Hardware signatures off the sequencer thread: a few signing threads share the backend
//! (the PKCS#11 session pool signs on several sessions at once; the TPM serialises), and each
//! re-checks the signature it got with `ring` before handing it back. A call that does not
//! answer within the hardware timeout is answered UNAVAILABLE; the thread stuck in it is
//! replaced, so one hung key does not take the others' threads.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use p256::ecdsa::Signature;
use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendError, HardwareKey, check_message_signature};

/// One message to sign: the hardware signs its SHA-256.
pub(super) struct SignJob {
    pub key: HardwareKey,
    pub message: Vec<u8>,
    /// The backend that holds `key`, if not the pool's (the actors'): the log key's
    /// ([`super::LogIdentity::backend`]).
    pub backend: Option<Arc<dyn Backend>>,
}

impl SignJob {
    /// A message for an actor key, on the pool's backend.
    pub fn actor(key: HardwareKey, message: Vec<u8>) -> Self {
        SignJob {
            key,
            message,
            backend: None,
        }
    }

    /// A message for the log key, on the backend that holds it.
    pub fn log(log: &super::LogIdentity, message: Vec<u8>) -> Self {
        SignJob {
            key: log.key.clone(),
            message,
            backend: Some(Arc::clone(&log.backend)),
        }
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// Signing threads over one backend.
pub(super) struct SignPool {
    backend: Arc<dyn Backend>,
    tasks: mpsc::Sender<Task>,
    queue: Arc<Mutex<mpsc::Receiver<Task>>>,
    timeout: Duration,
    /// Threads alive now; grows by one for each call that timed out, up to `max_threads`.
    threads: Arc<AtomicUsize>,
    max_threads: usize,
}

/// Signs and checks one message: the unchecked hardware call, the `ring` check, and on a
/// failed check the backend's own checked call (which also recovers its connection).
fn sign_checked(backend: &dyn Backend, job: &SignJob) -> Result<Signature, BackendError> {
    let digest: [u8; 32] = Sha256::digest(&job.message).into();
    let signature = backend.sign_digest_unchecked(&job.key, &digest)?;
    if check_message_signature(&job.key.public_key, &job.message, &signature).is_ok() {
        return Ok(signature);
    }
    tracing::warn!(key = %job.key.key_ref, "hardware signature did not verify; signing again");
    let signature = backend.sign_digest(&job.key, &digest)?;
    check_message_signature(&job.key.public_key, &job.message, &signature)?;
    Ok(signature)
}

fn worker(queue: Arc<Mutex<mpsc::Receiver<Task>>>, threads: Arc<AtomicUsize>) {
    loop {
        let task = {
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        match task {
            Ok(task) => task(),
            Err(_) => break,
        }
    }
    threads.fetch_sub(1, Ordering::SeqCst);
}

impl SignPool {
    /// `threads` signing threads; calls time out after `timeout`.
    pub fn new(backend: Arc<dyn Backend>, threads: usize, timeout: Duration) -> Self {
        let (tasks, queue) = mpsc::channel();
        let pool = SignPool {
            backend,
            tasks,
            queue: Arc::new(Mutex::new(queue)),
            timeout,
            threads: Arc::new(AtomicUsize::new(0)),
            max_threads: threads.max(1) * 4,
        };
        for _ in 0..threads.max(1) {
            pool.spawn_thread();
        }
        pool
    }

    fn spawn_thread(&self) {
        if self.threads.load(Ordering::SeqCst) >= self.max_threads {
            return;
        }
        let (queue, threads) = (Arc::clone(&self.queue), Arc::clone(&self.threads));
        threads.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("actseal-signer".into())
            .spawn(move || worker(queue, threads));
        if let Err(e) = spawned {
            self.threads.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot start a signing thread");
        }
    }

    /// Signs every job in parallel and checks each signature; results in the jobs' order.
    pub fn sign_all(&self, jobs: Vec<SignJob>) -> Vec<Result<Signature, BackendError>> {
        let count = jobs.len();
        let (done, results) = mpsc::channel();
        for (at, job) in jobs.into_iter().enumerate() {
            let backend = job
                .backend
                .clone()
                .unwrap_or_else(|| Arc::clone(&self.backend));
            let done = done.clone();
            let task: Task = Box::new(move || {
                let _ = done.send((at, sign_checked(backend.as_ref(), &job)));
            });
            if self.tasks.send(task).is_err() {
                break;
            }
        }
        drop(done);
        let mut answers: Vec<Option<Result<Signature, BackendError>>> =
            (0..count).map(|_| None).collect();
        let deadline = Instant::now() + self.timeout;
        let mut pending = count;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match results.recv_timeout(left) {
                Ok((at, result)) => {
                    answers[at] = Some(result);
                    pending -= 1;
                }
                Err(_) => break,
            }
        }
        if pending > 0 {
            tracing::error!(
                pending,
                timeout_ms = self.timeout.as_millis() as u64,
                "the hardware did not answer in time; those requests are refused"
            );
            // The threads stuck in the hardware are lost until it answers: replace them.
            for _ in 0..pending {
                self.spawn_thread();
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(BackendError::Unavailable(format!(
                        "the hardware did not answer within {} ms",
                        self.timeout.as_millis()
                    )))
                })
            })
            .collect()
    }

    /// Signs one message (a checkpoint, a key event) with the same timeout and check.
    pub fn sign(&self, job: SignJob) -> Result<Signature, BackendError> {
        self.sign_all(vec![job])
            .pop()
            .unwrap_or_else(|| Err(BackendError::Unavailable("no signing thread".into())))
    }
}
