//! Standard output that survives a closed pipe: `actseal verify … | head -1` closes stdout
//! after one line, and `println!` would panic (exit 101). A closed stdout is not a failure of
//! the command: the rest of its output is dropped and its exit code stays what its result says.

use std::{
    fmt,
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

/// Set once stdout has been found closed: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` (and a newline when `newline`) to stdout. A broken pipe stops all further
/// output; any other write error is reported once on stderr, and output stops too.
pub fn write(args: fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            let _ = writeln!(
                io::stderr(),
                "actseal: cannot write to standard output: {e}"
            );
        }
    }
}

/// `println!` that stops quietly at a closed stdout.
macro_rules! outln {
    () => { $crate::cli::out::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), true) };
}

/// `print!` that stops quietly at a closed stdout (only the daemon's commands need it).
#[cfg(feature = "daemon")]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::write(format_args!($($arg)*), false) };
}

#[cfg(feature = "daemon")]
pub(crate) use out;
pub(crate) use outln;
