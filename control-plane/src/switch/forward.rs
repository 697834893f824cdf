//! The forwarding decision. Given where a frame came from, it says whether to hand it to the
//! local bridge and which neighbours to send it to, with which header. Sends go through a
//! callback so the hot path allocates nothing.
//!
//! - From the local bridge: a known destination MAC goes to its peer along the unicast route;
//!   broadcast, multicast and unknown destinations are flooded along *our* broadcast tree.
//! - From a peer: the source MAC is learned behind the frame's origin — only when the frame
//!   came the way the origin's frames come: from the origin itself, or from our parent in the
//!   origin's broadcast tree. The origin field is the sender's word; a member relaying (or
//!   inventing) a frame with another peer's origin cannot teach us where a MAC lives. A
//!   flooded frame is
//!   delivered locally and passed on to our children in the *origin's* tree; a unicast frame for
//!   us is delivered; a unicast frame for someone else is relayed towards it and not delivered
//!   (a relay does not put other hosts' traffic on its own bridge).

use std::collections::HashMap;

use super::{
    Mac, ShortId,
    fdb::Fdb,
    is_multicast,
    wire::{Header, INITIAL_HOPS},
};

/// This node's view of the mesh, for the data path: rebuilt by meshd on every topology change.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub me: Option<ShortId>,
    /// Next hop towards every reachable peer.
    pub next_hop: HashMap<ShortId, ShortId>,
    /// Our children in each origin's broadcast tree.
    pub children: HashMap<ShortId, Vec<ShortId>>,
    /// Our parent in each origin's broadcast tree (none for our own): the neighbour its
    /// floods arrive from.
    pub parent: HashMap<ShortId, ShortId>,
}

/// Why a frame from a peer was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Our own frame came back (cannot happen on a consistent tree; counted if it does).
    OwnOrigin,
    HopLimit,
    NoRoute,
    Malformed,
}

fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    let dst: Mac = frame.get(0..6)?.try_into().ok()?;
    let src: Mac = frame.get(6..12)?.try_into().ok()?;
    Some((dst, src))
}

/// A frame from the local bridge. Returns false if it was too short to be Ethernet.
pub fn from_local(
    table: &Table,
    fdb: &Fdb,
    frame: &[u8],
    now_ms: u64,
    mut send: impl FnMut(ShortId, Header),
) -> bool {
    let (Some(me), Some((dst, _))) = (table.me, macs(frame)) else {
        return false;
    };
    let target = if is_multicast(&dst) {
        None
    } else {
        fdb.lookup(&dst, now_ms)
    };
    match target.and_then(|p| table.next_hop.get(&p).map(|hop| (p, *hop))) {
        Some((peer, hop)) => send(
            hop,
            Header {
                origin: me,
                destination: peer,
                hops: INITIAL_HOPS,
                heartbeat: false,
            },
        ),
        None => {
            for c in table.children.get(&me).map(Vec::as_slice).unwrap_or(&[]) {
                send(
                    *c,
                    Header {
                        origin: me,
                        destination: ShortId::FLOOD,
                        hops: INITIAL_HOPS,
                        heartbeat: false,
                    },
                );
            }
        }
    }
    true
}

