//! Which network a frame is on, as pure logic. Inside the mesh a named network's frames carry
//! an 802.1Q tag with its VLAN id (`crate::networks`); `default`'s are untagged. On a host each
//! network has its own bridge and TAP device, so frames there are untagged: meshd puts the tag
//! on when a frame leaves a network's TAP device, and takes it off when delivering to it.
//! A frame that arrives tagged from a bridge (a container tagging its own frames) is refused:
//! otherwise anyone on one network could speak on another.

use crate::networks::{DEFAULT_VLAN, VLANS};

/// Bytes of an 802.1Q tag.
pub const TAG_LEN: usize = 4;
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

/// The network a frame on the wire belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnWire {
    /// Untagged: `default`.
    Default,
    /// Tagged with a named network's VLAN id.
    Network(u16),
    /// Some other tag (priority-only, VLAN 1, reserved ids, 802.1ad): no network's.
    Foreign,
}

/// Where `frame` (Ethernet) belongs, from its tag.
pub fn on_wire(frame: &[u8]) -> OnWire {
    let Some(t) = frame.get(12..16) else {
        return OnWire::Default;
    };
    match u16::from_be_bytes([t[0], t[1]]) {
        TPID_8021Q => {
            let vid = u16::from_be_bytes([t[2], t[3]]) & 0x0fff;
            if VLANS.contains(&vid) {
                OnWire::Network(vid)
            } else {
                OnWire::Foreign
            }
        }
        TPID_8021AD => OnWire::Foreign,
        _ => OnWire::Default,
    }
}

/// The MTU of an interface on network `vlan`: a named network's tag comes out of the overlay
/// MTU's budget.
pub fn interface_mtu(overlay_mtu: u32, vlan: u16) -> u32 {
    if vlan == DEFAULT_VLAN {
        overlay_mtu
    } else {
        overlay_mtu - TAG_LEN as u32
    }
}

/// Whether a frame read from a bridge carries a tag of its own (refused, see the module doc).
pub fn tagged(frame: &[u8]) -> bool {
    on_wire(frame) != OnWire::Default
}

/// `frame` with the tag of network `vlan` inserted after its MACs, into `out` (priority 0).
pub fn tag(frame: &[u8], vlan: u16, out: &mut Vec<u8>) {
    debug_assert!(vlan != DEFAULT_VLAN);
    out.clear();
    out.extend_from_slice(&frame[..12.min(frame.len())]);
    out.extend_from_slice(&TPID_8021Q.to_be_bytes());
    out.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
    out.extend_from_slice(frame.get(12..).unwrap_or_default());
}

/// `frame` without its tag, into `out`.
pub fn untag(frame: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&frame[..12.min(frame.len())]);
    out.extend_from_slice(frame.get(12 + TAG_LEN..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x06];
        f.extend_from_slice(&[0xaa; 28]);
        f
    }

    #[test]
    fn a_tag_goes_on_and_comes_off_and_says_the_network() {
        let f = frame();
        assert_eq!(on_wire(&f), OnWire::Default);
        let mut t = Vec::new();
        tag(&f, 7, &mut t);
        assert_eq!(t.len(), f.len() + TAG_LEN);
        assert_eq!(&t[12..16], &[0x81, 0x00, 0x00, 0x07]);
        assert_eq!(on_wire(&t), OnWire::Network(7));
        let mut back = Vec::new();
        untag(&t, &mut back);
        assert_eq!(back, f);
    }

    #[test]
    fn tags_no_network_has_are_foreign() {
        for (tpid, tci) in [
            (0x8100u16, 0u16),
            (0x8100, 1),
            (0x8100, 4095),
            (0x8100, 0x2001), // priority 1 on VLAN 1
            (0x88a8, 7),
        ] {
            let mut f = frame();
            f.splice(12..12, [tpid.to_be_bytes(), tci.to_be_bytes()].concat());
            assert_eq!(on_wire(&f), OnWire::Foreign, "{tpid:#x} {tci:#x}");
            assert!(tagged(&f));
        }
        let mut f = frame();
        f.splice(12..12, [0x81, 0x00, 0xe0, 0x05]); // priority 7 on VLAN 5
        assert_eq!(on_wire(&f), OnWire::Network(5));
        assert_eq!(on_wire(&[1, 2, 3]), OnWire::Default);
    }
}
