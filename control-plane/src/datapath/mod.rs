//! The kernel datapath: mesh's eBPF object, embedded in meshd at build time (see build.rs), and
//! typed wrappers over its programs and maps.

mod underlay_rx;

pub use underlay_rx::{Counters, DatapathError, UnderlayRx, XdpAttachMode};

/// The eBPF object built from ebpf-datapath/ebpf by build.rs. `include_bytes_aligned!` because
/// the ELF parser needs the bytes aligned, which plain `include_bytes!` does not promise.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-datapath"));
