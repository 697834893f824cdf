//! A control-stream frame from a peer (hello, PAKE, gossip), decoded and, when it is gossip,
//! taken in by the gossip state machine with its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_gossip::{Gossip, PeerId};
use mesh_proto::{
    Message,
    v1::{PeerFrame, peer_frame},
};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = PeerFrame::decode(data) else {
        return;
    };
    if let Some(peer_frame::Kind::Gossip(msg)) = frame.kind {
        let mut g = Gossip::new(PeerId(1), "me", vec![], 1_000_000, mesh_gossip::sim::config());
        g.link_up(PeerId(2), None, 1_000_000);
        g.receive(PeerId(2), msg, 1_000_000);
        let _ = g.routes();
        let _ = g.take_outbox();
    }
});
