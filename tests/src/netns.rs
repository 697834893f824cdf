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
    run_in_file(&format!("/var/run/netns/{ns}"), f)
}

/// [`run_in`] for the namespace file `path` (e.g. /proc/PID/ns/net: a container's).
pub fn run_in_file<T, F>(path: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = path.to_owned();
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

/// Sends each of `frames` (whole Ethernet frames) out of interface `ifname` of namespace `ns`
/// through a raw packet socket: frames no stack there would make.
pub fn send_frames(ns: &str, ifname: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    let ifname = std::ffi::CString::new(ifname).context("interface name")?;
    run_in(ns, move || -> Result<()> {
        // SAFETY: plain socket calls on a raw packet socket owned here (closed by OwnedFd);
        // buffers outlive the calls.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            if fd < 0 {
                bail!("packet socket: {}", std::io::Error::last_os_error());
            }
            let _owned = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            addr.sll_halen = 6;
            for frame in &frames {
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if sent != frame.len() as isize {
                    bail!("sending a frame: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    })?
}
