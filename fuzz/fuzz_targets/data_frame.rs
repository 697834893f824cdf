//! A datagram on the data port from anyone: the frame header, a heartbeat's payload, and the
//! neighbour table's whole acceptance path (plaintext mesh).
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mesh::{
    switch::{LinkId, ShortId, heartbeat::Payload, wire::Header},
    tap::{LinkSpec, neighbours::Neighbours},
};

fuzz_target!(|data: &[u8]| {
    if let Ok((_, inner)) = Header::parse(data) {
        let _ = Payload::parse(inner);
    }
    let mut nb = Neighbours::new(false, 1450, 1280);
    nb.set_me(ShortId::from_wire(2));
    let from = SocketAddr::from(([198, 18, 0, 1], 6784));
    nb.add_link(
        LinkId(1),
        LinkSpec {
            peer: ShortId::from_wire(1),
            addr: from,
            secret: None,
            peer_kernel: false,
        },
        0,
    );
    let mut d = data.to_vec();
    let _ = nb.accept(&mut d, from);
});
