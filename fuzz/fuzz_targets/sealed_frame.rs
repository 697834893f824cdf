//! A sealed datagram from anyone, opened with a link's keys: forged, truncated or replayed
//! input must be refused, never panic.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use mesh::{
    switch::{LinkId, ShortId, seal::LinkSecret},
    tap::{LinkSpec, neighbours::Neighbours},
};

fuzz_target!(|data: &[u8]| {
    let mut nb = Neighbours::new(true, 1422, 1280);
    nb.set_me(ShortId::from_wire(2));
    let from = SocketAddr::from(([198, 18, 0, 1], 6784));
    nb.add_link(
        LinkId(1),
        LinkSpec {
            peer: ShortId::from_wire(1),
            addr: from,
            secret: Some((LinkSecret([7; 32]), false)),
            peer_kernel: false,
        },
        0,
    );
    let mut d = data.to_vec();
    let _ = nb.accept(&mut d, from);
});
