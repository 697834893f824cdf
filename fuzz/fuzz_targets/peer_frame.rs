//! A control-stream frame from a peer (hello, PAKE, gossip), decoded and, when it is gossip,
//! each entry's signature checked with meshd's real verifier (it parses a public key from the
//! wire), then taken in by the gossip state machine with its limits.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mesh::{entry_sign::EntrySigner, identity::Identity};
use mesh_gossip::{EntryAuth, Gossip, PeerEntry, PeerId};
use mesh_proto::{
    Message,
    v1::{PeerFrame, gossip_message, peer_frame},
};

/// Accepts every entry: random bytes almost never carry a valid signature, and the state
/// machine behind the check must be reached too. The real check runs on each entry first.
#[derive(Debug)]
struct AcceptAll;

impl EntryAuth for AcceptAll {
    fn sign(&self, _: &mut PeerEntry) {}
    fn verify(&self, _: &PeerEntry) -> bool {
        true
    }
}

fn signer() -> &'static EntrySigner {
    static SIGNER: OnceLock<EntrySigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mesh-fuzz-peer-frame-{}", std::process::id()));
        let ident = Identity::load_or_create(&dir).expect("an identity in a temp dir");
        let signer = EntrySigner::new(&ident.cert, &ident.private_key()).expect("a signer");
        let _ = std::fs::remove_dir_all(&dir);
        signer
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = PeerFrame::decode(data) else {
        return;
    };
    if let Some(peer_frame::Kind::Gossip(msg)) = frame.kind {
        if let Some(gossip_message::Kind::Update(u)) = &msg.kind {
            for e in &u.entries {
                let _ = signer().verify(e);
            }
        }
        let mut cfg = mesh_gossip::sim::config();
        cfg.auth = Arc::new(AcceptAll);
        let mut g = Gossip::new(PeerId(1), "me", vec![], 1_000_000, cfg);
        g.link_up(PeerId(2), None, 1_000_000);
        g.receive(PeerId(2), msg, 1_000_000);
        let _ = g.routes();
        let _ = g.take_outbox();
    }
});
