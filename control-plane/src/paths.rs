//! Where a meshd instance keeps its files. Everything hangs off directories given on the command
//! line, so several instances on one machine (one per network namespace, as in the tests) never
//! share a path.

use std::path::{Path, PathBuf};

/// Default directory for runtime files (the API socket).
pub const DEFAULT_RUN_DIR: &str = "/run/mesh";

/// File name of the local API socket inside the run dir.
pub const SOCKET_NAME: &str = "meshd.sock";

/// Default socket path meshctl talks to.
pub fn default_socket() -> PathBuf {
    Path::new(DEFAULT_RUN_DIR).join(SOCKET_NAME)
}

/// The API socket of the instance whose run dir is `run_dir`.
pub fn socket_in(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}
