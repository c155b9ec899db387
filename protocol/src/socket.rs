//! Where the daemon's socket lives; the daemon, the CLI and the GIMP plug-in share this rule:
//! `--socket PATH` > `$NEURAL_STYLE_SOCKET` > `$XDG_RUNTIME_DIR/neural-style/daemon.sock` >
//! `/tmp/neural-style-<uid>/daemon.sock` (Unix); on Windows the named pipe
//! `\\.\pipe\neural-style-<user>`.

use std::path::{Path, PathBuf};

/// Environment variable that names the socket.
pub const SOCKET_ENV: &str = "NEURAL_STYLE_SOCKET";

/// The socket path by the shared rule.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_socket_path()
}

/// The default path (no flag, no environment variable): the private runtime-directory socket.
#[cfg(unix)]
pub fn default_socket_path() -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()).map(PathBuf::from);
    match runtime {
        Some(dir) => dir.join("neural-style").join("daemon.sock"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("neural-style-{}", unsafe { libc::getuid() })).join("daemon.sock"),
    }
}

#[cfg(windows)]
pub fn default_socket_path() -> PathBuf {
    let user = std::env::var("USERNAME").unwrap_or_else(|_| "user".into());
    PathBuf::from(format!(r"\\.\pipe\neural-style-{user}"))
}
