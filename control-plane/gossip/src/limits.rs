//! What gossip accepts. Every member passes on what it hears, so without bounds one member
//! (or one bug) could grow every node's state, messages and dial list without limit, or freeze
//! an entry by giving it a version nobody can exceed.

use mesh_proto::{Message, v1::PeerEntry};

use crate::{PeerId, SHORT_ID_ATTEMPTS, SHORT_ID_FLOOD, short_id_candidate};

#[derive(Clone, Debug)]
pub struct Limits {
    /// Entries kept (peers in one mesh).
    pub max_entries: usize,
    /// Links in one entry (its control connections).
    pub max_links: usize,
    /// Addresses one entry advertises (each becomes a dial target elsewhere).
    pub max_addresses: usize,
    /// Networks one peer created, and networks one peer has something attached to.
    pub max_networks: usize,
    pub max_networks_in_use: usize,
    /// Address rings one entry carries a view of (networks it allocates in), and per ring
    /// its tokens, its members, and the tombstones one member acknowledges.
    pub max_rings: usize,
    pub max_ring_tokens: usize,
    pub max_ring_members: usize,
    pub max_ring_acks: usize,
    /// Bytes of a name, and of an address string.
    pub max_name_bytes: usize,
    pub max_address_bytes: usize,
    /// How far ahead of our clock a version may be (versions are the owner's wall-clock
    /// milliseconds): clocks disagree a little, not by days.
    pub max_future_ms: u64,
    /// Bytes of the owner's public key and of its signature (an RSA-4096 key, the largest in
    /// use, is 550 bytes of SubjectPublicKeyInfo and 512 of signature).
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 4096,
            max_links: 256,
            max_addresses: 16,
            max_networks: 16,
            max_networks_in_use: 256,
            max_rings: 8,
            max_ring_tokens: 256,
            max_ring_members: 128,
            max_ring_acks: 16,
            max_name_bytes: 64,
            max_address_bytes: 64,
            max_future_ms: 10 * 60 * 1000,
            max_key_bytes: 600,
        }
    }
}

/// Why an entry was refused; each reason is counted (`meshctl status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Its version is further ahead of our clock than clocks disagree.
    FutureVersion,
    /// Too many links, addresses or networks, or a name or address too long.
    Oversize,
    /// It claims the flood id as its short id.
    ReservedShortId,
    /// Its short id is none its owner may pick (not one of the candidates derived from its
    /// peer id): a claim on somebody else's.
    ForeignShortId,
    /// It is not signed by the key behind its id: a member speaking for another.
    BadSignature,
    /// We already keep as many entries as we allow.
    TooManyEntries,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::FutureVersion,
        Refusal::Oversize,
        Refusal::ReservedShortId,
        Refusal::ForeignShortId,
        Refusal::BadSignature,
        Refusal::TooManyEntries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::FutureVersion => "gossip_refused_future_version",
            Refusal::Oversize => "gossip_refused_oversize",
            Refusal::ReservedShortId => "gossip_refused_reserved_short_id",
            Refusal::ForeignShortId => "gossip_refused_foreign_short_id",
            Refusal::BadSignature => "gossip_refused_bad_signature",
            Refusal::TooManyEntries => "gossip_refused_too_many_entries",
        }
    }
}

impl Limits {
    /// Whether `e` may be stored and passed on, judged at `now_ms` (entry count and signature
    /// aside: both cost more and are checked only for entries newer than what we hold).
    pub fn check(&self, e: &PeerEntry, now_ms: u64) -> Result<(), Refusal> {
        if e.version > now_ms.saturating_add(self.max_future_ms) {
            return Err(Refusal::FutureVersion);
        }
        if e.short_id == SHORT_ID_FLOOD {
            return Err(Refusal::ReservedShortId);
        }
        let oversize = e.name.len() > self.max_name_bytes
            || e.links.len() > self.max_links
            || e.addresses.len() > self.max_addresses
            || e.addresses.iter().any(|a| a.len() > self.max_address_bytes)
            || e.networks.len() > self.max_networks
            || e.networks_in_use.len() > self.max_networks_in_use
            || e.rings.len() > self.max_rings
            || e.wants_space.len() > self.max_rings
            || e.rings.iter().any(|r| {
                r.tokens.len() > self.max_ring_tokens
                    || r.members.len() > self.max_ring_members
                    || r.members.iter().any(|m| m.acked.len() > self.max_ring_acks)
            })
            || e.networks.iter().any(|n| {
                n.name.len() > self.max_name_bytes || n.subnet.len() > self.max_address_bytes
            })
            || e.links
                .iter()
                .any(|l| l.observed_addr.len() > self.max_address_bytes)
            || e.signature.as_ref().is_some_and(|s| {
                s.public_key.len() > self.max_key_bytes || s.value.len() > self.max_key_bytes
            });
        if oversize {
            return Err(Refusal::Oversize);
        }
        if !(0..SHORT_ID_ATTEMPTS).any(|a| short_id_candidate(PeerId(e.id), a) == e.short_id) {
            return Err(Refusal::ForeignShortId);
        }
        Ok(())
    }

