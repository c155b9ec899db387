//! The daemon's socket: a private directory, mode 0600, stale-socket recovery after a crash,
//! refusal when another daemon serves the same path, a pid file beside the socket.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{Listener, ListenerOptions};

use neural_style_protocol::client::connect_stream;

/// A bound listener; dropping it removes the socket and the pid file.
pub struct Bound {
    pub listener: Listener,
    pub path: PathBuf,
    pid_file: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// The pid file that goes with a socket path.
pub fn pid_file(socket: &Path) -> PathBuf {
    socket.with_extension("pid")
}

#[cfg(unix)]
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
        // DirBuilder's mode is filtered by the umask; make sure.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        return Ok(());
    }
    let meta = std::fs::metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let private = meta.mode() & 0o077 == 0;
    if meta.uid() != me && private {
        bail!("socket directory {} belongs to another user; use --socket PATH", dir.display());
    }
    Ok(())
}

#[cfg(not(unix))]
fn prepare_dir(_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Whether `path` is the default private directory's socket (created 0700 by us).
fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let default = neural_style_protocol::socket::default_socket_path();
        if default == path {
            let meta = std::fs::metadata(dir)?;
            // SAFETY: geteuid has no preconditions.
            if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                tracing::warn!(dir = %dir.display(), "socket directory was not private; set it to 0700");
            }
        }
    }
    let _ = path;
    Ok(())
}

/// Binds the daemon's socket at `path`.
pub fn bind(path: &Path) -> anyhow::Result<Bound> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    check_private(path)?;
    if cfg!(unix) && std::fs::symlink_metadata(path).is_ok() {
        match connect_stream(path) {
            Ok(_) => {
                let pid = std::fs::read_to_string(pid_file(path)).map(|s| s.trim().to_string()).unwrap_or("?".into());
                bail!(
                    "another neural-style daemon (pid {pid}) is already serving {}; stop it with `neural-style stop` \
                     or choose another --socket",
                    path.display()
                );
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a stale socket (left by a daemon that died)");
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
            }
        }
    }
    let listener = listen(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let pid_file = pid_file(path);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    Ok(Bound { listener, path: path.to_owned(), pid_file })
}

#[cfg(unix)]
fn listen(path: &Path) -> std::io::Result<Listener> {
    use interprocess::local_socket::GenericFilePath;
    use interprocess::os::unix::local_socket::ListenerOptionsExt;
    ListenerOptions::new().name(path.to_fs_name::<GenericFilePath>()?).mode(0o600).create_sync()
}

#[cfg(windows)]
fn listen(path: &Path) -> std::io::Result<Listener> {
    use interprocess::local_socket::GenericNamespaced;
    let s = path.to_string_lossy();
    let name = s.trim_start_matches(r"\\.\pipe\").to_string();
    ListenerOptions::new().name(name.to_ns_name::<GenericNamespaced>()?).create_sync()
}
