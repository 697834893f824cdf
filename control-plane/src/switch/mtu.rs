//! Frames too big for the overlay, as pure logic. Instead of vanishing (the MTU black hole that
//! plagued Weave), an oversize IP packet is either split (IPv4 without DF) or answered with the
//! ICMP error its sender's stack uses to learn the path MTU: IPv4 "fragmentation needed" or
//! ICMPv6 "packet too big". The error claims to come from the packet's destination, since the
//! switch has no address of its own on the overlay; stacks accept that, as they only check the
//! quoted header.

use super::{Mac, offload::checksum};

const ETH: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// RFC 1812: an ICMPv4 error quotes as much as fits in 576 bytes.
const ICMPV4_MAX: usize = 576;
/// RFC 4443: an ICMPv6 error must fit the IPv6 minimum MTU.
const ICMPV6_MAX: usize = 1280;

/// What to do with a frame whose IP packet exceeds the overlay MTU.
#[derive(Debug, PartialEq, Eq)]
pub enum Oversize {
    /// `out` holds an ICMP error frame to hand back to the local bridge.
    Reply,
    /// IPv4 without DF: forward these fragments instead (each a whole frame).
    Fragments(Vec<std::ops::Range<usize>>),
    /// Nothing sensible to do (not IP, a fragment of an ICMP error, a multicast source...).
    Drop,
}

/// The IP packet length a frame carries (what the overlay MTU limits).
pub fn packet_len(frame: &[u8]) -> usize {
    frame.len().saturating_sub(ETH)
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Decides what to do with an oversize `frame`, writing replies or fragments into `out`.
pub fn handle(frame: &[u8], mtu: usize, out: &mut Vec<u8>) -> Oversize {
    out.clear();
    match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => ipv4(frame, mtu, out),
        Some(ETHERTYPE_IPV6) => ipv6(frame, mtu, out),
        _ => Oversize::Drop,
    }
}

/// Ethernet header answering `frame`: back to its source, from its destination.
fn reply_eth(frame: &[u8], ethertype: u16, out: &mut Vec<u8>) {
    let (dst, src): (Mac, Mac) = (
        frame[0..6].try_into().expect("6 bytes"),
        frame[6..12].try_into().expect("6 bytes"),
    );
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn ipv4(frame: &[u8], mtu: usize, out: &mut Vec<u8>) -> Oversize {
    let ip = &frame[ETH..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Oversize::Drop;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if hl < 20 || total < hl || total > ip.len() || mtu < hl + 8 {
        return Oversize::Drop;
    }
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let df = flags_frag & 0x4000 != 0;
    if !df {
        return fragment_ipv4(frame, hl, total, mtu, out);
    }
    let first_fragment = flags_frag & 0x1fff == 0;
    let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
    let is_icmp_error = ip[9] == 1 && ip.get(hl).is_some_and(|t| ![0, 8].contains(t));
    if !first_fragment || is_icmp_error || src == [0; 4] || src[0] >= 224 {
        return Oversize::Drop;
    }
    let quoted = &ip[..total.min(ICMPV4_MAX - 28)];
    reply_eth(frame, ETHERTYPE_IPV4, out);
    let len = 28 + quoted.len();
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&ip[16..20]);
    h[16..20].copy_from_slice(&src);
    let c = checksum(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    let icmp_at = out.len();
    // Type 3 code 4: fragmentation needed and DF set; the next-hop MTU in the low 16 bits.
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&(mtu as u16).to_be_bytes());
    out.extend_from_slice(quoted);
    let c = checksum(0, &out[icmp_at..]);
    out[icmp_at + 2..icmp_at + 4].copy_from_slice(&c.to_be_bytes());
    Oversize::Reply
}

fn fragment_ipv4(frame: &[u8], hl: usize, total: usize, mtu: usize, out: &mut Vec<u8>) -> Oversize {
    let ip = &frame[ETH..ETH + total];
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let base_offset = usize::from(flags_frag & 0x1fff) * 8;
    let more_after = flags_frag & 0x2000 != 0;
    let per = (mtu - hl) & !7;
    let payload = &ip[hl..];
    let mut ranges = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + per).min(payload.len());
        let start = out.len();
        out.extend_from_slice(&frame[..ETH]);
        let h_at = out.len();
        out.extend_from_slice(&ip[..hl]);
        out.extend_from_slice(&payload[off..end]);
        let h = &mut out[h_at..h_at + hl];
        h[2..4].copy_from_slice(&((hl + end - off) as u16).to_be_bytes());
        let more = end < payload.len() || more_after;
        let field = ((base_offset + off) / 8) as u16 | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&field.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(0, h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        ranges.push(start..out.len());
        off = end;
    }
    Oversize::Fragments(ranges)
}

