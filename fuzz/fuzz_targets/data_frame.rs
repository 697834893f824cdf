//! A datagram on the data port from anyone: the frame header, a heartbeat's payload, a
//! data-path echo (decoded, routed, re-encoded) and the neighbour table's whole acceptance path
//! (plaintext mesh).
#![no_main]

#[path = "neighbour_table.rs"]
mod neighbour_table;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mesh::switch::{
    ShortId,
    echo::{self, Echo},
    forward::Table,
    heartbeat::Payload,
    wire::Header,
};

fuzz_target!(|data: &[u8]| {
    if let Ok((h, inner)) = Header::parse(data) {
        let _ = Payload::parse(inner);
        if let Some(e) = Echo::parse(inner) {
            let mut again = Vec::new();
            e.write(&mut again);
            assert_eq!(again, inner, "an echo reads back as written");
            let me = ShortId::from_wire(2);
            let table = Table {
                me: Some(me),
                next_hop: [(ShortId::from_wire(1), ShortId::from_wire(1))].into(),
                ..Table::default()
            };
            let _ = echo::on_echo(&table, h, e);
        }
    }
    let mut nb = neighbour_table::one_link(None, mesh::switch::seal::Cipher::ChaCha20Poly1305);
    let mut d = data.to_vec();
    let _ = nb.accept(&mut d, neighbour_table::FROM, Instant::now());
});
