//! The local bridge's ports that are veths, whose other end sits in a container's namespace:
//! the kernel datapath hands frames for their MACs straight to the container
//! (`bpf_redirect_peer`), which works only for such a port, and sends their frames for the
//! mesh before they reach the bridge (`port_ingress`). Read from sysfs and the ethtool
//! driver name, which follow meshd's network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A datagram socket for interface ioctls and an `ifreq` naming `name`; `None` for a name the
/// kernel could not have or when no socket can be had.
fn ifreq_for(name: &str) -> Option<(OwnedFd, libc::ifreq)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a datagram socket only used for ioctls, owned and closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Some((sock, req))
}

/// Whether interface `name` is a veth (its ethtool driver says so).
pub fn is_veth(name: &str) -> bool {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let Some((sock, mut req)) = ifreq_for(name) else {
        return false;
    };
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: SIOCETHTOOL with an ifreq whose data is a drvinfo buffer of the right size, which
    // outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } < 0 {
        return false;
    }
    info.driver.split(|b| *b == 0).next() == Some(b"veth".as_slice())
}

/// Takes interface `name` down if it is up; true if it was up (and is down now).
pub fn take_down(name: &str) -> bool {
    let Some((sock, mut req)) = ifreq_for(name) else {
        return false;
    };
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS just set the flags member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short == 0 {
        return false;
    }
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    // SAFETY: SIOCSIFFLAGS with the flags just read, less IFF_UP.
    unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) >= 0 }
}

/// The interface indexes and names of `bridge`'s ports that are veths.
pub fn veth_ports(bridge: &str) -> Vec<(u32, String)> {
    let Ok(ports) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) else {
        return Vec::new();
    };
    ports
        .flatten()
        .filter_map(|p| {
            let name = p.file_name().into_string().ok()?;
            if !is_veth(&name) {
                return None;
            }
            let index = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((index, name))
        })
        .collect()
}
