//! The data path's view of its direct neighbours: where to send, whether their heartbeats
//! arrive, the per-link keys, and per-link traffic counts. Also turns frames into datagrams
//! and back (plain or sealed), so the I/O loops only move bytes.

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::Range,
    time::{Duration, Instant},
};

use mesh_common::DropReason;

use crate::switch::{
    ShortId,
    pmtu::{PathProbe, Received},
    seal::{self, LinkCrypto, LinkSecret, Refused, SEAL_OVERHEAD},
    wire::{HEADER_LEN, Header},
};

/// The inner Ethernet header, which the overlay MTU does not count.
const ETH: usize = 14;

/// A neighbour whose heartbeats stopped this long ago has no working data path.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the agent knows about a neighbour: published on every topology change.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Its control connection's IP and the data port.
    pub addr: SocketAddr,
    /// The link's data secret (none without authentication) and whether we dialled.
    pub secret: Option<(LinkSecret, bool)>,
    /// Identifies the control connection the secret came from.
    pub conn_id: u64,
}

/// Datagrams and bytes sent to and received from one neighbour (data frames and heartbeats).
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

pub struct Neighbour {
    /// Where to send: the control connection's address until an authenticated heartbeat shows
    /// where its data really comes from (behind NAT, the translated address).
    pub addr: SocketAddr,
    pub observed: bool,
    pub last_heartbeat: Option<Instant>,
    /// When it became a neighbour: its first heartbeat gets [`HEARTBEAT_TIMEOUT`] to arrive.
    pub since: Instant,
    pub conn_id: u64,
    pub crypto: Option<LinkCrypto>,
    pub traffic: Traffic,
    /// How big a datagram the path to it carries (probed with padded heartbeats).
    pub path: PathProbe,
    /// The largest datagram it sent us lately (reported back in our heartbeats).
    pub received: Received,
}

/// All neighbours, keyed by short id.
pub struct Neighbours {
    map: HashMap<ShortId, Neighbour>,
    /// Whether data frames are sealed (the mesh has a password or certificates).
    encrypted: bool,
    /// Datagram (UDP payload) sizes: the largest our underlay NIC sends, and the smallest
    /// that carries the minimum overlay MTU.
    max_datagram: usize,
    min_datagram: usize,
    /// Our own short id, as last published (it can move: see `Gossip::short_id`).
    me: Option<ShortId>,
}

impl Neighbours {
    /// `overlay_mtu`: the largest IP packet the overlay carries with our NIC's MTU;
    /// `min_overlay_mtu`: the least acceptable on any path.
    pub fn new(encrypted: bool, overlay_mtu: usize, min_overlay_mtu: usize) -> Neighbours {
        let overhead = HEADER_LEN + ETH + if encrypted { SEAL_OVERHEAD } else { 0 };
        Neighbours {
            map: HashMap::new(),
            encrypted,
            max_datagram: overlay_mtu + overhead,
            min_datagram: min_overlay_mtu + overhead,
            me: None,
        }
    }

    fn overhead(&self) -> usize {
        HEADER_LEN + ETH + if self.encrypted { SEAL_OVERHEAD } else { 0 }
    }

    /// The overlay MTU on the link to `to`: what its probed path carries.
    pub fn link_mtu(&self, to: ShortId) -> Option<usize> {
        let n = self.map.get(&to)?;
        Some(n.path.usable().saturating_sub(self.overhead()))
    }

