//! The data path's view of its direct neighbours: where to send, whether their heartbeats
//! arrive, the per-link keys, and per-link traffic counts. Also turns frames into datagrams
//! and back (plain or sealed), so the I/O loops only move bytes.
//!
//! State is kept per link ([`LinkId`]: one control connection), never per short id. A link is
//! added once with its secret, which becomes its keys there and then, and lives until its
//! connection closes; a short id only indexes links for forwarding. So two links that claim one
//! short id for a while (a peer connecting before its gossip entry is known, or a short-id
//! collision being resolved) each keep their keys and nonce counters, and no (key, nonce) pair
//! is ever used twice.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    time::{Duration, Instant},
};

use mesh_common::DropReason;

use super::batch::Batcher;
use crate::switch::{
    LinkId, ShortId,
    heartbeat::{self, DataAddr, Payload, Seen},
    pmtu::{PathProbe, Received},
    seal::{self, LinkCrypto, LinkKeys, Refused, SEAL_OVERHEAD},
    wire::{HEADER_LEN, Header},
};

/// The inner Ethernet header, which the overlay MTU does not count.
const ETH: usize = 14;

/// A neighbour whose heartbeats stopped this long ago has no working data path.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long what a closed link's path probe found is kept for a new link to the same address.
const PATH_MEMORY: Duration = Duration::from_secs(60);

/// A link the agent hands over when its control connection is established.
#[derive(Debug)]
pub struct LinkSpec {
    /// The peer's short id, as gossip knows it now (it can move: [`Neighbours::set_peer`]).
    pub peer: ShortId,
    /// Its control connection's IP and the data port.
    pub addr: SocketAddr,
    /// The link's data secret and whether we dialled; none for a plaintext link (`--insecure`,
    /// or both ends inside each other's `--trusted-subnets`). Consumed here: the secret becomes
    /// the link's keys and is wiped.
    pub secret: Option<LinkKeys>,
    /// The peer runs the kernel datapath (its hello said so): plaintext frames to it may take
    /// the kernel path. The TAP datapath ignores it.
    pub peer_kernel: bool,
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
    /// The peer's short id (what frames to it are addressed to).
    pub peer: ShortId,
    /// Where to send: the control connection's address until an authenticated heartbeat shows
    /// where its data really comes from (behind NAT, the translated address).
    pub addr: SocketAddr,
    pub observed: bool,
    /// On a sealed link: the proof a new data address must give before `addr` moves there.
    proof: DataAddr,
    pub last_heartbeat: Option<Instant>,
    /// When it became a neighbour: its first heartbeat gets [`HEARTBEAT_TIMEOUT`] to arrive.
    pub since: Instant,
    /// The link's keys; none on a plaintext link.
    pub crypto: Option<LinkCrypto>,
    pub traffic: Traffic,
    /// How big a datagram the path to it carries (probed with padded heartbeats).
    pub path: PathProbe,
    /// The largest datagram it sent us lately (reported back in our heartbeats).
    pub received: Received,
    /// The data path's round-trip time, from heartbeat stamps.
    pub rtt: heartbeat::RoundTrip,
}

impl Neighbour {
    /// Its frames are sealed (it has keys).
    pub fn sealed(&self) -> bool {
        self.crypto.is_some()
    }

    /// Appends the datagram carrying `inner` under `header` to `out`: sealed with the link's
    /// keys, or framed as it is on a plaintext link; counted.
    fn frame(&mut self, header: &Header, inner: &[u8], out: &mut Vec<u8>, now_ms: u64) {
        let start = out.len();
        if let Some(crypto) = self.crypto.as_mut() {
            crypto.sealer.seal(header, inner, out, now_ms);
        } else {
            let mut h = [0u8; HEADER_LEN];
            header.write(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(inner);
        }
        self.traffic.tx_packets += 1;
        self.traffic.tx_bytes += (out.len() - start) as u64;
    }
}

/// What a datagram adds to an inner IP packet: the mesh header, the inner Ethernet header,
/// and on a sealed link the seal.
fn overhead(sealed: bool) -> usize {
    HEADER_LEN + ETH + if sealed { SEAL_OVERHEAD } else { 0 }
}

/// One neighbour's link as the kernel datapath needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link: LinkId,
    pub peer: ShortId,
    pub addr: SocketAddr,
    /// The link's overlay MTU (what its probed path carries).
    pub mtu: usize,
    /// Its frames are sealed (in userspace: the kernel carries only plaintext links).
    pub sealed: bool,
}

