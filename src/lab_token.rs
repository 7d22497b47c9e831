//! SoftHSM's file locks as a lab fleet meets them. SoftHSM's file store locks a token's
//! files (POSIX record locks, `fcntl`) for the span of each call, and a lab fleet's nodes
//! share one token directory, so one process's call on the shared log token makes every
//! other process's calls on it wait. Tests use this twice: to pause a node only between its
//! token calls (a network HSM holds no lock across its clients), and to hang the log token
//! on purpose.

use std::{
    collections::HashSet,
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The inode numbers of the files of the tokens in `token_dir`: every token's, or only the
/// one labelled `label`.
pub fn file_inodes(token_dir: &Path, label: Option<&str>) -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for token in token_dirs(token_dir, label)? {
        for file in fs::read_dir(token)? {
            // A file removed meanwhile (an object destroyed) holds no lock.
            if let Ok(meta) = file?.metadata() {
                inodes.insert(meta.ino());
            }
        }
    }
    Ok(inodes)
}

/// The directories of the tokens in `token_dir` (only the one labelled `label`, if given).
fn token_dirs(token_dir: &Path, label: Option<&str>) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for token in fs::read_dir(token_dir)
        .with_context(|| format!("token directory {}", token_dir.display()))?
    {
        let token = token?.path();
        if !token.is_dir() {
            continue;
        }
        let wanted = match label {
            None => true,
            Some(label) => {
                // SoftHSM keeps the label in token.object as the 32 bytes of CKA_LABEL,
                // padded with spaces.
                let object = fs::read(token.join("token.object")).unwrap_or_default();
                let padded = format!("{label:<32}");
                object.windows(padded.len()).any(|w| w == padded.as_bytes())
            }
        };
        if wanted {
            found.push(token);
        }
    }
    Ok(found)
}

/// Waits until every thread of `pid` is stopped (a signal's delivery is asynchronous).
pub fn wait_until_stopped(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = true;
        for task in fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // "tid (comm) S …": the state follows the last parenthesis (comm may hold any).
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            all &= matches!(state, Some('T' | 't' | 'Z' | 'X') | None);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("process {pid} did not stop");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `pid` holds a POSIX record lock on one of `inodes` (`/proc/locks`; a waiter's
/// line, marked `->`, holds nothing).
pub fn holds_record_lock(pid: u32, inodes: &HashSet<u64>) -> Result<bool> {
    let locks = fs::read_to_string("/proc/locks")?;
    let pid = pid.to_string();
    Ok(locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "N: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END"
        fields.get(1) == Some(&"POSIX")
            && fields.get(4) == Some(&pid.as_str())
            && fields
                .get(5)
                .and_then(|dev| dev.rsplit(':').next()?.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
    }))
}

/// Every file of one token write-locked by this process until dropped: a hung token, on
/// which every process's calls wait (as on a node stopped inside a call).
pub struct HeldToken {
    /// Open with their locks; closing a file releases its lock.
    files: Vec<fs::File>,
}

impl HeldToken {
    /// Locks every file of the token labelled `label` in `token_dir`, waiting for a call
    /// in flight to end.
    pub fn hold(token_dir: &Path, label: &str) -> Result<HeldToken> {
        let dirs = token_dirs(token_dir, Some(label))?;
        let [dir] = dirs.as_slice() else {
            bail!("{} tokens labelled {label:?}", dirs.len());
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry?.path())?;
            write_lock(&file)?;
            files.push(file);
        }
        Ok(HeldToken { files })
    }

    /// How many files it holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// A POSIX write lock on the whole of `file`, waiting for it (SoftHSM's kind of lock:
/// `flock` locks do not exclude it).
fn write_lock(file: &fs::File) -> Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor `file` owns, with a pointer to a live `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &mut lock) };
    if rc != 0 {
        bail!("fcntl(F_SETLKW): {}", std::io::Error::last_os_error());
    }
    Ok(())
}
