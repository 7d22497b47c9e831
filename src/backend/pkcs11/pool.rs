//! The token's sessions: a bounded pool whose sessions keep the one login alive, and
//! recovery from token faults.
//!
//! A fault (the token stops answering, is removed, or its storage vanishes) closes every
//! session and starts an [`Outage`]: requests fail fast with UNAVAILABLE while one of them
//! at a time, with back-off, tries to bring the token back — first by opening and logging
//! in a fresh session, then, if the module itself is stuck (SoftHSM never re-reads a token
//! whose directory disappeared), by re-initialising the library: C_Finalize and
//! C_Initialize on the same loaded module, only once no session of it is left. There is
//! never a second `Pkcs11` context in the process (SoftHSM can crash on two): the pools of
//! two tokens of one module (the actors' token and a `[log_token]`) share the context, and
//! [`LIBRARY`] keeps every call of either out of a re-initialisation.
//!
//! Calls that create, change or destroy token objects run alone on their token
//! ([`Objects::Write`]); calls that only read them (signing among them) run side by side.
//! SoftHSM's file object store is not safe for a write beside other calls of the same process
//! (softhsm/SoftHSMv2#573): a key generation next to a log head rewrite fails with
//! CKR_GENERAL_ERROR, which reads as a token fault and fails every caller for the outage's
//! first back-off. Writes are rare (a key made, rotated or destroyed; one head rewrite per
//! checkpoint), so the gate costs signing little on any token.

use std::{
    collections::HashMap,
    sync::{
        Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    object::ObjectHandle,
    session::{Session, UserType},
    slot::Slot,
    types::AuthPin,
};

use super::{TokenFacts, TokenSelector, classify, find_token};
use crate::backend::{BackendError, outage::Outage};

/// How long a request waits for a free session before the token counts as unavailable.
const SESSION_WAIT: Duration = Duration::from_secs(10);
/// How long a re-initialisation waits for sessions still in use to be returned.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Held (shared) by every call into a PKCS#11 library of this process, taken exclusively by a
/// re-initialisation: the pools sharing a context cannot finalise it under each other's calls.
/// One gate for the process: modules are few and re-initialisations rare.
static LIBRARY: RwLock<()> = RwLock::new(());

fn library() -> RwLockReadGuard<'static, ()> {
    LIBRARY.read().unwrap_or_else(|p| p.into_inner())
}

/// Counts re-initialisations of the process's PKCS#11 libraries. C_Finalize ends every
/// session and object handle of the library, also those of the other pools sharing the
/// context: a session (or handle) from an earlier epoch is stale, and its number may name
/// another pool's new session by now, so it is forgotten, never used or closed.
static LIBRARY_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The library epoch now ([`LIBRARY_EPOCH`]).
pub(super) fn library_epoch() -> u64 {
    LIBRARY_EPOCH.load(Ordering::SeqCst)
}

/// What a call does to the token's objects, which decides what may run beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Objects {
    /// Reads them (signs, finds, reads attributes): any number of calls at once.
    Read,
    /// Creates, changes or destroys one: no other call of this process on the token meanwhile.
    Write,
}

/// A session with the private-key handles it has already looked up.
pub(super) struct PooledSession {
    pub session: Session,
    pub handles: HashMap<String, ObjectHandle>,
    slot: Slot,
    /// Sessions opened before the latest fault are closed when returned.
    generation: u64,
    /// The library epoch it was opened in.
    library: u64,
}

struct State {
    slot: Slot,
    generation: u64,
    idle: Vec<PooledSession>,
    /// Sessions open now: idle ones and those in use.
    open: usize,
    /// Health probes calling into the library without a session now.
    probes: usize,
    outage: Option<Outage>,
}

/// The sessions of one token.
pub(super) struct SessionPool {
    ctx: Pkcs11,
    selector: TokenSelector,
    token: TokenFacts,
    pin: AuthPin,
    capacity: usize,
    state: Mutex<State>,
    freed: Condvar,
    /// Shared by [`Objects::Read`] calls, taken exclusively by [`Objects::Write`] ones.
    objects: RwLock<()>,
}

