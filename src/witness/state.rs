//! The witness's durable state: the newest checkpoint it cosigned of each log, one file per
//! log, replaced atomically (write, fsync, rename, fsync the directory) before any
//! cosignature of it leaves, so a crash or SIGKILL at any point leaves the old or the new
//! checkpoint and never a cosignature the state does not hold.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::WitnessError;

/// The state directory, locked against a second witness process on it.
pub struct StateDir {
    dir: PathBuf,
    _lock: fs::File,
}

fn io(what: &Path, e: std::io::Error) -> WitnessError {
    WitnessError::State(format!("{}: {e}", what.display()))
}

impl StateDir {
    /// Opens (creating, owner-only) the directory and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, WitnessError> {
        crate::files::private_dir(dir).map_err(|e| WitnessError::State(e.to_string()))?;
        let path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(WitnessError::State(format!(
                "{} is in use by another witness process",
                dir.display()
            )));
        }
        Ok(StateDir {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    fn file(&self, origin: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.checkpoint",
            hex::encode(Sha256::digest(origin.as_bytes()))
        ))
    }

    /// The newest cosigned checkpoint note of `origin`, if any.
    pub fn load(&self, origin: &str) -> Result<Option<String>, WitnessError> {
        let path = self.file(origin);
        match fs::read_to_string(&path) {
            Ok(note) => Ok(Some(note)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Replaces the checkpoint of `origin`, durably.
    pub fn store(&self, origin: &str, note: &str) -> Result<(), WitnessError> {
        let path = self.file(origin);
        let tmp = path.with_extension("tmp");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        file.write_all(note.as_bytes()).map_err(|e| io(&tmp, e))?;
        file.sync_all().map_err(|e| io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))
    }
}
