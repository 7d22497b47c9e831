//! The files and directories the daemon and its tools keep: owner-only modes set by actseal
//! itself (not left to the umask or to the service manager), and files replaced whole, so
//! that neither a reader nor a crash ever sees half of one.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Directories actseal creates: the owner alone may list or enter them.
pub const PRIVATE_DIR: u32 = 0o700;
/// Files actseal writes: the owner alone may read them.
pub const PRIVATE_FILE: u32 = 0o600;
/// The one kind of file meant for others: a CA's own certificate, the trust anchor that
/// verifiers are given.
pub const PUBLIC_FILE: u32 = 0o644;

/// A file or directory that could not be made or changed. Names the path, never content.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

fn context<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Creates `dir` (and missing parents) as [`PRIVATE_DIR`]. A `dir` that exists with access
/// for group or others is narrowed to the owner, since it holds the daemon's state.
pub fn private_dir(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(context(dir, "create the directory"))?;
    narrow(dir, PRIVATE_DIR)
}

/// Sets `path`'s mode to `mode` if it grants more than `mode` does. Absent is fine.
pub fn narrow(path: &Path, mode: u32) -> Result<(), FileError> {
    let current = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(path, "read the mode")(e)),
    };
    if current & !mode == 0 {
        return Ok(());
    }
    tracing::warn!(path = %path.display(), mode = format!("{current:04o}"),
        narrowed_to = format!("{mode:04o}"), "access for group or others removed");
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(context(path, "set the mode"))
}

/// Creates `path` as an empty [`PRIVATE_FILE`] if it does not exist, else narrows its mode:
/// for files another library opens itself (SQLite gives its -wal and -shm the database's mode).
pub fn private_file(path: &Path) -> Result<(), FileError> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .open(path)
    {
        Ok(file) => file
            .set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))
            .map_err(context(path, "set the mode")),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => narrow(path, PRIVATE_FILE),
        Err(e) => Err(context(path, "create the file")(e)),
    }
}

/// Replaces `path` with `contents`, mode `mode`: written to a new file in the same directory,
/// synced, renamed over `path`, and the directory synced. A reader sees the old file or the
/// new one; after a crash, one of the two is there.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| context(path, "write")(io::ErrorKind::InvalidInput.into()))?;
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(random_suffix())
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have narrowed `mode`; the file gets exactly `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(context(path, "write")(e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(context(dir, "sync the directory"))
}

fn random_suffix() -> [u8; 8] {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 8];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_are_created_and_narrowed_to_the_owner() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), PRIVATE_DIR);
        assert_eq!(mode(&root.path().join("a")), PRIVATE_DIR);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), PRIVATE_DIR);

        let file = root.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = private_dir(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
    }

    #[test]
    fn files_are_created_private_and_existing_ones_narrowed_not_emptied() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("db");
        private_file(&path).unwrap();
        assert_eq!(mode(&path), PRIVATE_FILE);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);

        fs::write(&path, "kept").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o664)).unwrap();
        private_file(&path).unwrap();
        assert_eq!(mode(&path), PRIVATE_FILE);
        assert_eq!(fs::read_to_string(&path).unwrap(), "kept");
    }

    #[test]
    fn atomic_writes_replace_whole_files_with_the_given_mode_and_leave_no_temp() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("device.crt");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"new", PRIVATE_FILE).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), PRIVATE_FILE);

        let anchor = root.path().join("ca.crt");
        write_atomic(&anchor, b"anchor", PUBLIC_FILE).unwrap();
        assert_eq!(mode(&anchor), PUBLIC_FILE);

        // A failed write leaves the old file as it was and no temporary file behind.
        let missing = root.path().join("absent/x");
        assert!(write_atomic(&missing, b"y", PRIVATE_FILE).is_err());
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }
}
