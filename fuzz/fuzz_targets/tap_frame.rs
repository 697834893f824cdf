//! A frame from the TAP device (a container's packet, with its virtio-net header): making it
//! wire-ready (checksum, TCP segmentation), the oversize answer, and receive coalescing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::switch::{
    mtu,
    offload::{Coalescer, VNET_HDR_LEN, VnetHdr, wire_frames},
};

fuzz_target!(|data: &[u8]| {
    if data.len() > VNET_HDR_LEN
        && let Some(hdr) = VnetHdr::parse(&data[..VNET_HDR_LEN])
    {
        let mut frame = data[VNET_HDR_LEN..].to_vec();
        let mut scratch = Vec::new();
        let _ = wire_frames(&hdr, &mut frame, &mut scratch, |f| {
            let mut out = Vec::new();
            let _ = mtu::handle(f, 1280, &mut out);
        });
    }
    let mut c = Coalescer::default();
    for chunk in data.chunks(1514) {
        if !c.push(chunk) {
            let _ = c.finish();
        }
    }
    let _ = c.finish();
});
