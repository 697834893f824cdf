//! The neighbour table the data-port targets feed: node 2 with one link to node 1 at
//! 198.18.0.1:6784, sealed with `cipher` when `secret` is given.

use std::net::SocketAddr;

use mesh::{
    switch::{
        LinkId, ShortId,
        seal::{Cipher, LinkKeys, LinkSecret},
    },
    tap::{LinkSpec, neighbours::Neighbours},
};

pub const FROM: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 1)),
    6784,
);

pub fn one_link(secret: Option<LinkSecret>, cipher: Cipher) -> Neighbours {
    let mut nb = Neighbours::new(secret.is_some(), 1422, 1280);
    nb.set_me(ShortId::from_wire(2));
    nb.add_link(
        LinkId(1),
        LinkSpec {
            peer: ShortId::from_wire(1),
            addr: FROM,
            secret: secret.map(|secret| LinkKeys {
                secret,
                i_dialed: false,
                cipher,
            }),
            peer_kernel: false,
        },
        0,
    );
    nb
}