fn ipv6(frame: &[u8], mtu: usize, out: &mut Vec<u8>) -> Oversize {
    let ip = &frame[ETH..];
    if ip.len() < 40 || ip[0] >> 4 != 6 || mtu < 1280 {
        return Oversize::Drop;
    }
    let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
    // Never answer an ICMPv6 error, nor a source that cannot receive one.
    let is_icmp_error = ip[6] == 58 && ip.get(40).is_some_and(|t| *t < 128);
    if is_icmp_error || src == [0; 16] || src[0] == 0xff || dst[0] == 0xff {
        return Oversize::Drop;
    }
    let quoted = &ip[..ip.len().min(ICMPV6_MAX - 48)];
    let icmp_len = 8 + quoted.len();
    reply_eth(frame, ETHERTYPE_IPV6, out);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    let icmp_at = out.len();
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&(mtu as u32).to_be_bytes());
    out.extend_from_slice(quoted);
    // Pseudo-header: source and destination (just written), length, next header.
    let pseudo = checksum(0, &out[icmp_at - 32..icmp_at]);
    let c = checksum(u64::from(!pseudo) + icmp_len as u64 + 58, &out[icmp_at..]);
    out[icmp_at + 2..icmp_at + 4].copy_from_slice(&c.to_be_bytes());
    Oversize::Reply
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];

    fn v4_frame(len: usize, df: bool, proto: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&B);
        f.extend_from_slice(&A);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        h[4..6].copy_from_slice(&[0x12, 0x34]);
        h[6] = if df { 0x40 } else { 0 };
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(0, &h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend((0..len - 20).map(|i| i as u8));
        f
    }

    #[test]
    fn df_ipv4_gets_fragmentation_needed_from_its_destination() {
        let frame = v4_frame(1500, true, 17);
        let mut out = Vec::new();
        assert_eq!(handle(&frame, 1422, &mut out), Oversize::Reply);
        assert_eq!(&out[0..6], &A, "back to the sender");
        assert_eq!(&out[6..12], &B);
        let ip = &out[ETH..];
        assert_eq!(checksum(0, &ip[..20]), 0, "valid IP header checksum");
        assert_eq!(&ip[12..16], &[10, 0, 0, 2]);
        assert_eq!(&ip[16..20], &[10, 0, 0, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert!(ip.len() <= ICMPV4_MAX);
        let icmp = &ip[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1422);
        assert_eq!(checksum(0, icmp), 0, "valid ICMP checksum");
        assert_eq!(&icmp[8..28], &frame[ETH..ETH + 20], "quotes the header");
    }

    #[test]
    fn ipv4_without_df_is_fragmented_on_8_byte_boundaries() {
        let frame = v4_frame(3000, false, 17);
        let mut out = Vec::new();
        let Oversize::Fragments(ranges) = handle(&frame, 1422, &mut out) else {
            panic!("not fragmented");
        };
        assert_eq!(ranges.len(), 3);
        let mut payload = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let ip = &out[r.start + ETH..r.end];
            assert!(ip.len() <= 1422);
            assert_eq!(checksum(0, &ip[..20]), 0);
            assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
            let field = u16::from_be_bytes([ip[6], ip[7]]);
            assert_eq!(usize::from(field & 0x1fff) * 8, payload.len());
            assert_eq!(field & 0x2000 != 0, i < 2, "MF on all but the last");
            payload.extend_from_slice(&ip[20..]);
        }
        assert_eq!(payload, &frame[ETH + 20..]);
    }

    #[test]
    fn ipv6_gets_packet_too_big_with_a_valid_checksum() {
        let mut f = Vec::new();
        f.extend_from_slice(&B);
        f.extend_from_slice(&A);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let (src, dst) = (
            [0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1],
            [0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 2],
        );
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&1460u16.to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend(std::iter::repeat_n(0x55, 1460));
        let mut out = Vec::new();
        assert_eq!(handle(&f, 1422, &mut out), Oversize::Reply);
        let ip = &out[ETH..];
        assert!(ip.len() <= ICMPV6_MAX);
        assert_eq!(&ip[8..24], &dst);
        assert_eq!(&ip[24..40], &src);
        let icmp = &ip[40..];
        assert_eq!((icmp[0], icmp[1]), (2, 0));
        assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1422);
        let pseudo = !checksum(0, &ip[8..40]);
        assert_eq!(
            checksum(u64::from(pseudo) + icmp.len() as u64 + 58, icmp),
            0
        );
    }

    #[test]
    fn errors_non_ip_and_truncated_frames_are_not_answered() {
        let mut out = Vec::new();
        // An ICMP error (type 3) with DF: never answered with another error.
        let mut err = v4_frame(1500, true, 1);
        err[ETH + 20] = 3;
        assert_eq!(handle(&err, 1422, &mut out), Oversize::Drop);
        let mut arp = v4_frame(1500, true, 17);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(handle(&arp, 1422, &mut out), Oversize::Drop);
        let mut lying = v4_frame(1500, true, 17);
        lying[ETH + 2..ETH + 4].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(handle(&lying, 1422, &mut out), Oversize::Drop);
        assert_eq!(handle(&[0u8; 10], 1422, &mut out), Oversize::Drop);
    }
}