    /// Builds the inner part of a heartbeat to `to` into `inner`: our report of the largest
    /// datagram it sent us lately (2 bytes), padded into a path-MTU probe when one is due.
    pub fn heartbeat_payload(&mut self, to: ShortId, inner: &mut Vec<u8>, now: Instant) -> bool {
        let sealed_extra = if self.encrypted { SEAL_OVERHEAD } else { 0 };
        let Some(n) = self.map.get_mut(&to) else {
            return false;
        };
        let report = n.received.report(now).min(usize::from(u16::MAX)) as u16;
        inner.clear();
        inner.extend_from_slice(&report.to_be_bytes());
        if let Some(size) = n.path.next_probe(now) {
            let len = size.saturating_sub(HEADER_LEN + sealed_extra);
            inner.resize(len.max(2), 0);
        }
        true
    }

    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Replaces the neighbour set. A neighbour whose control connection changed gets fresh
    /// keys; the data addresses heartbeats revealed are kept.
    pub fn set(&mut self, specs: HashMap<ShortId, Spec>, me: ShortId, now_ms: u64) {
        if self.me.is_some_and(|old| old != me) {
            // Our short id moved: keep the keys and counters (a fresh sealer would reuse
            // nonces), just sign frames with the new id.
            for c in self.map.values_mut().filter_map(|n| n.crypto.as_mut()) {
                c.sealer.set_sender(me);
            }
        }
        self.me = Some(me);
        // A neighbour whose short id moved keeps its state (keys, replay windows, probes):
        // same control connection, new key in the map.
        let moved: Vec<(ShortId, ShortId)> = specs
            .iter()
            .filter(|(id, _)| !self.map.contains_key(id))
            .filter_map(|(id, spec)| {
                self.map
                    .iter()
                    .find(|(old, n)| n.conn_id == spec.conn_id && !specs.contains_key(old))
                    .map(|(old, _)| (*old, *id))
            })
            .collect();
        for (old, new) in moved {
            if let Some(n) = self.map.remove(&old) {
                self.map.insert(new, n);
            }
        }
        self.map.retain(|id, _| specs.contains_key(id));
        for (id, spec) in specs {
            let crypto = || {
                spec.secret
                    .as_ref()
                    .map(|(s, dialed)| LinkCrypto::new(s, *dialed, me, now_ms))
            };
            match self.map.get_mut(&id) {
                Some(n) if n.conn_id == spec.conn_id => {}
                Some(n) => {
                    n.conn_id = spec.conn_id;
                    n.crypto = crypto();
                }
                None => {
                    self.map.insert(
                        id,
                        Neighbour {
                            addr: spec.addr,
                            observed: false,
                            last_heartbeat: None,
                            since: Instant::now(),
                            conn_id: spec.conn_id,
                            crypto: crypto(),
                            traffic: Traffic::default(),
                            path: PathProbe::new(self.min_datagram, self.max_datagram),
                            received: Received::default(),
                        },
                    );
                }
            }
        }
    }

    /// Every neighbour: its short id, where its data goes, the link's overlay MTU and the
    /// control connection it belongs to (what the kernel datapath needs to forward to it).
    pub fn links(&self) -> Vec<(ShortId, SocketAddr, usize, u64)> {
        let overhead = self.overhead();
        self.map
            .iter()
            .map(|(id, n)| {
                let mtu = n.path.usable().saturating_sub(overhead);
                (*id, n.addr, mtu, n.conn_id)
            })
            .collect()
    }

    pub fn get(&self, id: ShortId) -> Option<&Neighbour> {
        self.map.get(&id)
    }