/// All neighbours' links, and which link forwards to each short id.
pub struct Neighbours {
    links: HashMap<LinkId, Neighbour>,
    /// The links claiming each short id, oldest first; the first one carries frames to it.
    /// Two links share a short id only until gossip settles who keeps it.
    by_peer: HashMap<ShortId, Vec<LinkId>>,
    /// Plaintext links by their neighbour's IP: without keys the source address is how a
    /// plain frame's sender is known. Usually one link per IP; two hosts behind one NAT share
    /// it (and are told apart by port, then by the frame's origin).
    plain_by_ip: HashMap<IpAddr, Vec<LinkId>>,
    /// Whether the mesh authenticates (a password or certificates): links are sealed unless
    /// both ends trust each other's subnet.
    encrypted: bool,
    /// Datagram (UDP payload) sizes: the largest our underlay NIC sends, and the smallest
    /// that carries the minimum overlay MTU.
    max_datagram: usize,
    min_datagram: usize,
    /// Our own short id, as last published (it can move: see `Gossip::short_id`).
    me: Option<ShortId>,
    /// What the path probes of recently closed links found, by their address. A link that
    /// replaces one (both ends dialled and the other connection won, or a reconnect) runs over
    /// the same underlay path; a fresh probe would assume the full size for seconds and
    /// black-hole big frames on a narrow path meanwhile.
    recent_paths: HashMap<SocketAddr, (PathProbe, Instant)>,
}

impl Neighbours {
    /// `overlay_mtu`: the largest IP packet the overlay carries with our NIC's MTU;
    /// `min_overlay_mtu`: the least acceptable on any path.
    pub fn new(encrypted: bool, overlay_mtu: usize, min_overlay_mtu: usize) -> Neighbours {
        let overhead = overhead(encrypted);
        Neighbours {
            links: HashMap::new(),
            by_peer: HashMap::new(),
            plain_by_ip: HashMap::new(),
            encrypted,
            max_datagram: overlay_mtu + overhead,
            min_datagram: min_overlay_mtu + overhead,
            me: None,
            recent_paths: HashMap::new(),
        }
    }

    /// The link that carries frames to `peer`.
    pub fn link_to(&self, peer: ShortId) -> Option<LinkId> {
        self.by_peer.get(&peer).and_then(|l| l.first()).copied()
    }

    /// The overlay MTU on the link to `to`: what its probed path carries.
    pub fn link_mtu(&self, to: ShortId) -> Option<usize> {
        self.link_mtu_of(self.link_to(to)?)
    }

    pub fn link_mtu_of(&self, link: LinkId) -> Option<usize> {
        let n = self.links.get(&link)?;
        Some(n.path.usable().saturating_sub(overhead(n.sealed())))
    }

    /// Builds the inner part of a heartbeat on `link` into `inner`: our report of the largest
    /// datagram it sent us lately, the address challenge and echo, the round-trip stamps.
    /// Returns whether there is such a link, and the length to pad a copy of `inner` to when a
    /// path-MTU probe is due. The probe goes besides the heartbeat, never instead of it: probes
    /// on a narrow path are lost by design, and heartbeats lost with them would make the
    /// neighbour take a working data path for down and route around it while the search runs.
    pub fn heartbeat_payload(
        &mut self,
        link: LinkId,
        inner: &mut Vec<u8>,
        now: Instant,
    ) -> Option<Option<usize>> {
        let n = self.links.get_mut(&link)?;
        let sealed_extra = if n.sealed() { SEAL_OVERHEAD } else { 0 };
        let report = n.received.report(now).min(usize::from(u16::MAX)) as u16;
        let mut payload = if n.sealed() {
            n.proof.outgoing(report)
        } else {
            Payload {
                report,
                ..Default::default()
            }
        };
        payload.stamp = n.rtt.outgoing(heartbeat::stamp_of(now));
        inner.clear();
        payload.write(inner);
        let probe = n.path.next_probe(now).map(|size| {
            size.saturating_sub(HEADER_LEN + sealed_extra)
                .max(heartbeat::PAYLOAD_LEN)
        });
        Some(probe)
    }

    /// A data address of `link`'s neighbour waiting to prove itself: heartbeats (with the
    /// challenge) go there too.
    pub fn candidate(&self, link: LinkId) -> Option<SocketAddr> {
        self.links.get(&link)?.proof.candidate()
    }

    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Our own short id moved (or is set for the first time): frames are signed with it from
    /// now on. Keys and counters stay; a fresh sealer would reuse nonces.
    pub fn set_me(&mut self, me: ShortId) {
        if self.me != Some(me) {
            for c in self.links.values_mut().filter_map(|n| n.crypto.as_mut()) {
                c.sealer.set_sender(me);
            }
            self.me = Some(me);
        }
    }

