//! A sealed datagram from anyone, opened with a link's keys: forged, truncated or replayed
//! input must be refused, never panic.
#![no_main]

#[path = "neighbour_table.rs"]
mod neighbour_table;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use mesh::switch::seal::{Cipher, LinkSecret};

fuzz_target!(|data: &[u8]| {
    for cipher in Cipher::ALL {
        let mut nb = neighbour_table::one_link(Some(LinkSecret([7; 32])), cipher);
        let mut d = data.to_vec();
        let _ = nb.accept(&mut d, neighbour_table::FROM, Instant::now());
    }
});