    /// The largest encoded entry these limits allow: updates are cut into messages of at most
    /// [`MESSAGE_BUDGET`] bytes, and an entry larger than that could not travel at all.
    pub fn max_entry_bytes(&self) -> usize {
        let link = 8 + self.max_address_bytes + 16;
        16 + self.max_name_bytes
            + 16
            + self.max_links * link
            + self.max_addresses * (self.max_address_bytes + 4)
            + 16
            + 2 * (self.max_key_bytes + 4)
            + self.max_networks * (2 * self.max_address_bytes + 32)
            + self.max_networks_in_use * 9
            + self.max_rings
                * (24
                    + self.max_ring_tokens * 40
                    + self.max_ring_members * (48 + self.max_ring_acks * 9))
            + self.max_rings * 9
    }
}

/// Encoded bytes of entries per update message: well under the 8 MiB a frame may have.
pub const MESSAGE_BUDGET: usize = 1024 * 1024;

/// Cuts `entries` into groups whose encoding stays within [`MESSAGE_BUDGET`].
pub fn chunk(entries: Vec<PeerEntry>) -> Vec<Vec<PeerEntry>> {
    let mut out = Vec::new();
    let (mut cur, mut bytes) = (Vec::new(), 0);
    for e in entries {
        let len = e.encoded_len() + 4;
        if !cur.is_empty() && bytes + len > MESSAGE_BUDGET {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += len;
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use mesh_proto::v1::Link;

    use super::*;

    fn entry() -> PeerEntry {
        PeerEntry {
            id: 7,
            name: "node".into(),
            version: 1_000,
            links: vec![],
            addresses: vec!["198.18.0.1:6783".into()],
            short_id: 7,
            signature: None,
            networks: Vec::new(),
            networks_in_use: Vec::new(),
            rings: Vec::new(),
            wants_space: Vec::new(),
        }
    }

    #[test]
    fn entries_beyond_the_limits_are_refused_by_reason() {
        let l = Limits::default();
        assert_eq!(l.check(&entry(), 1_000), Ok(()));
        let future = PeerEntry {
            version: u64::MAX,
            ..entry()
        };
        assert_eq!(l.check(&future, 1_000), Err(Refusal::FutureVersion));
        let skewed = PeerEntry {
            version: 1_000 + l.max_future_ms,
            ..entry()
        };
        assert_eq!(
            l.check(&skewed, 1_000),
            Ok(()),
            "a clock a little ahead is fine"
        );
        let flood = PeerEntry {
            short_id: SHORT_ID_FLOOD,
            ..entry()
        };
        assert_eq!(l.check(&flood, 1_000), Err(Refusal::ReservedShortId));
        let foreign = PeerEntry {
            short_id: 8,
            ..entry()
        };
        assert_eq!(l.check(&foreign, 1_000), Err(Refusal::ForeignShortId));
        let moved = PeerEntry {
            short_id: short_id_candidate(PeerId(7), SHORT_ID_ATTEMPTS - 1),
            ..entry()
        };
        assert_eq!(
            l.check(&moved, 1_000),
            Ok(()),
            "a moved short id is its own"
        );
        for big in [
            PeerEntry {
                name: "x".repeat(65),
                ..entry()
            },
            PeerEntry {
                addresses: vec!["a".into(); 17],
                ..entry()
            },
            PeerEntry {
                links: vec![Link::default(); 257],
                ..entry()
            },
            PeerEntry {
                addresses: vec!["1".repeat(65)],
                ..entry()
            },
            PeerEntry {
                signature: Some(mesh_proto::v1::EntrySignature {
                    public_key: vec![0; 601],
                    ..Default::default()
                }),
                ..entry()
            },
        ] {
            assert_eq!(l.check(&big, 1_000), Err(Refusal::Oversize));
        }
    }

    #[test]
    fn the_largest_allowed_entry_fits_a_message_and_updates_are_cut_to_size() {
        let l = Limits::default();
        let largest = PeerEntry {
            name: "n".repeat(l.max_name_bytes),
            links: vec![
                Link {
                    peer: u64::MAX,
                    observed_addr: "a".repeat(l.max_address_bytes),
                    datapath_down: true,
                };
                l.max_links
            ],
            addresses: vec!["a".repeat(l.max_address_bytes); l.max_addresses],
            signature: Some(mesh_proto::v1::EntrySignature {
                public_key: vec![0xff; l.max_key_bytes],
                scheme: u32::MAX,
                value: vec![0xff; l.max_key_bytes],
            }),
            ..entry()
        };
        assert_eq!(l.check(&largest, 1_000), Ok(()));
        assert!(largest.encoded_len() <= l.max_entry_bytes());
        assert!(l.max_entry_bytes() < MESSAGE_BUDGET);
        let all = vec![largest; 200];
        let chunks = chunk(all);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 200);
        for c in &chunks {
            let bytes: usize = c.iter().map(|e| e.encoded_len() + 4).sum();
            assert!(bytes <= MESSAGE_BUDGET);
        }
    }
}
