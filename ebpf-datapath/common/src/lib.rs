//! Types shared between the eBPF datapath (kernel) and `meshd` (userspace).
//!
//! Everything here is `#[repr(C)]` with explicit fields and no padding, because the same bytes
//! are read by two compilers: the BPF object and the host binary. Layout tests at the bottom pin
//! sizes and offsets so a change on one side cannot silently disagree with the other.
#![no_std]

/// Default UDP port of the mesh data plane (VXLAN framing, see docs/wire-format.md).
pub const DEFAULT_DATA_PORT: u16 = 6784;

/// Default UDP port of the QUIC control plane.
pub const DEFAULT_CONTROL_PORT: u16 = 6783;

/// What the underlay receive program saw, one slot per class in the `UNDERLAY_COUNTERS` per-CPU
/// array. Every frame increments `Total` and exactly one other slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderlayCounter {
    /// Every frame the program ran on.
    Total = 0,
    /// Shorter than the headers it claims to carry (Ethernet, IPv4 or UDP cut off).
    Truncated = 1,
    /// Ethernet type other than IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// IPv6 frames (not parsed yet: the underlay is IPv4 for now).
    Ipv6 = 3,
    /// IPv4 with a header that cannot be right (IHL < 5).
    MalformedIpv4 = 4,
    /// IPv4 that is not UDP, or a non-first fragment (no UDP header to read).
    Ipv4NotUdp = 5,
    /// UDP to some other port.
    UdpOtherPort = 6,
    /// UDP to the mesh data port.
    DataPort = 7,
}

impl UnderlayCounter {
    /// All counters, in slot order.
    pub const ALL: [UnderlayCounter; UNDERLAY_COUNTER_SLOTS as usize] = [
        UnderlayCounter::Total,
        UnderlayCounter::Truncated,
        UnderlayCounter::NotIp,
        UnderlayCounter::Ipv6,
        UnderlayCounter::MalformedIpv4,
        UnderlayCounter::Ipv4NotUdp,
        UnderlayCounter::UdpOtherPort,
        UnderlayCounter::DataPort,
    ];

    /// Stable snake_case name, used in `meshctl status` and JSON output.
    pub const fn name(self) -> &'static str {
        match self {
            UnderlayCounter::Total => "total",
            UnderlayCounter::Truncated => "truncated",
            UnderlayCounter::NotIp => "not_ip",
            UnderlayCounter::Ipv6 => "ipv6",
            UnderlayCounter::MalformedIpv4 => "malformed_ipv4",
            UnderlayCounter::Ipv4NotUdp => "ipv4_not_udp",
            UnderlayCounter::UdpOtherPort => "udp_other_port",
            UnderlayCounter::DataPort => "data_port",
        }
    }
}

/// Number of slots in the `UNDERLAY_COUNTERS` map.
pub const UNDERLAY_COUNTER_SLOTS: u32 = 8;

/// Runtime configuration of the datapath, the single entry of the `DATAPATH_CONFIG` array map.
/// Written by `meshd` before the program is attached; a zeroed entry matches nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// UDP port of the mesh data plane, in host byte order.
    pub data_port_host: u16,
    /// Reserved, must be zero (keeps the struct free of implicit padding).
    pub reserved: u16,
    /// Bit flags, none defined yet; must be zero.
    pub flags: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (see the layout test), every bit pattern valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
}

/// Names of the maps and programs in the eBPF object; userspace looks them up by these.
pub mod names {
    pub const UNDERLAY_RX_PROGRAM: &str = "underlay_rx";
    pub const UNDERLAY_COUNTERS_MAP: &str = "UNDERLAY_COUNTERS";
    pub const DATAPATH_CONFIG_MAP: &str = "DATAPATH_CONFIG";
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn datapath_config_layout_is_pinned() {
        assert_eq!(size_of::<DatapathConfig>(), 8);
        assert_eq!(offset_of!(DatapathConfig, data_port_host), 0);
        assert_eq!(offset_of!(DatapathConfig, reserved), 2);
        assert_eq!(offset_of!(DatapathConfig, flags), 4);
    }

    #[test]
    fn counter_slots_are_dense_and_named_uniquely() {
        for (i, c) in UnderlayCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "counter {c:?} is not in slot order");
        }
        for a in UnderlayCounter::ALL {
            for b in UnderlayCounter::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
