//! meshd's TAP device, opened with a virtio-net header and TCP segmentation offload, so the
//! kernel hands over TCP super-frames (see `switch::offload`). tokio-tun cannot ask for
//! `IFF_VNET_HDR`, which is why the device is opened here.

use std::{
    io::{self, IoSlice},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

use super::poller::write_waiting;
use crate::switch::offload::VNET_HDR_LEN;

pub struct Tap {
    fd: OwnedFd,
}

/// A zero virtio-net header: a frame that needs nothing from the kernel.
const PLAIN_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Attaches a queue of TAP device `name` in this network namespace, creating the device if it
/// does not exist. Multi-queue, so that a second process (the keeper, `keeper.rs`) can hold
/// the device up while meshd restarts; with a virtio-net header, as every queue of the device
/// must agree on it.
pub fn attach_queue(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!(
            "TAP name {name:?} must be 1 to {} bytes",
            libc::IFNAMSIZ - 1
        );
    }
    // SAFETY: open(2) with a NUL-terminated path.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error())
            .context("opening /dev/net/tun (is the tun module loaded?)");
    }
    // SAFETY: a fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE) as i16;
    // SAFETY: TUNSETIFF takes an ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("creating TAP device {name}"));
    }
    Ok(fd)
}

impl Tap {
    /// Creates (or attaches to) TAP device `name` in this network namespace.
    pub fn open(name: &str) -> Result<Tap> {
        let fd = attach_queue(name)?;
        // SAFETY: the ioctls below take the argument types documented in tun(4).
        unsafe {
            let hdr_len = VNET_HDR_LEN as libc::c_int;
            if libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) < 0 {
                return Err(io::Error::last_os_error()).context("setting the vnet header size");
            }
            let offload = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            if libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                offload as libc::c_ulong,
            ) < 0
            {
                return Err(io::Error::last_os_error()).context("enabling TAP offloads");
            }
        }
        Ok(Tap { fd })
    }

    /// Whether the device is still there: deleting it (`ip link del`) detaches our queue
    /// without waking a pending read, so a blocked reader alone would never notice.
    pub fn attached(&self) -> io::Result<()> {
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF fills an ifreq.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame, its virtio-net header first, if one is waiting (`WouldBlock` if none:
    /// the data path thread waits for the device with [`super::poller::Poller`]).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.fd, buf)
    }

    /// Writes one whole Ethernet frame (checksums already right).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.write_parts(&[IoSlice::new(&PLAIN_HDR), IoSlice::new(frame)])
    }

    /// Writes a frame that starts with its own virtio-net header (a coalesced super-frame).
    pub fn send_with_header(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_parts(&[IoSlice::new(bytes)])
    }

    /// One writev; a device that refuses for now (its queue full) is waited for, a while.
    fn write_parts(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        write_waiting(self.fd.as_raw_fd(), || {
            // SAFETY: writev(2) of slices that outlive the call.
            let n = unsafe {
                libc::writev(
                    self.fd.as_raw_fd(),
                    iov.as_ptr().cast(),
                    iov.len() as libc::c_int,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read(2) into a buffer we own, within its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
