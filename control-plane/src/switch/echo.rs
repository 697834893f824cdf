//! Data-path echoes (`meshctl ping`): a request travels to a peer the way data does — the same
//! UDP addresses and ports, NAT mappings, next hops and seals — is answered there, and the
//! answer travels back the same way. Each relay on the way writes its short id into the
//! message, so the pinger learns the path actually taken in both directions.
//!
//! On the wire an echo is a heartbeat-flagged frame whose hop limit is above 1 (a link
//! heartbeat always carries 1 and is never relayed; an echo is relayed only while its hop limit
//! stays above 1, so the two never mix). Its inner part:
//!
//! ```text
//! 0       kind: 1 request, 2 reply
//! 1       relays the request passed (n)
//! 2       relays the reply passed (m)
//! 3       reserved (0)
//! 4..8    session: the pinger's number for this `meshctl ping`
//! 8..12   sequence number
//! 12..20  the pinger's clock (µs) when it sent the request
//! 20..    n short ids (u32 each), then m short ids
//! ```
//!
//! Relays and the answering peer handle echoes in meshd (a kernel datapath hands every
//! heartbeat-flagged frame up): a ping measures the network path and meshd at the ends, not the
//! kernel's own forwarding, which its counters show.

use super::{
    ShortId,
    forward::Table,
    wire::{Header, INITIAL_HOPS},
};

const FIXED_LEN: usize = 20;
/// Relays recorded per direction: as many as the hop limit allows.
const MAX_PATH: usize = INITIAL_HOPS as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Reply,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub kind: Kind,
    pub session: u32,
    pub seq: u32,
    pub sent_us: u64,
    /// Relays the request passed, in order.
    pub there: Vec<ShortId>,
    /// Relays the reply passed, in order.
    pub back: Vec<ShortId>,
}