/// Held while a call runs: [`SessionPool::enter`].
enum ObjectsGate<'a> {
    Read(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Write(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

/// How a recovery brought the token back.
#[derive(Debug, Clone, Copy)]
enum Recovered {
    Reopened,
    Reinitialised,
}

fn is_login(e: &BackendError) -> bool {
    matches!(e, BackendError::Login(_))
}

impl SessionPool {
    pub fn new(
        ctx: Pkcs11,
        slot: Slot,
        selector: TokenSelector,
        token: TokenFacts,
        pin: AuthPin,
        capacity: usize,
    ) -> Self {
        SessionPool {
            ctx,
            selector,
            token,
            pin,
            capacity: capacity.max(1),
            state: Mutex::new(State {
                slot,
                generation: 0,
                idle: Vec::new(),
                open: 0,
                probes: 0,
                outage: None,
            }),
            freed: Condvar::new(),
            objects: RwLock::new(()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a single step on plain data: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on a pooled session, beside other calls as `objects` allows. A token fault
    /// closes every session and starts an outage; a key that cannot be found is checked
    /// against the token, so that a vanished token reads as a fault rather than as a missing
    /// key.
    pub fn run<T>(
        &self,
        operation: &'static str,
        objects: Objects,
        op: impl FnOnce(&mut PooledSession) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut session = self.acquire()?;
        let mut calling = library();
        // Another pool of the context re-initialised it since this session was opened.
        while session.library != library_epoch() {
            drop(calling);
            self.forget(session);
            session = self.acquire()?;
            calling = library();
        }
        let gate = self.enter(objects);
        let mut result = op(&mut session);
        drop(gate);
        if matches!(result, Err(BackendError::KeyNotFound(_)))
            && let Err(fault) = self.probe(&session)
        {
            result = Err(fault);
        }
        drop(calling);
        let fault = result.as_ref().err().filter(|e| e.is_fault());
        if let Some(e) = fault {
            tracing::warn!(operation, error = %e, "PKCS#11 token fault");
        }
        self.release(session, fault);
        result
    }

    /// Waits until a call doing `objects` may run beside the calls running now. Taken after
    /// the session, so that no call holds the gate while it waits for a session.
    fn enter(&self, objects: Objects) -> ObjectsGate<'_> {
        // The guarded value is (): a panic under the lock leaves nothing half-changed.
        match objects {
            Objects::Read => {
                ObjectsGate::Read(self.objects.read().unwrap_or_else(|p| p.into_inner()))
            }
            Objects::Write => {
                ObjectsGate::Write(self.objects.write().unwrap_or_else(|p| p.into_inner()))
            }
        }
    }

    /// Checks that the token itself answers (SoftHSM answers C_GetTokenInfo with
    /// CKR_GENERAL_ERROR once its storage is gone, while sessions still look fine).
    pub fn probe(&self, session: &PooledSession) -> Result<(), BackendError> {
        self.ctx
            .get_token_info(session.slot)
            .map(|_| ())
            .map_err(|e| classify("C_GetTokenInfo", e))
    }

    /// Whether the token answers, asked without taking a session, so that a pool busy with
    /// signing never reads as a dead token. During an outage: the recovery attempt, if due.
    pub fn health(&self) -> Result<(), BackendError> {
        let slot = {
            let mut state = self.lock();
            if state.outage.is_some() {
                drop(state);
                return self.run("health", Objects::Read, |_| Ok(()));
            }
            // Counted, so that the library is not re-initialised under this call.
            state.probes += 1;
            state.slot
        };
        let calling = library();
        let result = self
            .ctx
            .get_token_info(slot)
            .map(|_| ())
            .map_err(|e| classify("C_GetTokenInfo", e));
        drop(calling);
        let mut state = self.lock();
        state.probes -= 1;
        let closing = match &result {
            Err(e) if e.is_fault() => {
                tracing::warn!(operation = "health", error = %e, "PKCS#11 token fault");
                self.start_outage(&mut state, e)
            }
            _ => Vec::new(),
        };
        drop(state);
        // Also wakes a re-initialisation waiting for this probe to end.
        self.close(closing);
        result
    }

    /// Opens a session, logs in (once per token: later logins answer UserAlreadyLoggedIn)
    /// and checks that the token answers.
    fn open_session(&self, slot: Slot, generation: u64) -> Result<PooledSession, BackendError> {
        let _calling = library();
        let library = library_epoch();
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| classify("C_OpenSession", e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                return Err(match classify("C_Login", e) {
                    BackendError::Login(detail) => BackendError::Login(format!(
                        "token {:?} refused the PIN ({detail}); not retried automatically, as \
                         each try counts against the token's retry limit: fix the PIN and \
                         restart the daemon",
                        self.token.label
                    )),
                    other => other,
                });
            }
        }
        let pooled = PooledSession {
            session,
            handles: HashMap::new(),
            slot,
            generation,
            library,
        };
        self.probe(&pooled)?;
        Ok(pooled)
    }

    /// Opens a session counted against the capacity. The slot is reserved by the caller.
    fn open_reserved(&self) -> Result<PooledSession, BackendError> {
        let (slot, generation) = {
            let state = self.lock();
            (state.slot, state.generation)
        };
        self.open_session(slot, generation).inspect_err(|_| {
            self.lock().open -= 1;
            self.freed.notify_all();
        })
    }

    fn acquire(&self) -> Result<PooledSession, BackendError> {
        let mut state = self.lock();
        loop {
            if let Some(outage) = state.outage.as_mut() {
                outage.claim()?;
                drop(state);
                return self.recover();
            }
            if let Some(session) = state.idle.pop() {
                return Ok(session);
            }
            if state.open < self.capacity {
                state.open += 1;
                drop(state);
                return self.open_reserved().inspect_err(|e| {
                    if e.is_fault() {
                        let closing = self.start_outage(&mut self.lock(), e);
                        self.close(closing);
                    }
                });
            }
            let (guard, timeout) = self
                .freed
                .wait_timeout(state, SESSION_WAIT)
                .unwrap_or_else(|p| p.into_inner());
            state = guard;
            if timeout.timed_out() && state.idle.is_empty() && state.open >= self.capacity {
                return Err(BackendError::Unavailable(
                    "all token sessions are busy; the token is not answering".into(),
                ));
            }
        }
    }

    /// Starts an outage unless one is in progress; returns the idle sessions to close.
    fn start_outage(&self, state: &mut State, fault: &BackendError) -> Vec<PooledSession> {
        if state.outage.is_some() {
            return Vec::new();
        }
        tracing::warn!(
            token.label = %self.token.label,
            error = %fault,
            "PKCS#11 token down: closing its sessions; recovering with back-off"
        );
        state.outage = Some(if is_login(fault) {
            // Each automatic retry would spend one of the token's PIN tries.
            Outage::permanent(fault.to_string())
        } else {
            Outage::new(fault.to_string())
        });
        state.generation += 1;
        let idle = std::mem::take(&mut state.idle);
        state.open -= idle.len();
        idle
    }

    fn close(&self, sessions: Vec<PooledSession>) {
        let calling = library();
        for session in sessions {
            if session.library != library_epoch() {
                // Ended by C_Finalize; its number may be another pool's session now.
                std::mem::forget(session.session);
                continue;
            }
            // Closing may fail on a dead token; the session is gone either way.
            let _ = session.session.close();
        }
        drop(calling);
        self.freed.notify_all();
    }

    /// Drops a stale session from the count without calling into the library for it.
    fn forget(&self, session: PooledSession) {
        tracing::info!(token.label = %self.token.label,
            "PKCS#11 library re-initialised by another token's pool: a fresh session replaces an ended one");
        std::mem::forget(session.session);
        self.lock().open -= 1;
        self.freed.notify_all();
    }

    fn release(&self, session: PooledSession, fault: Option<&BackendError>) {
        let mut state = self.lock();
        let mut closing = match fault {
            Some(e) => self.start_outage(&mut state, e),
            None => Vec::new(),
        };
        if fault.is_some() || state.outage.is_some() || session.generation != state.generation {
            state.open -= 1;
            closing.push(session);
        } else {
            state.idle.push(session);
        }
        drop(state);
        self.close(closing);
    }

    /// One recovery attempt (the caller holds the outage's claim): a fresh session, else a
    /// re-initialised library. Success ends the outage and hands the caller the session.
    fn recover(&self) -> Result<PooledSession, BackendError> {
        let result = self
            .reserve()
            .and_then(|()| self.open_reserved())
            .map(|s| (s, Recovered::Reopened))
            .or_else(|e| {
                if is_login(&e) {
                    // Re-initialising would not change the PIN, and each try spends one.
                    return Err(e);
                }
                tracing::debug!(error = %e, "a fresh token session failed; re-initialising the PKCS#11 library");
                self.reinitialise().map(|s| (s, Recovered::Reinitialised))
            });
        let mut state = self.lock();
        match result {
            Ok((session, how)) => {
                if let Some(outage) = state.outage.take() {
                    tracing::info!(
                        token.label = %self.token.label,
                        down_ms = outage.duration().as_millis() as u64,
                        attempts = outage.attempts(),
                        recovered_by = ?how,
                        "PKCS#11 token back"
                    );
                }
                Ok(session)
            }
            Err(e) => {
                if is_login(&e) {
                    state.outage = Some(Outage::permanent(e.to_string()));
                } else if let Some(outage) = state.outage.as_mut() {
                    tracing::debug!(error = %e, previous = outage.reason(), "PKCS#11 recovery attempt failed");
                    outage.failed(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Reserves room for one session, if there is any.
    fn reserve(&self) -> Result<(), BackendError> {
        let mut state = self.lock();
        if state.open >= self.capacity {
            return Err(BackendError::Unavailable(
                "all token sessions are still in use".into(),
            ));
        }
        state.open += 1;
        Ok(())
    }

    /// C_Finalize and C_Initialize on the loaded module, once every session is closed (a
    /// call in flight must not lose its library), then the token found again — and it
    /// must be the same token, by serial.
    fn reinitialise(&self) -> Result<PooledSession, BackendError> {
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut state = self.lock();
        while state.open > 0 || state.probes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BackendError::Unavailable(format!(
                    "{} token sessions are still in use; the PKCS#11 library is re-initialised once they end",
                    state.open
                )));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // The state lock stays held: nothing else of this pool calls into the library
        // meanwhile; the exclusive gate keeps out the other pools of the context.
        let exclusive = loop {
            match LIBRARY.try_write() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(BackendError::Unavailable(
                        "another token of the PKCS#11 library is in use; it is re-initialised once its calls end".into(),
                    ));
                }
            }
        };
        // Finalizing a library that is not initialised (a failed attempt before) is harmless.
        let _ = self.ctx.clone().finalize();
        self.ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "re-initialising the PKCS#11 library failed: C_Initialize: {e}"
                ))
            })?;
        LIBRARY_EPOCH.fetch_add(1, Ordering::SeqCst);
        let found = find_token(&self.ctx, &self.selector);
        drop(exclusive);
        let (slot, facts) = found?;
        if facts.serial != self.token.serial {
            return Err(BackendError::Unavailable(format!(
                "the {} now has serial {:?}, not {:?}: it is not the token this daemon opened",
                self.selector, facts.serial, self.token.serial
            )));
        }
        state.slot = slot;
        state.open += 1;
        drop(state);
        self.open_reserved()
    }
}
