//! A datagram on the data port from anyone: the frame header, a heartbeat's payload, and the
//! neighbour table's whole acceptance path (plaintext mesh).
#![no_main]

#[path = "neighbour_table.rs"]
mod neighbour_table;

use libfuzzer_sys::fuzz_target;
use mesh::switch::{heartbeat::Payload, wire::Header};

fuzz_target!(|data: &[u8]| {
    if let Ok((_, inner)) = Header::parse(data) {
        let _ = Payload::parse(inner);
    }
    let mut nb = neighbour_table::one_link(None);
    let mut d = data.to_vec();
    let _ = nb.accept(&mut d, neighbour_table::FROM);
});
