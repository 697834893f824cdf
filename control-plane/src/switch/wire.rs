//! The data frame header as the TAP datapath uses it: typed ids over the one wire definition
//! in `mesh_common::wire` (which the eBPF programs compile too). VXLAN (RFC 7348) framing with
//! mesh's fields in the bits VXLAN reserves, so `tcpdump -T vxlan port 6784` decodes the inner
//! Ethernet frame. See docs/wire-format.md.
//!
//! ```text
//!  0               1               2               3
//! +---------------+-----------------------------------------------+
//! | flags  I=0x08 | destination short id (24 bits)                |
//! |  M=0x01 H=0x02| 0xffffff = flood along the origin's tree      |
//! +---------------+-----------------------------------------------+
//! | VNI = origin short id (24 bits)               | hop limit     |
//! +-----------------------------------------------+---------------+
//! | inner Ethernet frame (none in a heartbeat)                    |
//! ```

use mesh_common::wire::WireHeader;
pub use mesh_common::wire::{
    FLAG_HEARTBEAT, FLAG_I, FLAG_MESH, HEADER_LEN, INITIAL_HOPS, OVERHEAD_IPV4,
};

use super::ShortId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub origin: ShortId,
    pub destination: ShortId,
    pub hops: u8,
    pub heartbeat: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Malformed {
    Short,
    NotMesh,
    NoInnerFrame,
}

impl Header {
    /// A link heartbeat: from the neighbour itself, never relayed (hop limit 1). A
    /// heartbeat-flagged frame with a larger hop limit is a data-path echo (`super::echo`).
    pub fn is_link_heartbeat(&self) -> bool {
        self.heartbeat && self.hops == 1
    }

    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        *out = WireHeader::new(
            self.origin.get(),
            self.destination.get(),
            self.hops,
            self.heartbeat,
        )
        .to_bytes();
    }

    /// Parses a received datagram into its header and inner frame.
    pub fn parse(datagram: &[u8]) -> Result<(Header, &[u8]), Malformed> {
        let h: &[u8; HEADER_LEN] = datagram
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Malformed::Short)?;
        let header = Header::read(h)?;
        let inner = &datagram[HEADER_LEN..];
        if !header.heartbeat && inner.len() < 14 {
            return Err(Malformed::NoInnerFrame);
        }
        Ok((header, inner))
    }

    /// The header alone (flags other than I, M and H are the caller's business).
    pub fn read(h: &[u8; HEADER_LEN]) -> Result<Header, Malformed> {
        let w = WireHeader::from_bytes(h);
        if !w.is_mesh() {
            return Err(Malformed::NotMesh);
        }
        Ok(Header {
            destination: ShortId::from_wire(w.destination()),
            origin: ShortId::from_wire(w.origin()),
            hops: w.hops,
            heartbeat: w.is_heartbeat(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_keeps_vxlan_framing() {
        let h = Header {
            origin: ShortId::from_wire(0x123456),
            destination: ShortId::FLOOD,
            hops: 31,
            heartbeat: false,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.write(&mut buf);
        // A VXLAN decoder sees the I flag and VNI = origin.
        assert_eq!(buf[0] & FLAG_I, FLAG_I);
        assert_eq!(&buf[4..7], &[0x12, 0x34, 0x56]);
        let mut dgram = buf.to_vec();
        dgram.extend_from_slice(&[0u8; 14]);
        assert_eq!(Header::parse(&dgram).unwrap(), (h, &[0u8; 14][..]));
    }

    #[test]
    fn malformed_datagrams_are_classified() {
        assert_eq!(Header::parse(&[0x09, 0, 0]), Err(Malformed::Short));
        assert_eq!(Header::parse(&[0x08; 30]), Err(Malformed::NotMesh));
        assert_eq!(
            Header::parse(&[0x09, 0, 0, 1, 0, 0, 2, 5, 1]),
            Err(Malformed::NoInnerFrame)
        );
        let hb = [FLAG_I | FLAG_MESH | FLAG_HEARTBEAT, 0, 0, 1, 0, 0, 2, 1];
        assert!(Header::parse(&hb).unwrap().0.heartbeat);
    }
}
