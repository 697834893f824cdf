//! Finding mesh's own binaries (meshd, meshctl) from a test or xtask process.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Path of the workspace binary `name`: `$MESH_BIN_DIR/name` if that is set, else next to the
/// running executable (test executables live in target/<profile>/deps, binaries one level up).
pub fn path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("MESH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()?;
            let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    if !p.is_file() {
        bail!(
            "{} not found; build the binaries first (`cargo build --bins`, which `cargo xtask \
             test` does) or set MESH_BIN_DIR",
            p.display()
        );
    }
    Ok(p)
}
