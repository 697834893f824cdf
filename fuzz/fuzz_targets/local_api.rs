//! A request on meshd's local API socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::{Message, v1::Request};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode_length_delimited(data);
});
