//! The data port's socket, with UDP segmentation (GSO: many same-size datagrams in one send)
//! and receive coalescing (GRO: many datagrams of one flow in one receive). Both cut the
//! per-datagram system-call cost; kernels without them (before 4.18 / 5.0) fall back to one
//! datagram per call.
//!
//! Non-blocking, and waited on for reading by the data path thread alone (its
//! [`super::poller::Poller`]). Nothing waits for it to be writable: registered for writing,
//! every datagram the kernel frees after sending makes the socket "writable" again and wakes
//! the waiting thread for nothing (one wake-up per send, seen with strace in request/response
//! traffic; on a VM an interrupt to a halted CPU). Sends go straight to the kernel, from the
//! data path thread and from the runtime sending heartbeats alike; only one that finds the
//! buffer full waits for room.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result};

use super::poller::write_waiting;

/// Most datagrams one GSO send may carry (the kernel's UDP_MAX_SEGMENTS on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes one GSO send may carry (an IPv4 packet's length limit, less headers).
pub const MAX_GSO_BYTES: usize = 65_000;

pub struct DataSocket {
    sock: std::net::UdpSocket,
    gso: AtomicBool,
    pub gro: bool,
}

fn setsockopt_int(
    sock: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes the data socket may hold for meshd to read. The default (rmem_default, 208 KiB here)
/// fills in a fraction of a millisecond when a peer's sends outrun this meshd for a moment,
/// and every datagram dropped then was sealed, sent and carried for nothing (seen as
/// RcvbufErrors under 64-byte floods). WireGuard's userspace implementations ask for 7 MiB.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// Asks for [`RECEIVE_BUFFER`] past the system's rmem_max (SO_RCVBUFFORCE, which meshd's
/// CAP_NET_ADMIN allows), else as much as rmem_max grants. Best effort: a smaller buffer
/// costs drops under bursts, not correctness.
fn receive_buffer(sock: &std::net::UdpSocket) {
    let forced = setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER);
    if let Err(e) = forced {
        tracing::debug!(error = %e, "SO_RCVBUFFORCE refused; asking within rmem_max");
        let _ = setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER);
    }
}

fn sockaddr_v4(addr: SocketAddr) -> io::Result<libc::sockaddr_in> {
    let SocketAddr::V4(a) = addr else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv6 underlay"));
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    })
}

impl DataSocket {
    /// Binds the data port. Every datagram carries DF and the kernel neither fragments nor
    /// refuses by its own path-MTU cache: meshd probes each path itself (a fragmented probe
    /// would lie).
    pub fn bind(port: u16) -> Result<DataSocket> {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port))
            .with_context(|| format!("binding the data port {port}"))?;
        sock.set_nonblocking(true)
            .context("making the data socket non-blocking")?;
        setsockopt_int(
            &sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
        .context("setting IP_MTU_DISCOVER on the data socket")?;
        let gro = setsockopt_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        receive_buffer(&sock);
        Ok(DataSocket {
            sock,
            gso: AtomicBool::new(true),
            gro,
        })
    }

    /// Sends one datagram; a full socket buffer is waited for, a while (see
    /// [`write_waiting`]).
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        write_waiting(self.sock.as_raw_fd(), || self.sock.send_to(buf, addr))
    }

    /// Sends `buf` to `addr` as datagrams of `seg` bytes each (the last may be shorter).
    pub fn send_segments(&self, buf: &[u8], seg: usize, addr: SocketAddr) -> io::Result<()> {
        if buf.len() <= seg {
            return self.send_to(buf, addr).map(|_| ());
        }
        if self.gso.load(Ordering::Relaxed) {
            match self.send_gso(buf, seg, addr) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::info!(error = %e, "UDP segmentation offload unavailable; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for d in buf.chunks(seg) {
            self.send_to(d, addr)?;
        }
        Ok(())
    }

    fn send_gso(&self, buf: &[u8], seg: usize, addr: SocketAddr) -> io::Result<()> {
        let mut name = sockaddr_v4(addr)?;
        write_waiting(self.sock.as_raw_fd(), || {
            let mut iov = libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            // Room for one cmsg carrying a u16, aligned as the kernel wants.
            let mut control = [0u64; 4];
            // SAFETY: msghdr is plain data; all-zero is valid before it is filled in.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_* compute sizes and pointers within `control`, which is large
            // enough for one cmsg of a u16.
            unsafe {
                msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
                if libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }

    /// Receives into `buf` if a datagram is waiting (`WouldBlock` if none): (length, sender,
    /// segment size). With GRO, `buf` may hold several datagrams of `segment size` bytes back
    /// to back (the last may be shorter).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        receive(self.sock.as_raw_fd(), buf)
    }
}

impl AsRawFd for DataSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// One `recvmsg` on the (non-blocking) socket `fd`, with its GRO segment size.
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut name = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is valid before it is filled in.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg into buffers we own; cmsgs are read within msg_controllen.
    unsafe {
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut seg = n;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                if v > 0 {
                    seg = v as usize;
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let a = name.assume_init();
        let from = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        );
        Ok((n, SocketAddr::V4(from), seg))
    }
}
