//! The few words of the systemd protocol the daemon speaks: `sd_notify` readiness, reload
//! and stop messages over `$NOTIFY_SOCKET` (a Unix datagram socket).

use std::{
    os::{linux::net::SocketAddrExt, unix::net::UnixDatagram},
    path::Path,
};

/// Sends `state` (e.g. `READY=1`) to the service manager, if the daemon runs under one.
/// Failures are logged, never fatal: the daemon works without a service manager.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): `@` stands for the leading NUL byte.
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), Path::new(&target))?;
        }
        Ok(())
    })();
    match sent {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => tracing::warn!(error = %e, state, "cannot notify the service manager"),
    }
}
