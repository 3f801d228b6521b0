//! Readiness and state messages to systemd (`sd_notify(3)`), for `Type=notify` units.

use std::path::Path;

use tracing::warn;

/// Sends `state` (lines such as `READY=1`, `STOPPING=1`, `STATUS=…`) to `$NOTIFY_SOCKET`, if
/// set: a path, or an abstract socket name starting with `@`. Failures are logged and
/// otherwise ignored, as with `sd_notify`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = result {
        warn!(error = %e, socket = %Path::new(&path).display(), "cannot notify systemd");
    }
}
