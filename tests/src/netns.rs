//! Running code of the current process inside a named network namespace.

use std::{fs::File, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};

/// Runs `f` on a fresh thread that has joined network namespace `ns` (/var/run/netns/<ns>), and
/// returns its result. A new thread per call means no thread is ever left in the wrong
/// namespace, whatever `f` does.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let handle = std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on this thread only; the fd is valid for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
