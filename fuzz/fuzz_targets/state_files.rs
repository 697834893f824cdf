//! What meshd reads from its state directory: the peer list and the identity key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mesh::agent::parse_peer_list(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh::identity::key_from_pem(text);
    }
});