impl Echo {
    pub fn request(session: u32, seq: u32, sent_us: u64) -> Echo {
        Echo {
            kind: Kind::Request,
            session,
            seq,
            sent_us,
            there: Vec::new(),
            back: Vec::new(),
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(match self.kind {
            Kind::Request => 1,
            Kind::Reply => 2,
        });
        out.push(self.there.len() as u8);
        out.push(self.back.len() as u8);
        out.push(0);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        for id in self.there.iter().chain(&self.back) {
            out.extend_from_slice(&id.get().to_be_bytes());
        }
    }

    /// Reads an echo; `None` for anything malformed (it is then dropped and counted).
    pub fn parse(b: &[u8]) -> Option<Echo> {
        let fixed = b.get(..FIXED_LEN)?;
        let kind = match fixed[0] {
            1 => Kind::Request,
            2 => Kind::Reply,
            _ => return None,
        };
        let (n, m) = (usize::from(fixed[1]), usize::from(fixed[2]));
        if fixed[3] != 0 || n > MAX_PATH || m > MAX_PATH || b.len() != FIXED_LEN + 4 * (n + m) {
            return None;
        }
        let ids: Vec<ShortId> = b[FIXED_LEN..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            // A short id has 24 bits; the flood id is nobody's.
            .map(|v| {
                (v == ShortId::from_wire(v).get() && v != ShortId::FLOOD.get())
                    .then(|| ShortId::from_wire(v))
            })
            .collect::<Option<_>>()?;
        Some(Echo {
            kind,
            session: u32::from_be_bytes(fixed[4..8].try_into().expect("4 bytes")),
            seq: u32::from_be_bytes(fixed[8..12].try_into().expect("4 bytes")),
            sent_us: u64::from_be_bytes(fixed[12..20].try_into().expect("8 bytes")),
            there: ids[..n].to_vec(),
            back: ids[n..].to_vec(),
        })
    }
}

/// The header of an echo from us to `destination`.
pub fn header(me: ShortId, destination: ShortId) -> Header {
    Header {
        origin: me,
        destination,
        hops: INITIAL_HOPS,
        heartbeat: true,
    }
}

/// What to do with an echo that arrived under `header`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `echo` under the header to the neighbour.
    Send(ShortId, Header, Echo),
    /// A reply to one of our requests.
    Arrived(Echo),
    Drop(Dropped),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Our own echo came back to us as a relay, or its hop limit ran out.
    Loop,
    NoRoute,
}

/// Answers a request for us, takes in a reply for us, or relays an echo for another peer one
/// hop on (recording us in its path).
pub fn on_echo(table: &Table, header: Header, mut echo: Echo) -> Action {
    let Some(me) = table.me else {
        return Action::Drop(Dropped::NoRoute);
    };
    let towards = |dest: ShortId, h: Header, e: Echo| match table.next_hop.get(&dest) {
        Some(hop) => Action::Send(*hop, h, e),
        None => Action::Drop(Dropped::NoRoute),
    };
    if header.destination == me {
        return match echo.kind {
            Kind::Reply => Action::Arrived(echo),
            Kind::Request => {
                echo.kind = Kind::Reply;
                towards(header.origin, self::header(me, header.origin), echo)
            }
        };
    }
    let hops = header.hops.saturating_sub(1);
    if header.origin == me || hops <= 1 {
        return Action::Drop(Dropped::Loop);
    }
    let path = match echo.kind {
        Kind::Request => &mut echo.there,
        Kind::Reply => &mut echo.back,
    };
    if path.len() < MAX_PATH {
        path.push(me);
    }
    towards(header.destination, Header { hops, ..header }, echo)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn s(n: u32) -> ShortId {
        ShortId::from_wire(n)
    }

    /// Line 1 - 2 - 3, seen from `me`.
    fn line(me: u32) -> Table {
        let next_hop = match me {
            1 => HashMap::from([(s(2), s(2)), (s(3), s(2))]),
            2 => HashMap::from([(s(1), s(1)), (s(3), s(3))]),
            _ => HashMap::from([(s(2), s(2)), (s(1), s(2))]),
        };
        Table {
            me: Some(s(me)),
            next_hop,
            ..Table::default()
        }
    }

    fn bytes(e: &Echo) -> Vec<u8> {
        let mut out = Vec::new();
        e.write(&mut out);
        out
    }

    #[test]
    fn an_echo_reads_back_as_written() {
        let mut e = Echo::request(7, 3, 123_456);
        e.there = vec![s(5), s(6)];
        e.back = vec![s(9)];
        let b = bytes(&e);
        assert_eq!(b.len(), 20 + 12);
        assert_eq!(Echo::parse(&b), Some(e));
    }

    #[test]
    fn malformed_echoes_are_refused() {
        let good = bytes(&Echo::request(1, 1, 1));
        assert!(Echo::parse(&good[..19]).is_none(), "short");
        let mut kind = good.clone();
        kind[0] = 3;
        assert!(Echo::parse(&kind).is_none(), "unknown kind");
        let mut count = good.clone();
        count[1] = 1;
        assert!(
            Echo::parse(&count).is_none(),
            "a path longer than the bytes"
        );
        let mut long = good.clone();
        long[1] = 200;
        long.resize(20 + 800, 0);
        assert!(
            Echo::parse(&long).is_none(),
            "a path longer than the hop limit"
        );
        let mut wide = bytes(&Echo {
            there: vec![s(5)],
            ..Echo::request(1, 1, 1)
        });
        wide[20] = 1;
        assert!(
            Echo::parse(&wide).is_none(),
            "a relay id wider than 24 bits"
        );
        let mut reserved = good.clone();
        reserved[3] = 1;
        assert!(Echo::parse(&reserved).is_none(), "reserved bits set");
        let mut trailing = good;
        trailing.push(0);
        assert!(Echo::parse(&trailing).is_none(), "trailing bytes");
    }

    #[test]
    fn a_request_goes_through_a_relay_is_answered_and_the_reply_records_its_way_back() {
        // 1 pings 3 through 2.
        let req = Echo::request(7, 0, 42);
        let h1 = header(s(1), s(3));
        let Action::Send(to, h2, at_relay) = on_echo(&line(2), h1, req) else {
            panic!("the relay passes it on")
        };
        assert_eq!((to, h2.hops), (s(3), h1.hops - 1));
        assert_eq!(at_relay.there, vec![s(2)]);
        let Action::Send(to, h3, reply) = on_echo(&line(3), h2, at_relay) else {
            panic!("the destination answers")
        };
        assert_eq!((to, h3), (s(2), header(s(3), s(1))));
        assert_eq!(reply.kind, Kind::Reply);
        let Action::Send(to, h4, back) = on_echo(&line(2), h3, reply) else {
            panic!("the relay passes the reply on")
        };
        assert_eq!(to, s(1));
        assert_eq!(
            on_echo(&line(1), h4, back.clone()),
            Action::Arrived(back.clone())
        );
        assert_eq!((back.there, back.back), (vec![s(2)], vec![s(2)]));
        assert_eq!((back.session, back.seq, back.sent_us), (7, 0, 42));
    }

    #[test]
    fn echoes_that_loop_run_out_of_hops_or_have_no_route_are_dropped() {
        let own = header(s(2), s(3));
        assert_eq!(
            on_echo(&line(2), own, Echo::request(1, 1, 1)),
            Action::Drop(Dropped::Loop)
        );
        let tired = Header {
            hops: 2,
            ..header(s(1), s(3))
        };
        assert_eq!(
            on_echo(&line(2), tired, Echo::request(1, 1, 1)),
            Action::Drop(Dropped::Loop),
            "relayed with a hop limit of 1 it would read as a link heartbeat"
        );
        assert_eq!(
            on_echo(&line(2), header(s(1), s(9)), Echo::request(1, 1, 1)),
            Action::Drop(Dropped::NoRoute)
        );
    }
}