    /// Adds the link of a newly established control connection, deriving its keys from the
    /// secret (which is wiped). A link is added once: a second call for the same id is refused
    /// (returns false) and changes nothing, since fresh keys from the same secret would reuse
    /// nonces. Frames to `spec.peer` take this link unless an older link claims that short id.
    pub fn add_link(&mut self, link: LinkId, spec: LinkSpec, now_ms: u64) -> bool {
        if self.links.contains_key(&link) {
            return false;
        }
        let me = self.me.unwrap_or(ShortId::FLOOD);
        let crypto = spec.secret.map(|keys| LinkCrypto::new(&keys, me, now_ms));
        let path = match self.recent_paths.remove(&spec.addr) {
            Some((path, at)) if at.elapsed() < PATH_MEMORY => path,
            _ => PathProbe::new(self.min_datagram, self.max_datagram),
        };
        self.links.insert(
            link,
            Neighbour {
                peer: spec.peer,
                addr: spec.addr,
                observed: false,
                proof: DataAddr::new(spec.addr),
                last_heartbeat: None,
                since: Instant::now(),
                crypto,
                traffic: Traffic::default(),
                path,
                received: Received::default(),
                rtt: Default::default(),
            },
        );
        self.index(link, spec.peer);
        if !self.links[&link].sealed() {
            self.plain_by_ip
                .entry(spec.addr.ip())
                .or_default()
                .push(link);
        }
        true
    }

    /// Removes a link whose control connection closed, with its keys.
    pub fn remove_link(&mut self, link: LinkId) {
        if let Some(n) = self.links.remove(&link) {
            self.unindex(link, n.peer);
            if !n.sealed() {
                self.unindex_plain(link, n.addr.ip());
            }
            let now = Instant::now();
            // Bounded by the links closed within the memory (peers reconnecting).
            self.recent_paths
                .retain(|_, (_, at)| now.duration_since(*at) < PATH_MEMORY);
            self.recent_paths.insert(n.addr, (n.path, now));
        }
    }

    fn unindex_plain(&mut self, link: LinkId, ip: IpAddr) {
        if let Some(links) = self.plain_by_ip.get_mut(&ip) {
            links.retain(|l| *l != link);
            if links.is_empty() {
                self.plain_by_ip.remove(&ip);
            }
        }
    }

    /// The plaintext link a plain datagram from `from` with `header` came over: the one link
    /// at that IP; among several (one NAT in front of more than one host) the one at exactly
    /// that address, else the one whose peer the frame names as its sender.
    fn plain_link(&self, from: SocketAddr, header: &Header) -> Option<LinkId> {
        match self.plain_by_ip.get(&from.ip())?.as_slice() {
            [one] => Some(*one),
            several => several
                .iter()
                .find(|l| self.links[l].addr == from)
                .or_else(|| several.iter().find(|l| self.links[l].peer == header.origin))
                .copied(),
        }
    }

    /// `link`'s peer now goes by `peer` (gossip moved its short id). Its state stays.
    pub fn set_peer(&mut self, link: LinkId, peer: ShortId) {
        let Some(n) = self.links.get_mut(&link) else {
            return;
        };
        let old = std::mem::replace(&mut n.peer, peer);
        if old != peer {
            self.unindex(link, old);
            self.index(link, peer);
        }
    }

    fn index(&mut self, link: LinkId, peer: ShortId) {
        let claims = self.by_peer.entry(peer).or_default();
        claims.push(link);
        // Oldest link first: the link already carrying a peer's traffic keeps it while a
        // newcomer with the same short id waits for gossip to move one of them.
        claims.sort();
    }

