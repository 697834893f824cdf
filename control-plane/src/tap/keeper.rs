//! The TAP keeper: a small process that holds meshd's TAP device up while meshd is not running
//! (crashed, killed, being restarted), so the kernel datapath keeps forwarding between known
//! peers. A TAP device loses its carrier, and the bridge disables the port, when its last queue
//! closes; the keeper attaches one more queue and disables it at once (`IFF_DETACH_QUEUE`), so
//! it receives no frame yet keeps the device and its carrier. meshd starts it (its own
//! executable with the hidden `--keep-tap` flag) when it runs the kernel datapath, finds it
//! again after a restart through a PID file in its run directory, and stops it on a clean stop
//! or `meshd --cleanup`; without a keeper the device is gone with its last queue.

use std::{
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use super::vnet::attach_queue;

/// The flag meshd runs a keeper with.
pub const FLAG: &str = "--keep-tap";

fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("tap-keeper.pid")
}

/// Whether `pid` is a live keeper (not some process that inherited the number).
fn is_keeper(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == FLAG.as_bytes()))
}

fn running(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(run_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_keeper(pid).then_some(pid)
}

/// Starts a keeper for `tap` unless one from an earlier run still holds it.
pub fn ensure(tap: &str, run_dir: &Path) -> Result<()> {
    if let Some(pid) = running(run_dir) {
        tracing::info!(pid, tap, "adopting the TAP keeper of an earlier run");
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding meshd's own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args([FLAG, tap])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own session: a signal to meshd's process group does not end it.
    // SAFETY: setsid is async-signal-safe, the only call made between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the TAP keeper")?;
    std::fs::write(pid_file(run_dir), format!("{}\n", child.id()))
        .context("writing the TAP keeper's PID file")?;
    Ok(())
}

/// Stops the keeper (if any), so the TAP device goes away with meshd's own queue.
pub fn stop(run_dir: &Path) {
    if let Some(pid) = running(run_dir) {
        // SAFETY: kill(2) on the keeper we started, identified by its command line.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..50 {
            if !is_keeper(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file(run_dir));
}

/// The keeper itself: holds a disabled queue of `tap` until the device is gone or it is told
/// to stop (SIGTERM, or SIGINT).
pub fn run(tap: &str) -> Result<()> {
    let fd = attach_queue(tap)?;
    // SAFETY: ifreq is plain data; TUNSETQUEUE takes one.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_flags = libc::IFF_DETACH_QUEUE as i16;
    // SAFETY: as above, on our own descriptor.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETQUEUE, &mut req) } < 0 {
        return Err(io::Error::last_os_error()).context("disabling the keeper's TAP queue");
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: as above; fails (EBADFD) once the device is gone.
        let mut probe: libc::ifreq = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut probe) } < 0 {
            return Ok(());
        }
    }
}
