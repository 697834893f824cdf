//! Where a datagram to an underlay address leaves: the next hop (the address itself on the same
//! link, else the gateway of the best route) and its MAC from the ARP cache. Read from
//! /proc/net/route and /proc/net/arp, which follow meshd's network namespace; parsing is pure
//! and tested. The kernel datapath needs this because it writes whole Ethernet frames.

use std::net::Ipv4Addr;

/// One IPv4 route: destination, mask, gateway (unspecified: on-link), interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub metric: u32,
}

/// /proc/net/route prints addresses as the hex of the in-memory (network order) u32.
fn proc_addr(hex: &str) -> Option<Ipv4Addr> {
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(v.to_ne_bytes()))
}

pub fn parse_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Route {
                iface: (*f.first()?).to_owned(),
                dest: proc_addr(f.get(1)?)?,
                gateway: proc_addr(f.get(2)?)?,
                metric: f.get(6)?.parse().ok()?,
                mask: proc_addr(f.get(7)?)?,
            })
        })
        .collect()
}

/// Complete ARP entries: (address, MAC, interface).
pub fn parse_arp(text: &str) -> Vec<(Ipv4Addr, [u8; 6], String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip: Ipv4Addr = f.first()?.parse().ok()?;
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            // ATF_COM: the entry is resolved.
            if flags & 0x2 == 0 {
                return None;
            }
            let mac = parse_mac(f.get(3)?)?;
            Some((ip, mac, (*f.get(5)?).to_owned()))
        })
        .collect()
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The underlay next hop for `dst` through `iface`: longest prefix, then lowest metric.
pub fn next_hop(routes: &[Route], iface: &str, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    let dst_bits = u32::from(dst);
    routes
        .iter()
        .filter(|r| r.iface == iface && dst_bits & u32::from(r.mask) == u32::from(r.dest))
        .max_by_key(|r| (u32::from(r.mask).count_ones(), std::cmp::Reverse(r.metric)))
        .map(|r| {
            if r.gateway.is_unspecified() {
                dst
            } else {
                r.gateway
            }
        })
}

/// Resolves the next-hop MAC of each address in `dsts` (None where the route or the ARP entry
/// is missing), reading the kernel's tables once.
pub fn resolve(iface: &str, dsts: &[Ipv4Addr]) -> Vec<Option<[u8; 6]>> {
    let routes = parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default());
    let arp = parse_arp(&std::fs::read_to_string("/proc/net/arp").unwrap_or_default());
    dsts.iter()
        .map(|d| {
            let hop = next_hop(&routes, iface, *d)?;
            arp.iter()
                .find(|(ip, _, dev)| *ip == hop && dev == iface)
                .map(|(_, mac, _)| *mac)
        })
        .collect()
}

/// The MAC of `iface`.
pub fn interface_mac(iface: &str) -> Option<[u8; 6]> {
    parse_mac(&std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
u0\t00000000\t010013C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
u0\t000012C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
mesh\t0000280A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
198.18.0.2       0x1         0x2         aa:bb:cc:dd:ee:02     *        u0
198.19.1.1       0x1         0x2         aa:bb:cc:dd:ee:01     *        u0
198.18.0.9       0x1         0x0         00:00:00:00:00:00     *        u0
";

    #[test]
    fn on_link_addresses_are_their_own_next_hop_and_others_go_through_the_gateway() {
        let routes = parse_routes(ROUTES);
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[1].dest, Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(routes[1].mask, Ipv4Addr::new(255, 255, 255, 0));
        let on_link = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(next_hop(&routes, "u0", on_link), Some(on_link));
        assert_eq!(
            next_hop(&routes, "u0", Ipv4Addr::new(203, 0, 113, 5)),
            Some(Ipv4Addr::new(198, 19, 0, 1))
        );
        assert_eq!(next_hop(&routes, "eth9", on_link), None);
    }

    #[test]
    fn only_complete_arp_entries_count() {
        let arp = parse_arp(ARP);
        assert_eq!(arp.len(), 2);
        assert_eq!(arp[0].1, [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x02]);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    }
}
