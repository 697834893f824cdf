//! Addresses in named networks from mesh's allocator (`mesh_ipam`, docs/ipam.md), as pure
//! logic: a network's range of offsets and the addresses they stand for, a ring's view on the
//! wire (`PeerEntry.rings`) and on disk, and who gives space to a peer that asks for it. The
//! agent (`agent::ipam`) drives it.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use mesh_ipam::{Member, Node, Peer, Ring, Token};
use mesh_proto::v1::{NetworkRing, RingMember, RingToken};

/// A network's addresses as the allocator's offsets `0..size`: the subnet less its network
/// and broadcast addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    subnet: Ipv4Net,
}

impl Range {
    pub fn of(subnet: Ipv4Net) -> Range {
        Range { subnet }
    }

    /// How many addresses (subnets are /8 to /30: at least two).
    pub fn size(&self) -> u32 {
        let hosts = 1u64 << (32 - u32::from(self.subnet.prefix_len()));
        (hosts - 2) as u32
    }

    pub fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1 + offset)
    }

    /// The address with the subnet's prefix, as an interface gets it.
    pub fn cidr(&self, offset: u32) -> IpNet {
        IpNet::V4(
            Ipv4Net::new(self.addr(offset), self.subnet.prefix_len())
                .expect("a prefix from a valid subnet"),
        )
    }

    /// The offset of `a`, when it is one of the range's addresses.
    pub fn offset(&self, a: Ipv4Addr) -> Option<u32> {
        let o = u32::from(a).checked_sub(u32::from(self.subnet.network()) + 1)?;
        (o < self.size()).then_some(o)
    }
}

/// A ring view as it travels in gossip.
pub fn to_proto(network: u64, ring: &Ring) -> NetworkRing {
    NetworkRing {
        network,
        size: ring.size,
        tokens: ring
            .tokens
            .iter()
            .map(|(start, t)| RingToken {
                start: *start,
                owner: t.owner.0,
                version: t.version,
                from: t.from.0,
                generation: t.generation,
            })
            .collect(),
        members: ring
            .members
            .iter()
            .map(|(p, m)| RingMember {
                peer: p.0,
                heir: m.heir.map_or(0, |h| h.0),
                dead: m.dead,
                free: m.free,
                free_version: m.free_version,
                acked: m.acked.iter().map(|a| a.0).collect(),
            })
            .collect(),
    }
}

/// A ring view from gossip, when it fits a network of `size` addresses: a token must start
/// inside the range, and the first at 0 (a view that does not is dropped whole).
pub fn from_proto(r: &NetworkRing, size: u32) -> Option<Ring> {
    if r.size != size || r.tokens.iter().any(|t| t.start >= size) {
        return None;
    }
    if !r.tokens.is_empty() && !r.tokens.iter().any(|t| t.start == 0) {
        return None;
    }
    Some(Ring {
        size,
        tokens: r
            .tokens
            .iter()
            .map(|t| {
                (
                    t.start,
                    Token {
                        owner: Peer(t.owner),
                        version: t.version,
                        from: Peer(t.from),
                        generation: t.generation,
                    },
                )
            })
            .collect(),
        members: r
            .members
            .iter()
            .map(|m| {
                (
                    Peer(m.peer),
                    Member {
                        heir: (m.heir != 0).then_some(Peer(m.heir)),
                        dead: m.dead,
                        free: m.free,
                        free_version: m.free_version,
                        acked: m.acked.iter().map(|a| Peer(*a)).collect(),
                    },
                )
            })
            .collect(),
    })
}

/// Whether `peer` owns any of the range in this view.
pub fn owns_some(ring: &Ring, peer: Peer) -> bool {
    ring.tokens.values().any(|t| t.owner == peer) && !ring.is_dead(peer)
}

/// Whether we (`node`) are the one to give `asker` space now: of the members the view says
/// have free addresses and that `reachable` says can act, we have the most (ties: the lower
/// peer id). One asker then gets one donation, not one from every owner.
pub fn we_give(node: &Node, asker: Peer, reachable: impl Fn(Peer) -> bool) -> bool {
    if asker == node.me || owns_some(&node.ring, asker) || node.free_count() == 0 {
        return false;
    }
    let ours = node.free_count();
    let best = node
        .ring
        .members
        .iter()
        .filter(|(p, m)| **p != node.me && **p != asker && !m.dead && m.free > 0)
        .filter(|(p, _)| reachable(**p))
        .map(|(p, m)| (m.free, std::cmp::Reverse(p.0)))
        .max();
    best.is_none_or(|b| (ours, std::cmp::Reverse(node.me.0)) > b)
}

