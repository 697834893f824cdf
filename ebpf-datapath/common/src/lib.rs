//! Types shared between the eBPF datapath (kernel) and `meshd` (userspace): the wire format,
//! the BPF map layouts and the counters. One definition, compiled into both, so the two
//! datapaths cannot disagree.
//!
//! Everything here is `#[repr(C)]` with explicit fields and no padding, because the same bytes
//! are read by two compilers: the BPF object and the host binary. Layout tests pin sizes and
//! offsets so a change on one side cannot silently disagree with the other.
#![no_std]

pub mod counters;
pub mod maps;
pub mod wire;

pub use counters::{
    DropReason, KERNEL_COUNTER_SLOTS, KernelCounter, UNDERLAY_COUNTER_SLOTS, UnderlayCounter,
};
pub use maps::DatapathConfig;

/// Default UDP port of the mesh data plane (VXLAN framing, see docs/wire-format.md).
pub const DEFAULT_DATA_PORT: u16 = 6784;

/// Default UDP port of the QUIC control plane.
pub const DEFAULT_CONTROL_PORT: u16 = 6783;

/// Names of the maps and programs in the eBPF object; userspace looks them up by these.
pub mod names {
    pub const UNDERLAY_RX_PROGRAM: &str = "underlay_rx";
    pub const UNDERLAY_COUNTERS_MAP: &str = "UNDERLAY_COUNTERS";
    pub const DATAPATH_CONFIG_MAP: &str = "DATAPATH_CONFIG";
    pub const BRIDGE_EGRESS_PROGRAM: &str = "bridge_egress";
    pub const UNDERLAY_INGRESS_PROGRAM: &str = "underlay_ingress";
    pub const PORT_INGRESS_PROGRAM: &str = "port_ingress";
    pub const KERNEL_COUNTERS_MAP: &str = "KERNEL_COUNTERS";
    pub const NEIGHBOURS_MAP: &str = "NEIGHBOURS";
    pub const SENDERS_MAP: &str = "SENDERS";
    pub const ROUTES_MAP: &str = "ROUTES";
    pub const FDB_MAP: &str = "FDB";
    pub const LINK_STATS_MAP: &str = "LINK_STATS";
    pub const LOCAL_PORTS_MAP: &str = "LOCAL_PORTS";
    pub const PEER_PORTS_MAP: &str = "PEER_PORTS";
    pub const FLOODS_MAP: &str = "FLOODS";
}