/// A frame from neighbour `from`. Returns whether to deliver it to the local bridge, or why it
/// was dropped.
pub fn from_peer(
    table: &Table,
    fdb: &mut Fdb,
    from: ShortId,
    header: Header,
    frame: &[u8],
    now_ms: u64,
    mut send: impl FnMut(ShortId, Header),
) -> Result<bool, Dropped> {
    let me = table.me.ok_or(Dropped::NoRoute)?;
    if header.origin == me {
        return Err(Dropped::OwnOrigin);
    }
    let (_, src) = macs(frame).ok_or(Dropped::Malformed)?;
    if from == header.origin || table.parent.get(&header.origin) == Some(&from) {
        fdb.learn(src, header.origin, now_ms);
    }
    let onward = Header {
        hops: header.hops.saturating_sub(1),
        ..header
    };
    if header.destination == ShortId::FLOOD {
        if onward.hops > 0 {
            for c in table
                .children
                .get(&header.origin)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                send(*c, onward);
            }
        }
        return Ok(true);
    }
    if header.destination == me {
        return Ok(true);
    }
    if onward.hops == 0 {
        return Err(Dropped::HopLimit);
    }
    let hop = table
        .next_hop
        .get(&header.destination)
        .ok_or(Dropped::NoRoute)?;
    send(*hop, onward);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u32) -> ShortId {
        ShortId::from_wire(n)
    }

    /// Line 1 - 2 - 3, seen from 2.
    fn middle() -> Table {
        Table {
            me: Some(s(2)),
            next_hop: HashMap::from([(s(1), s(1)), (s(3), s(3))]),
            children: HashMap::from([
                (s(1), vec![s(3)]),
                (s(3), vec![s(1)]),
                (s(2), vec![s(1), s(3)]),
            ]),
            parent: HashMap::from([(s(1), s(1)), (s(3), s(3))]),
        }
    }

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00, 0, 0]);
        f
    }

    const BCAST: Mac = [0xff; 6];
    const M1: Mac = [2, 0, 0, 0, 0, 1];
    const M3: Mac = [2, 0, 0, 0, 0, 3];

    fn collect<F: FnOnce(&mut dyn FnMut(ShortId, Header))>(f: F) -> Vec<(ShortId, Header)> {
        let mut out = Vec::new();
        f(&mut |p, h| out.push((p, h)));
        out
    }

    #[test]
    fn a_relay_passes_floods_on_along_the_origins_tree_and_delivers_them() {
        let t = middle();
        let mut fdb = Fdb::new(100, 60_000);
        let h = Header {
            origin: s(1),
            destination: ShortId::FLOOD,
            hops: 32,
            heartbeat: false,
        };
        let mut deliver = false;
        let sent = collect(|send| {
            deliver = from_peer(&t, &mut fdb, s(1), h, &frame(BCAST, M1), 0, send).unwrap();
        });
        assert!(deliver);
        assert_eq!(sent, vec![(s(3), Header { hops: 31, ..h })]);
        assert_eq!(
            fdb.lookup(&M1, 0),
            Some(s(1)),
            "source learned behind the origin"
        );
    }

    #[test]
    fn only_frames_that_came_the_origins_way_teach_where_its_macs_live() {
        let t = middle();
        let mut fdb = Fdb::new(100, 60_000);
        // 3 claims a frame of 1's (a member lying about the origin, or relaying the wrong
        // way): delivered, passed on along 1's tree, but M1 is not learned behind 1.
        for destination in [ShortId::FLOOD, s(2)] {
            let h = Header {
                origin: s(1),
                destination,
                hops: 32,
                heartbeat: false,
            };
            let deliver = from_peer(&t, &mut fdb, s(3), h, &frame(BCAST, M1), 0, |_, _| {});
            assert_eq!(deliver, Ok(true));
            assert_eq!(fdb.lookup(&M1, 0), None, "learned from the wrong neighbour");
        }
        // The same from 1 itself teaches it.
        let h = Header {
            origin: s(1),
            destination: s(2),
            hops: 32,
            heartbeat: false,
        };
        from_peer(&t, &mut fdb, s(1), h, &frame(M3, M1), 0, |_, _| {}).unwrap();
        assert_eq!(fdb.lookup(&M1, 0), Some(s(1)));
    }

    #[test]
    fn a_relay_forwards_unicast_for_others_without_delivering() {
        let t = middle();
        let mut fdb = Fdb::new(100, 60_000);
        let h = Header {
            origin: s(1),
            destination: s(3),
            hops: 32,
            heartbeat: false,
        };
        let mut deliver = true;
        let sent = collect(|send| {
            deliver = from_peer(&t, &mut fdb, s(1), h, &frame(M3, M1), 0, send).unwrap();
        });
        assert!(!deliver, "not for this host's bridge");
        assert_eq!(sent, vec![(s(3), Header { hops: 31, ..h })]);
    }

    #[test]
    fn local_frames_go_to_the_learned_peer_or_are_flooded() {
        let t = middle();
        let mut fdb = Fdb::new(100, 60_000);
        let sent = collect(|send| {
            from_local(&t, &fdb, &frame(M3, [2, 0, 0, 0, 0, 2]), 0, send);
        });
        assert_eq!(
            sent.len(),
            2,
            "unknown destination: flooded to both children"
        );
        assert!(
            sent.iter()
                .all(|(_, h)| h.destination == ShortId::FLOOD && h.origin == s(2))
        );
        fdb.learn(M3, s(3), 0);
        let sent = collect(|send| {
            from_local(&t, &fdb, &frame(M3, [2, 0, 0, 0, 0, 2]), 0, send);
        });
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, s(3));
        assert_eq!(sent[0].1.destination, s(3));
    }

    #[test]
    fn loops_and_exhausted_hop_limits_are_dropped() {
        let t = middle();
        let mut fdb = Fdb::new(100, 60_000);
        let own = Header {
            origin: s(2),
            destination: ShortId::FLOOD,
            hops: 5,
            heartbeat: false,
        };
        assert_eq!(
            from_peer(
                &t,
                &mut fdb,
                s(1),
                own,
                &frame(BCAST, M1),
                0,
                |_, _| panic!("sent")
            ),
            Err(Dropped::OwnOrigin)
        );
        let tired = Header {
            origin: s(1),
            destination: s(3),
            hops: 1,
            heartbeat: false,
        };
        assert_eq!(
            from_peer(&t, &mut fdb, s(1), tired, &frame(M3, M1), 0, |_, _| panic!(
                "sent"
            )),
            Err(Dropped::HopLimit)
        );
        let lost = Header {
            origin: s(1),
            destination: s(9),
            hops: 9,
            heartbeat: false,
        };
        assert_eq!(
            from_peer(&t, &mut fdb, s(1), lost, &frame(M3, M1), 0, |_, _| panic!(
                "sent"
            )),
            Err(Dropped::NoRoute)
        );
    }
}