    pub fn ids(&self) -> impl Iterator<Item = ShortId> + '_ {
        self.map.keys().copied()
    }

    /// Where datagrams for `to` go (`None`: not a neighbour, or no keys yet in an encrypted
    /// mesh).
    pub fn addr(&self, to: ShortId) -> Option<SocketAddr> {
        let n = self.map.get(&to)?;
        (!self.encrypted || n.crypto.is_some()).then_some(n.addr)
    }

    /// The size of the datagram carrying an inner frame of `inner_len` bytes.
    pub fn datagram_len(&self, inner_len: usize) -> usize {
        HEADER_LEN + inner_len + if self.encrypted { SEAL_OVERHEAD } else { 0 }
    }

    /// Appends the datagram carrying `inner` under `header` to `to` to `out`; returns where to
    /// send it, or `None` when `to` is no neighbour (or has no keys yet in an encrypted mesh).
    pub fn prepare(
        &mut self,
        to: ShortId,
        header: &Header,
        inner: &[u8],
        out: &mut Vec<u8>,
        now_ms: u64,
    ) -> Option<SocketAddr> {
        let n = self.map.get_mut(&to)?;
        let start = out.len();
        if self.encrypted {
            n.crypto.as_mut()?.sealer.seal(header, inner, out, now_ms);
        } else {
            let mut h = [0u8; HEADER_LEN];
            header.write(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(inner);
        }
        n.traffic.tx_packets += 1;
        n.traffic.tx_bytes += (out.len() - start) as u64;
        Some(n.addr)
    }

    /// Checks a received datagram: who sent it (a neighbour), that it is well-formed and, in
    /// an encrypted mesh, authentic and fresh (decrypting it in place). Heartbeats are taken in
    /// here. Returns the header and where the inner frame is in `datagram`.
    pub fn accept(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
    ) -> Result<(Header, Range<usize>), DropReason> {
        let len = datagram.len() as u64;
        let (id, header, inner) = if self.encrypted {
            let sender = seal::sender_of(datagram).map_err(|e| match e {
                Refused::NotSealed => DropReason::Unsealed,
                _ => DropReason::Malformed,
            })?;
            let n = self.map.get_mut(&sender).ok_or(DropReason::UnknownSender)?;
            let crypto = n.crypto.as_mut().ok_or(DropReason::UnknownSender)?;
            let (h, inner) = crypto.opener.open(datagram).map_err(|e| match e {
                Refused::Auth => DropReason::Auth,
                Refused::Replay => DropReason::Replay,
                Refused::NotSealed => DropReason::Unsealed,
                Refused::Malformed(_) => DropReason::Malformed,
            })?;
            (sender, h, inner)
        } else {
            // Without keys, the source address is all there is to go by.
            let id = self
                .map
                .iter()
                .find(|(_, n)| n.addr.ip() == from.ip())
                .map(|(id, _)| *id)
                .ok_or(DropReason::UnknownSender)?;
            if datagram.first().is_some_and(|f| f & seal::FLAG_SEALED != 0) {
                return Err(DropReason::Malformed);
            }
            let (h, inner) = Header::parse(datagram).map_err(|_| DropReason::Malformed)?;
            (id, h, HEADER_LEN..HEADER_LEN + inner.len())
        };
        let n = self.map.get_mut(&id).expect("found above");
        n.traffic.rx_packets += 1;
        n.traffic.rx_bytes += len;
        let now = Instant::now();
        n.received.saw(len as usize, now);
        if header.heartbeat
            && header.origin == id
            && let Some(r) = datagram.get(inner.start..inner.start + 2)
        {
            n.path
                .reported(usize::from(u16::from_be_bytes([r[0], r[1]])), now);
        }
        if header.heartbeat {
            // A sealed heartbeat proves who sent it, so its address is where the neighbour's
            // data comes from now (NAT rebinding). A plain one must come from the known IP.
            if header.origin == id && (self.encrypted || n.addr.ip() == from.ip() || !n.observed) {
                n.addr = from;
                n.observed = true;
                n.last_heartbeat = Some(now);
            }
        }
        Ok((header, inner))
    }

    /// Whether `peer`'s data path works: a heartbeat arrived recently, or it became a
    /// neighbour too recently to tell. `None`: not a neighbour.
    pub fn data_path_up(&self, peer: ShortId) -> Option<bool> {
        self.map.get(&peer).map(|n| {
            let last = n.last_heartbeat.unwrap_or(n.since);
            last.elapsed() < HEARTBEAT_TIMEOUT
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16, secret: Option<u8>, dialed: bool, conn_id: u64) -> Spec {
        Spec {
            addr: SocketAddr::from(([198, 18, 0, 1], port)),
            secret: secret.map(|b| (LinkSecret([b; 32]), dialed)),
            conn_id,
        }
    }

    fn frame_header(origin: u32) -> Header {
        Header {
            origin: ShortId::from_wire(origin),
            destination: ShortId::from_wire(2),
            hops: 32,
            heartbeat: false,
        }
    }

    #[test]
    fn sealed_frames_cross_between_neighbours_and_count_traffic() {
        let (a, b) = (ShortId::from_wire(1), ShortId::from_wire(2));
        let mut na = Neighbours::new(true, 1422, 1280);
        na.set(HashMap::from([(b, spec(1, Some(9), true, 1))]), a, 0);
        let mut nb = Neighbours::new(true, 1422, 1280);
        nb.set(HashMap::from([(a, spec(2, Some(9), false, 1))]), b, 0);
        let mut out = Vec::new();
        let inner = [0xabu8; 64];
        na.prepare(b, &frame_header(1), &inner, &mut out, 0)
            .unwrap();
        let from = SocketAddr::from(([198, 18, 0, 9], 4000));
        let (h, r) = nb.accept(&mut out.clone(), from).unwrap();
        assert_eq!(h, frame_header(1));
        assert_eq!(r.len(), 64);
        assert_eq!(nb.accept(&mut out, from), Err(DropReason::Replay));
        assert_eq!(na.get(b).unwrap().traffic.tx_packets, 1);
        assert_eq!(nb.get(a).unwrap().traffic.rx_packets, 1);
    }

    #[test]
    fn a_moved_short_id_keeps_the_keys_and_signs_with_the_new_id() {
        let (a, a2, b) = (
            ShortId::from_wire(1),
            ShortId::from_wire(7),
            ShortId::from_wire(2),
        );
        let mut na = Neighbours::new(true, 1422, 1280);
        na.set(HashMap::from([(b, spec(1, Some(9), true, 1))]), a, 0);
        let mut nb = Neighbours::new(true, 1422, 1280);
        nb.set(HashMap::from([(a, spec(2, Some(9), false, 1))]), b, 0);
        let from = SocketAddr::from(([198, 18, 0, 1], 6784));
        let mut out = Vec::new();
        na.prepare(b, &frame_header(1), &[0u8; 20], &mut out, 0)
            .unwrap();
        nb.accept(&mut out, from).unwrap();
        // a's id moves to 7; b learns it from gossip (same connection, same keys).
        na.set(HashMap::from([(b, spec(1, Some(9), true, 1))]), a2, 0);
        nb.set(HashMap::from([(a2, spec(2, Some(9), false, 1))]), b, 0);
        let mut out = Vec::new();
        na.prepare(b, &frame_header(7), &[0u8; 20], &mut out, 0)
            .unwrap();
        assert_eq!(seal::sender_of(&out), Ok(a2));
        // b moved its state for a to the new id: same keys, same counts.
        assert!(nb.accept(&mut out, from).is_ok());
        assert_eq!(nb.get(a2).unwrap().traffic.rx_packets, 2);
    }

    #[test]
    fn a_new_control_connection_brings_new_keys() {
        let (a, b) = (ShortId::from_wire(1), ShortId::from_wire(2));
        let mut na = Neighbours::new(true, 1422, 1280);
        na.set(HashMap::from([(b, spec(1, Some(9), true, 1))]), a, 0);
        let mut nb = Neighbours::new(true, 1422, 1280);
        nb.set(HashMap::from([(a, spec(2, Some(9), false, 1))]), b, 0);
        // b reconnected with another secret; a still has the old one.
        nb.set(HashMap::from([(a, spec(2, Some(10), false, 2))]), b, 0);
        let mut out = Vec::new();
        na.prepare(b, &frame_header(1), &[0u8; 20], &mut out, 0)
            .unwrap();
        let from = SocketAddr::from(([198, 18, 0, 1], 6784));
        assert_eq!(nb.accept(&mut out, from), Err(DropReason::Auth));
    }

    #[test]
    fn plain_frames_in_an_encrypted_mesh_and_strangers_are_dropped() {
        let (a, b) = (ShortId::from_wire(1), ShortId::from_wire(2));
        let mut nb = Neighbours::new(true, 1422, 1280);
        nb.set(HashMap::from([(a, spec(2, Some(9), false, 1))]), b, 0);
        let mut plain = vec![0u8; HEADER_LEN + 60];
        frame_header(1).write((&mut plain[..HEADER_LEN]).try_into().unwrap());
        let from = SocketAddr::from(([198, 18, 0, 1], 6784));
        assert_eq!(nb.accept(&mut plain, from), Err(DropReason::Unsealed));
        let mut plain_nb = Neighbours::new(false, 1450, 1280);
        plain_nb.set(HashMap::from([(a, spec(2, None, false, 1))]), b, 0);
        let stranger = SocketAddr::from(([198, 18, 0, 77], 6784));
        assert_eq!(
            plain_nb.accept(&mut plain, stranger),
            Err(DropReason::UnknownSender)
        );
        assert!(plain_nb.accept(&mut plain, from).is_ok());
    }
}