    fn unindex(&mut self, link: LinkId, peer: ShortId) {
        if let Some(claims) = self.by_peer.get_mut(&peer) {
            claims.retain(|l| *l != link);
            if claims.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// The link carrying frames to each short id (what the kernel datapath forwards on).
    pub fn links(&self) -> Vec<LinkInfo> {
        self.by_peer
            .values()
            .filter_map(|claims| claims.first())
            .map(|link| {
                let n = &self.links[link];
                LinkInfo {
                    link: *link,
                    peer: n.peer,
                    addr: n.addr,
                    mtu: n.path.usable().saturating_sub(overhead(n.sealed())),
                    sealed: n.sealed(),
                }
            })
            .collect()
    }

    pub fn get(&self, link: LinkId) -> Option<&Neighbour> {
        self.links.get(&link)
    }

    /// Every link, including one waiting for its short id to be settled (heartbeats keep it).
    pub fn link_ids(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links.keys().copied()
    }

    /// Where datagrams for `to` go (`None`: not a neighbour).
    pub fn addr(&self, to: ShortId) -> Option<SocketAddr> {
        Some(self.links.get(&self.link_to(to)?)?.addr)
    }

    /// Appends the datagram carrying `inner` under `header` to `to` to `batcher`, in the batch
    /// for its address. One look-up of the link gives where, how long and with which keys (a
    /// frame each, on the bulk path). False when `to` is no neighbour.
    pub fn queue(
        &mut self,
        to: ShortId,
        header: &Header,
        inner: &[u8],
        batcher: &mut Batcher,
        now_ms: u64,
    ) -> bool {
        let Some(n) = self.link_to(to).and_then(|l| self.links.get_mut(&l)) else {
            return false;
        };
        let len = HEADER_LEN + inner.len() + if n.sealed() { SEAL_OVERHEAD } else { 0 };
        n.frame(header, inner, batcher.slot(n.addr, len), now_ms);
        true
    }

    /// Appends the datagram carrying `inner` under `header` to `to` to `out`; returns where to
    /// send it, or `None` when `to` is no neighbour.
    pub fn prepare(
        &mut self,
        to: ShortId,
        header: &Header,
        inner: &[u8],
        out: &mut Vec<u8>,
        now_ms: u64,
    ) -> Option<SocketAddr> {
        let link = self.link_to(to)?;
        self.prepare_on(link, header, inner, out, now_ms)
    }

    /// [`Neighbours::prepare`] on a given link.
    pub fn prepare_on(
        &mut self,
        link: LinkId,
        header: &Header,
        inner: &[u8],
        out: &mut Vec<u8>,
        now_ms: u64,
    ) -> Option<SocketAddr> {
        let n = self.links.get_mut(&link)?;
        n.frame(header, inner, out, now_ms);
        Some(n.addr)
    }

    /// Opens a sealed datagram with the keys of the link its sender's short id names; while
    /// two links claim that id, with whichever of them sealed it.
    fn open(&mut self, datagram: &mut [u8]) -> Result<(LinkId, Header, Range<usize>), DropReason> {
        let sender = seal::sender_of(datagram).map_err(|e| match e {
            Refused::NotSealed => DropReason::Unsealed,
            _ => DropReason::Malformed,
        })?;
        let claims = self.by_peer.get(&sender).ok_or(DropReason::UnknownSender)?;
        // A failed open may leave the datagram overwritten (ring says so): while two links
        // claim the id (rare, brief), each attempt starts from a copy.
        let original = (claims.len() > 1).then(|| datagram.to_vec());
        let mut refused = DropReason::UnknownSender;
        for link in claims {
            let Some(crypto) = self.links.get_mut(link).and_then(|n| n.crypto.as_mut()) else {
                continue;
            };
            if let Some(o) = &original {
                datagram.copy_from_slice(o);
            }
            match crypto.opener.open(datagram) {
                Ok((h, inner)) => return Ok((*link, h, inner)),
                Err(e) => {
                    refused = match e {
                        Refused::Auth => DropReason::Auth,
                        Refused::Replay => DropReason::Replay,
                        Refused::NotSealed => DropReason::Unsealed,
                        Refused::Malformed(_) => DropReason::Malformed,
                    }
                }
            }
        }
        Err(refused)
    }

    /// Checks a received datagram: who sent it (a neighbour), that it is well-formed and, in
    /// an encrypted mesh, authentic and fresh (decrypting it in place). Heartbeats are taken in
    /// here. Returns the header, where the inner frame is in `datagram`, and the neighbour it
    /// came from (its short id).
    pub fn accept(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<(Header, Range<usize>, ShortId), DropReason> {
        let len = datagram.len() as u64;
        let sealed = datagram.first().is_some_and(|f| f & seal::FLAG_SEALED != 0);
        let (link, header, inner) = if sealed {
            if !self.encrypted {
                // Nobody in a mesh without authentication seals.
                return Err(DropReason::Malformed);
            }
            self.open(datagram)?
        } else {
            // Without keys, the source address is all there is to go by: only plaintext links
            // take plain frames.
            let stranger = if self.encrypted {
                DropReason::Unsealed
            } else {
                DropReason::UnknownSender
            };
            // Garbage from a known address is malformed; from anyone else, a stranger's.
            let (h, inner) = Header::parse(datagram).map_err(|_| {
                if self.plain_by_ip.contains_key(&from.ip()) {
                    DropReason::Malformed
                } else {
                    stranger
                }
            })?;
            let link = self.plain_link(from, &h).ok_or(stranger)?;
            (link, h, HEADER_LEN..HEADER_LEN + inner.len())
        };
        let n = self.links.get_mut(&link).expect("found above");
        let id = n.peer;
        n.traffic.rx_packets += 1;
        n.traffic.rx_bytes += len;
        n.received.saw(len as usize, now);
        if header.is_link_heartbeat() && header.origin == id {
            let p = Payload::parse(&datagram[inner.clone()]);
            n.path.reported(usize::from(p.report), now);
            // Where the neighbour's data comes from now (NAT rebinding). A sealed heartbeat
            // proves who sealed it but not its source address: a new address must answer our
            // challenge first (see switch::heartbeat). A plain one must come from the known IP.
            let works = if sealed {
                match n.proof.heard(from, &p, heartbeat::random_challenge) {
                    Seen::Current => true,
                    Seen::Moved => {
                        n.addr = from;
                        true
                    }
                    Seen::Challenged => false,
                }
            } else if n.addr.ip() == from.ip() {
                n.addr = from;
                true
            } else {
                false
            };
            if works {
                n.observed = true;
                n.last_heartbeat = Some(now);
                n.rtt.heard(&p.stamp, heartbeat::stamp_of(now));
            }
        }
        Ok((header, inner, id))
    }

    /// Whether `link`'s data path works: a heartbeat arrived recently, or it became a
    /// neighbour too recently to tell. `None`: no such link.
    pub fn data_path_up(&self, link: LinkId) -> Option<bool> {
        self.links.get(&link).map(|n| {
            let last = n.last_heartbeat.unwrap_or(n.since);
            last.elapsed() < HEARTBEAT_TIMEOUT
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::seal::{Cipher, LinkSecret};

    fn spec(peer: u32, port: u16, secret: Option<u8>, dialed: bool) -> LinkSpec {
        LinkSpec {
            peer: ShortId::from_wire(peer),
            addr: SocketAddr::from(([198, 18, 0, 1], port)),
            secret: secret.map(|b| LinkKeys {
                secret: LinkSecret([b; 32]),
                i_dialed: dialed,
                cipher: Cipher::ChaCha20Poly1305,
            }),
            peer_kernel: false,
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

    /// A neighbour table for node `me` with one link (id `link`) to `peer`.
    fn table(me: u32, link: u64, peer: u32, secret: u8, dialed: bool) -> Neighbours {
        let mut n = Neighbours::new(true, 1422, 1280);
        n.set_me(ShortId::from_wire(me));
        assert!(n.add_link(LinkId(link), spec(peer, 1, Some(secret), dialed), 0));
        n
    }

    /// (sender, epoch, counter) of a sealed datagram: what must never repeat under one key.
    fn nonce_of(datagram: &[u8]) -> ([u8; 3], u8, u64) {
        (
            datagram[8..11].try_into().unwrap(),
            datagram[11],
            u64::from_be_bytes(datagram[12..20].try_into().unwrap()),
        )
    }

    const FROM: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 9)),
        4000,
    );

    #[test]
    fn a_link_that_replaces_one_keeps_what_the_path_probe_found() {
        let mut n = table(1, 10, 2, 9, true);
        let full = n.link_mtu(ShortId::from_wire(2)).unwrap();
        assert_eq!(full, 1422, "a fresh link assumes the full size");
        // The path carries 1300-byte datagrams and nothing bigger: probe until settled.
        let now = Instant::now();
        let path = &mut n.links.get_mut(&LinkId(10)).unwrap().path;
        for _ in 0..100 {
            path.next_probe(now);
            path.reported(1300, now);
        }
        let narrow = n.link_mtu(ShortId::from_wire(2)).unwrap();
        assert!(narrow < full && narrow + 16 > 1300 - overhead(true));

        // The other connection wins: the same path, a new link.
        n.remove_link(LinkId(10));
        assert!(n.add_link(LinkId(11), spec(2, 1, Some(9), true), 0));
        assert_eq!(n.link_mtu(ShortId::from_wire(2)), Some(narrow));
        // A link to another address knows nothing of that path.
        assert!(n.add_link(LinkId(12), spec(3, 2, Some(8), true), 0));
        assert_eq!(n.link_mtu(ShortId::from_wire(3)), Some(full));
    }

    #[test]
    fn sealed_frames_cross_between_neighbours_and_count_traffic() {
        let (a, b) = (ShortId::from_wire(1), ShortId::from_wire(2));
        let mut na = table(1, 10, 2, 9, true);
        let mut nb = table(2, 10, 1, 9, false);
        let mut out = Vec::new();
        let inner = [0xabu8; 64];
        na.prepare(b, &frame_header(1), &inner, &mut out, 0)
            .unwrap();
        let (h, r, _) = nb.accept(&mut out.clone(), FROM, Instant::now()).unwrap();
        assert_eq!(h, frame_header(1));
        assert_eq!(r.len(), 64);
        assert_eq!(
            nb.accept(&mut out, FROM, Instant::now()),
            Err(DropReason::Replay)
        );
        assert_eq!(na.get(LinkId(10)).unwrap().traffic.tx_packets, 1);
        assert_eq!(nb.get(LinkId(10)).unwrap().traffic.rx_packets, 1);
        assert_eq!(nb.link_to(a), Some(LinkId(10)));
    }

    #[test]
    fn a_moved_short_id_keeps_the_keys_and_signs_with_the_new_id() {
        let (a2, b) = (ShortId::from_wire(7), ShortId::from_wire(2));
        let mut na = table(1, 10, 2, 9, true);
        let mut nb = table(2, 20, 1, 9, false);
        let mut out = Vec::new();
        na.prepare(b, &frame_header(1), &[0u8; 20], &mut out, 0)
            .unwrap();
        let first = nonce_of(&out);
        nb.accept(&mut out, FROM, Instant::now()).unwrap();
        // a's id moves to 7; b learns it from gossip (same link, same keys).
        na.set_me(a2);
        nb.set_peer(LinkId(20), a2);
        let mut out = Vec::new();
        na.prepare(b, &frame_header(7), &[0u8; 20], &mut out, 0)
            .unwrap();
        assert_eq!(seal::sender_of(&out), Ok(a2));
        assert_eq!(nonce_of(&out).2, first.2 + 1, "the counter goes on");
        assert!(nb.accept(&mut out, FROM, Instant::now()).is_ok());
        assert_eq!(nb.get(LinkId(20)).unwrap().traffic.rx_packets, 2);
        assert_eq!(nb.link_to(a2), Some(LinkId(20)));
        assert_eq!(nb.link_to(ShortId::from_wire(1)), None);
    }

    #[test]
    fn a_link_is_keyed_once_and_a_new_connection_brings_new_keys() {
        let b = ShortId::from_wire(2);
        let mut na = table(1, 10, 2, 9, true);
        let mut nb = table(2, 10, 1, 9, false);
        // Handing the same link over again cannot restart its keys (and nonces) at zero.
        assert!(!nb.add_link(LinkId(10), spec(1, 1, Some(9), false), 0));
        // b reconnected with another secret; a still has the old one.
        nb.remove_link(LinkId(10));
        assert!(nb.add_link(LinkId(11), spec(1, 1, Some(10), false), 0));
        let mut out = Vec::new();
        na.prepare(b, &frame_header(1), &[0u8; 20], &mut out, 0)
            .unwrap();
        assert_eq!(
            nb.accept(&mut out, FROM, Instant::now()),
            Err(DropReason::Auth)
        );
    }

    #[test]
    fn two_links_claiming_one_short_id_keep_their_own_keys_and_counters() {
        // b has a link to a (short id 5) carrying traffic, then c connects claiming 5 too,
        // until gossip moves c to 6. The nonce reuse this guards against: dropping a's state
        // for c's and re-creating it from a's secret once c moved, which restarts at 0.
        let (a_id, b_id, c_id) = (5, 2, 6);
        let mut nb = table(b_id, 1, a_id, 9, false);
        let mut na = table(a_id, 1, b_id, 9, true);
        let mut seen = std::collections::HashSet::new();
        let mut send_to_a = |nb: &mut Neighbours, na: &mut Neighbours| {
            let mut out = Vec::new();
            nb.prepare(
                ShortId::from_wire(a_id),
                &frame_header(b_id),
                &[1; 20],
                &mut out,
                0,
            )
            .expect("a link to a");
            assert!(
                seen.insert(nonce_of(&out)),
                "a (sender, epoch, counter) repeated"
            );
            na.accept(&mut out, FROM, Instant::now())
        };
        for _ in 0..3 {
            assert!(send_to_a(&mut nb, &mut na).is_ok());
        }
        // c arrives with a's short id: a's link keeps carrying frames to 5.
        assert!(nb.add_link(LinkId(2), spec(a_id, 2, Some(11), false), 0));
        let mut nc = table(a_id, 2, b_id, 11, true);
        assert_eq!(nb.link_to(ShortId::from_wire(a_id)), Some(LinkId(1)));
        assert!(send_to_a(&mut nb, &mut na).is_ok());
        // ...and c's frames, sealed as sender 5 too, are opened with c's keys.
        let mut out = Vec::new();
        nc.prepare(
            ShortId::from_wire(b_id),
            &frame_header(a_id),
            &[2; 20],
            &mut out,
            0,
        )
        .unwrap();
        assert!(nb.accept(&mut out, FROM, Instant::now()).is_ok());
        assert_eq!(nb.get(LinkId(2)).unwrap().traffic.rx_packets, 1);
        // c moves to 6: both links carry on with their counters.
        nb.set_peer(LinkId(2), ShortId::from_wire(c_id));
        nc.set_me(ShortId::from_wire(c_id));
        for _ in 0..3 {
            assert!(send_to_a(&mut nb, &mut na).is_ok(), "a's link works on");
        }
        let mut out = Vec::new();
        nb.prepare(
            ShortId::from_wire(c_id),
            &frame_header(b_id),
            &[3; 20],
            &mut out,
            0,
        )
        .unwrap();
        assert!(nc.accept(&mut out, FROM, Instant::now()).is_ok());
        let mut peers: Vec<_> = nb.links().iter().map(|l| (l.link, l.peer.get())).collect();
        peers.sort();
        assert_eq!(peers, [(LinkId(1), a_id), (LinkId(2), c_id)]);
    }

    #[test]
    fn plain_frames_in_an_encrypted_mesh_and_strangers_are_dropped() {
        let mut nb = table(2, 1, 1, 9, false);
        let mut plain = vec![0u8; HEADER_LEN + 60];
        frame_header(1).write((&mut plain[..HEADER_LEN]).try_into().unwrap());
        let from = SocketAddr::from(([198, 18, 0, 1], 6784));
        assert_eq!(
            nb.accept(&mut plain, from, Instant::now()),
            Err(DropReason::Unsealed)
        );
        let mut plain_nb = Neighbours::new(false, 1450, 1280);
        plain_nb.set_me(ShortId::from_wire(2));
        plain_nb.add_link(LinkId(1), spec(1, 2, None, false), 0);
        let stranger = SocketAddr::from(([198, 18, 0, 77], 6784));
        assert_eq!(
            plain_nb.accept(&mut plain, stranger, Instant::now()),
            Err(DropReason::UnknownSender)
        );
        assert!(plain_nb.accept(&mut plain, from, Instant::now()).is_ok());
    }

    #[test]
    fn plain_neighbours_behind_one_nat_are_told_apart() {
        // Peers 1 and 3 behind one NAT address: their data comes from two ports of one IP.
        let mut nb = Neighbours::new(false, 1450, 1280);
        nb.set_me(ShortId::from_wire(2));
        let (p1, p3) = (ShortId::from_wire(1), ShortId::from_wire(3));
        nb.add_link(LinkId(1), spec(1, 6784, None, false), 0);
        nb.add_link(LinkId(3), spec(3, 6790, None, false), 0);
        let at = |port| SocketAddr::from(([198, 18, 0, 1], port));
        let datagram = |origin: u32, heartbeat: bool| {
            let mut d = vec![0u8; HEADER_LEN + 60];
            Header {
                heartbeat,
                hops: if heartbeat { 1 } else { 32 },
                ..frame_header(origin)
            }
            .write((&mut d[..HEADER_LEN]).try_into().unwrap());
            d
        };
        // Each port is its own neighbour, whichever was added first (before: the first link
        // found at that IP took both).
        assert_eq!(
            nb.accept(&mut datagram(1, false), at(6784), Instant::now())
                .unwrap()
                .2,
            p1
        );
        assert_eq!(
            nb.accept(&mut datagram(3, false), at(6790), Instant::now())
                .unwrap()
                .2,
            p3
        );
        assert_eq!(nb.get(LinkId(1)).unwrap().traffic.rx_packets, 1);
        assert_eq!(nb.get(LinkId(3)).unwrap().traffic.rx_packets, 1);
        // The NAT rebinds 3 to another port: its heartbeat names it, and its address follows.
        assert_eq!(
            nb.accept(&mut datagram(3, true), at(6791), Instant::now())
                .unwrap()
                .2,
            p3
        );
        assert_eq!(nb.get(LinkId(3)).unwrap().addr, at(6791));
        assert_eq!(nb.get(LinkId(1)).unwrap().addr, at(6784), "1 stays");
        // A frame 3 relays for 1 (origin 1) from 3's new address is 3's.
        assert_eq!(
            nb.accept(&mut datagram(1, false), at(6791), Instant::now())
                .unwrap()
                .2,
            p3
        );
        // Gone links are gone from the index.
        nb.remove_link(LinkId(1));
        assert_eq!(
            nb.accept(&mut datagram(3, false), at(6791), Instant::now())
                .unwrap()
                .2,
            p3
        );
        nb.remove_link(LinkId(3));
        assert_eq!(
            nb.accept(&mut datagram(3, false), at(6791), Instant::now()),
            Err(DropReason::UnknownSender)
        );
    }

    #[test]
    fn plaintext_and_sealed_links_share_one_table() {
        // An authenticated mesh with one trusted (plaintext) link, from 198.18.0.1, and one
        // sealed link.
        let mut nb = table(2, 1, 1, 9, false);
        nb.add_link(
            LinkId(2),
            LinkSpec {
                peer: ShortId::from_wire(3),
                addr: SocketAddr::from(([198, 18, 0, 3], 6784)),
                secret: None,
                peer_kernel: false,
            },
            0,
        );
        let mut plain = vec![0u8; HEADER_LEN + 60];
        frame_header(3).write((&mut plain[..HEADER_LEN]).try_into().unwrap());
        let trusted = SocketAddr::from(([198, 18, 0, 3], 6784));
        assert!(
            nb.accept(&mut plain.clone(), trusted, Instant::now())
                .is_ok()
        );
        // The sealed link's address does not get to send plain frames.
        let sealed_peer = SocketAddr::from(([198, 18, 0, 1], 6784));
        assert_eq!(
            nb.accept(&mut plain.clone(), sealed_peer, Instant::now()),
            Err(DropReason::Unsealed)
        );
        // Frames to each are framed as its link says, and the MTU follows.
        let mut out = Vec::new();
        nb.prepare(
            ShortId::from_wire(3),
            &frame_header(2),
            &[0; 20],
            &mut out,
            0,
        )
        .unwrap();
        assert_eq!(out.len(), HEADER_LEN + 20);
        // Queued for a batched send: sealed on the sealed link, sized for it.
        let mut batcher = Batcher::default();
        assert!(nb.queue(
            ShortId::from_wire(1),
            &frame_header(2),
            &[0; 20],
            &mut batcher,
            0
        ));
        assert!(!nb.queue(
            ShortId::from_wire(9),
            &frame_header(2),
            &[0; 20],
            &mut batcher,
            0
        ));
        let (_, seg, buf, count) = batcher.pending().next().unwrap();
        assert_eq!(seg, HEADER_LEN + 20 + SEAL_OVERHEAD);
        assert_eq!((buf.len(), count), (seg, 1));
        let infos = nb.links();
        let sealed_of = |id: u64| infos.iter().find(|l| l.link == LinkId(id)).unwrap().sealed;
        assert!(sealed_of(1) && !sealed_of(2));
    }

    /// A heartbeat from `from` on link 1 of `sender` (node `origin`), as `receiver` takes it.
    fn heartbeat(
        sender: &mut Neighbours,
        origin: u32,
        to: u32,
        receiver: &mut Neighbours,
        from: SocketAddr,
    ) {
        let h = Header {
            origin: ShortId::from_wire(origin),
            destination: ShortId::from_wire(to),
            hops: 1,
            heartbeat: true,
        };
        let (mut inner, mut out) = (Vec::new(), Vec::new());
        assert!(
            sender
                .heartbeat_payload(LinkId(1), &mut inner, Instant::now())
                .is_some()
        );
        sender
            .prepare_on(LinkId(1), &h, &inner, &mut out, 0)
            .unwrap();
        receiver.accept(&mut out, from, Instant::now()).unwrap();
    }

    #[test]
    fn a_sealed_heartbeat_moves_the_address_only_after_a_round_trip() {
        let home = SocketAddr::from(([198, 18, 0, 1], 1));
        let mut na = table(1, 1, 2, 9, true);
        let mut nb = table(2, 1, 1, 9, false);
        heartbeat(&mut na, 1, 2, &mut nb, home);
        assert_eq!(nb.get(LinkId(1)).unwrap().addr, home);
        // a, holding the key, sends from a forged source: b challenges it, does not move.
        let victim = SocketAddr::from(([198, 18, 0, 99], 6784));
        heartbeat(&mut na, 1, 2, &mut nb, victim);
        assert_eq!(nb.get(LinkId(1)).unwrap().addr, home);
        assert_eq!(nb.candidate(LinkId(1)), Some(victim));
        // a never sees the challenge (it went to the victim), so more forged heartbeats fail.
        heartbeat(&mut na, 1, 2, &mut nb, victim);
        assert_eq!(nb.get(LinkId(1)).unwrap().addr, home);
        // a really moves (its NAT rebinds): b challenges the new address, a answers from it.
        let moved = SocketAddr::from(([198, 18, 0, 1], 2));
        heartbeat(&mut na, 1, 2, &mut nb, moved);
        assert_eq!(nb.candidate(LinkId(1)), Some(moved));
        heartbeat(
            &mut nb,
            2,
            1,
            &mut na,
            SocketAddr::from(([198, 18, 0, 2], 1)),
        );
        heartbeat(&mut na, 1, 2, &mut nb, moved);
        assert_eq!(nb.get(LinkId(1)).unwrap().addr, moved);
        assert_eq!(nb.candidate(LinkId(1)), None);
    }
}
