//! The kernel datapath: mesh's eBPF object, embedded in meshd at build time (see build.rs),
//! typed wrappers over its programs and maps, and the choice between it and the pure-TAP mode.

pub mod compile;
pub mod iface;
pub mod kernel;
pub mod kernel_path;
pub mod neigh;
pub mod ports;
mod underlay_rx;

use std::net::Ipv4Addr;

pub use iface::Datapath;
pub use kernel::{HostConfig, KernelDatapath};
pub use underlay_rx::{Counters, UnderlayRx, XdpAttachMode};

/// The eBPF object built from ebpf-datapath/ebpf by build.rs. `include_bytes_aligned!` because
/// the ELF parser needs the bytes aligned, which plain `include_bytes!` does not promise.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-datapath"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "loading mesh's eBPF object failed (the kernel datapath needs root or CAP_BPF + \
         CAP_NET_ADMIN and a kernel with BPF; --datapath tap runs without): {0}"
    )]
    Load(#[source] aya::EbpfError),
    #[error("mesh's eBPF object has no {0}; the build is inconsistent, rebuild meshd")]
    Missing(&'static str),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error(
        "attaching XDP to interface {interface:?} failed (does it exist in this network namespace?): {source}"
    )]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching a TC program to interface {interface:?} failed (the kernel datapath needs TC \
         BPF: kernel >= 4.5 with cls_bpf, or TCX on >= 6.6): {source}"
    )]
    AttachTc {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("no interface {0:?} in this network namespace")]
    NoInterface(String),
    #[error("no IPv4 address on the underlay interface {0:?}; the kernel datapath sends from one")]
    NoUnderlayAddress(String),
    #[error("pinning the kernel datapath in {0:?} (is bpffs mounted at /sys/fs/bpf?): {1}")]
    Pins(std::path::PathBuf, #[source] std::io::Error),
    #[error("counting CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("opening a second handle on a kernel datapath map: {0}")]
    MapHandle(#[source] std::io::Error),
}

/// Which datapath moves frames (`--datapath`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathChoice {
    /// The kernel datapath if this kernel and these privileges allow it, else the TAP one
    /// (logged, and shown by `meshctl status` with the reason).
    Auto,
    /// The kernel datapath, or refuse to start.
    Ebpf,
    /// meshd moves every frame itself through its TAP device; no BPF at all.
    Tap,
}

/// Whether `dir` (or, while it does not exist yet, its nearest existing ancestor) is on a
/// bpffs, where pins can live.
pub fn on_bpffs(dir: &std::path::Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The first IPv4 address of `interface`.
pub fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, DatapathError> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(DatapathError::NoUnderlayAddress(interface.into()));
    }
    let mut found = None;
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null, NUL-terminated, owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: non-null sockaddr; family read before the cast.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if name.to_bytes() == interface.as_bytes() && i32::from(family) == libc::AF_INET {
            // SAFETY: AF_INET means it is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found.ok_or_else(|| DatapathError::NoUnderlayAddress(interface.into()))
}
