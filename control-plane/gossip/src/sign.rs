//! Who may speak for an entry. Every member passes entries on, so an entry must carry proof
//! that its owner made it: a signature by the key behind its peer id. The gossip state machine
//! stays free of cryptography; it asks an [`EntryAuth`] (meshd's uses the node's TLS key, see
//! `mesh::entry_sign`) to sign our own entry and to check everyone else's.

use std::fmt;

use mesh_proto::{
    Message,
    v1::{EntrySignature, PeerEntry},
};

/// Signs our own entry and checks the others'.
pub trait EntryAuth: Send + Sync + fmt::Debug {
    /// Fills in `entry.signature` for its current contents.
    fn sign(&self, entry: &mut PeerEntry);
    /// Whether `entry` is signed by the key its id is derived from.
    fn verify(&self, entry: &PeerEntry) -> bool;
}

/// Domain separation: these bytes are signed for no other purpose.
const CONTEXT: &[u8] = b"mesh gossip entry v1\0";

/// The bytes an entry's signature covers (docs/wire-format.md, "Signed entries"): a context
/// string, then the entry's protobuf encoding without its signature. prost encodes fields in
/// tag order and omits defaults, so every version of meshd speaking this protocol produces the
/// same bytes for the same entry.
pub fn signed_message(entry: &PeerEntry) -> Vec<u8> {
    let unsigned = PeerEntry {
        signature: None,
        ..entry.clone()
    };
    let mut out = Vec::with_capacity(CONTEXT.len() + unsigned.encoded_len());
    out.extend_from_slice(CONTEXT);
    unsigned
        .encode(&mut out)
        .expect("a Vec grows to fit the encoding");
    out
}

/// A stand-in for simulations and unit tests of the pure logic: a checksum keyed by the entry's
/// id, the size of an Ed25519 key and signature, so message sizes stay realistic. It catches an
/// entry changed after signing or claimed by another id, but anyone can compute it: it is
/// **not** a signature and meshd never uses it.
#[derive(Debug, Default)]
pub struct Checksum;

/// TLS 1.3's code for Ed25519, what the stand-in claims to be.
const STAND_IN_SCHEME: u32 = 0x0807;

impl Checksum {
    fn value(entry: &PeerEntry) -> Vec<u8> {
        // FNV-1a over the signed bytes, spread to 64 bytes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ entry.id;
        for b in signed_message(entry) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (0..8u64)
            .flat_map(|i| h.rotate_left(i as u32 * 8).to_be_bytes())
            .collect()
    }

    fn key(id: u64) -> Vec<u8> {
        let mut k = vec![0u8; 44];
        k[..8].copy_from_slice(&id.to_be_bytes());
        k
    }
}

impl EntryAuth for Checksum {
    fn sign(&self, entry: &mut PeerEntry) {
        entry.signature = Some(EntrySignature {
            public_key: Self::key(entry.id),
            scheme: STAND_IN_SCHEME,
            value: Self::value(entry),
        });
    }

    fn verify(&self, entry: &PeerEntry) -> bool {
        entry
            .signature
            .as_ref()
            .is_some_and(|s| s.public_key == Self::key(entry.id) && s.value == Self::value(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_bytes_leave_out_the_signature_and_nothing_else() {
        let mut e = PeerEntry {
            id: 7,
            name: "a".into(),
            version: 3,
            short_id: 7,
            ..PeerEntry::default()
        };
        let before = signed_message(&e);
        Checksum.sign(&mut e);
        assert_eq!(signed_message(&e), before);
        assert!(Checksum.verify(&e));
        e.version += 1;
        assert_ne!(signed_message(&e), before);
        assert!(!Checksum.verify(&e), "a changed entry fails");
    }
}