/// Why no address could be had in a network, for the one who asked.
pub fn why_none(ring: &Ring, name: &str, size: u32) -> String {
    // Full when every living owner has said it has nothing free.
    let full = ring
        .tokens
        .values()
        .filter(|t| !ring.is_dead(t.owner))
        .all(|t| {
            ring.members
                .get(&t.owner)
                .is_some_and(|m| m.free_version > 0 && m.free == 0)
        });
    if full && !ring.tokens.is_empty() {
        format!(
            "network {name} has no free address: all {size} of its range are in use \
             (free some, or create a network with a larger subnet)"
        )
    } else {
        format!(
            "no host that has free addresses in network {name} gave this one any in time: \
             are they reachable? (`meshctl ipam`)"
        )
    }
}

/// Parses `--ipam-reclaim-after`: a number with a unit (`90s`, `30m`, `24h`, `7d`), or
/// `never`.
pub fn parse_reclaim_after(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s == "never" {
        return Ok(None);
    }
    let bad = || format!("{s:?}: give a time like 90s, 30m, 24h or 7d, or never");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(format!(
            "{s:?}: a peer is out of reach for a while before it is declared gone (or never)"
        ));
    }
    Ok(Some(std::time::Duration::from_secs(n.saturating_mul(secs))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_the_subnets_addresses_less_network_and_broadcast() {
        let r = Range::of("10.40.0.0/30".parse().unwrap());
        assert_eq!(r.size(), 2);
        assert_eq!(r.addr(0), Ipv4Addr::new(10, 40, 0, 1));
        assert_eq!(r.addr(1), Ipv4Addr::new(10, 40, 0, 2));
        assert_eq!(r.cidr(1).to_string(), "10.40.0.2/30");
        assert_eq!(r.offset(Ipv4Addr::new(10, 40, 0, 2)), Some(1));
        for outside in [[10, 40, 0, 0], [10, 40, 0, 3], [10, 41, 0, 1]] {
            assert_eq!(r.offset(Ipv4Addr::from(outside)), None, "{outside:?}");
        }
        assert_eq!(
            Range::of("10.0.0.0/8".parse().unwrap()).size(),
            (1 << 24) - 2
        );
    }

    #[test]
    fn a_ring_crosses_the_wire_unchanged_and_a_view_that_does_not_fit_is_dropped() {
        let mut a = Node::create(Peer(1), 100);
        a.allocate().unwrap();
        assert!(a.donate(Peer(2)));
        a.tombstone(Peer(9));
        let wire = to_proto(7, &a.ring);
        assert_eq!(from_proto(&wire, 100), Some(a.ring.clone()));
        assert_eq!(from_proto(&wire, 99), None, "another size");
        let mut outside = wire.clone();
        outside.tokens[0].start = 100;
        assert_eq!(from_proto(&outside, 100), None);
        let mut headless = wire;
        headless.tokens.retain(|t| t.start != 0);
        assert_eq!(from_proto(&headless, 100), None);
    }

    #[test]
    fn one_owner_gives_to_an_asker_the_one_with_most_free_space() {
        let mut a = Node::create(Peer(1), 100);
        assert!(a.donate(Peer(2)));
        let mut b = Node::join(Peer(2), a.ring.clone());
        b.merge(&a.ring);
        // b reports its free count; a learns it.
        b.allocate().unwrap();
        b.release(0);
        a.merge(&b.ring);
        b.merge(&a.ring);
        let everyone = |_: Peer| true;
        // a has 50 free, b 50: the tie goes to the lower id.
        assert!(we_give(&a, Peer(3), everyone));
        assert!(!we_give(&b, Peer(3), everyone));
        // Unreachable members do not count.
        assert!(we_give(&b, Peer(3), |p| p != Peer(1)));
        // Nobody gives to someone who owns space, or to itself.
        assert!(!we_give(&a, Peer(2), everyone));
        assert!(!we_give(&a, Peer(1), everyone));
    }

    #[test]
    fn no_address_says_whether_the_range_is_full_or_its_owners_are_away() {
        let mut a = Node::create(Peer(1), 2);
        assert!(why_none(&a.ring, "web", 2).contains("gave this one any"));
        a.allocate().unwrap();
        a.allocate().unwrap();
        assert!(why_none(&a.ring, "web", 2).contains("no free address: all 2"));
    }

    #[test]
    fn reclaim_after_takes_a_time_with_its_unit_or_never() {
        use std::time::Duration;
        assert_eq!(
            parse_reclaim_after("90s"),
            Ok(Some(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_reclaim_after("24h"),
            Ok(Some(Duration::from_secs(86400)))
        );
        assert_eq!(
            parse_reclaim_after("7d"),
            Ok(Some(Duration::from_secs(7 * 86400)))
        );
        assert_eq!(parse_reclaim_after("never"), Ok(None));
        for bad in ["", "h", "24", "24x", "0s", "-1h", "1.5h"] {
            assert!(parse_reclaim_after(bad).is_err(), "{bad}");
        }
    }
}
