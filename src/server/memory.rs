//! Gives freed memory back to the system after connections close. Abuse (tens of thousands
//! of streams opened and abandoned) leaves its memory freed but kept in glibc's per-thread
//! malloc arenas, which only ever return the free space at their top: measured, the RSS
//! stayed 15 MB over its baseline with two arenas holding it (docs/PERFORMANCE.md).
//! `malloc_trim(0)` releases every arena's free pages; it runs only after connections have
//! closed, at most once per [`PERIOD`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// How often the trimmer looks whether connections closed since it last ran.
const PERIOD: Duration = Duration::from_secs(5);

static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Most glibc malloc arenas. glibc makes up to 8 per core, one per thread that meets a locked
/// one; a daemon with ~12 threads on 2 cores under `SignStream` load then spreads a batch's
/// bundles (allocated by the sequencer, encoded and freed by the async workers) over a dozen
/// arenas, each keeping its freed peak. Measured, docs/PERFORMANCE.md "Throughput and batch
/// mode": see the RSS rows.
const MAX_ARENAS: i32 = 2;

/// Caps the malloc arenas ([`MAX_ARENAS`]); call before any thread starts. The environment's
/// `MALLOC_ARENA_MAX`, if set, wins.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        set_arena_max(MAX_ARENAS);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: i32) {
    // SAFETY: mallopt only changes a malloc tunable; called before other threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) {}

/// Counts a closed connection (the next period trims).
pub fn connection_closed() {
    CLOSED.fetch_add(1, Ordering::Relaxed);
}

/// Starts the trimmer; it ends with the runtime.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut seen = CLOSED.load(Ordering::Relaxed);
        let mut ticks = tokio::time::interval(PERIOD);
        loop {
            ticks.tick().await;
            let closed = CLOSED.load(Ordering::Relaxed);
            if closed != seen {
                seen = closed;
                // Walking the arenas takes milliseconds: off the async workers.
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        released = released != 0,
        "freed memory returned to the system"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
