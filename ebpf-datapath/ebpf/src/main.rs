//! mesh's eBPF programs. One object, several programs; `meshd` loads it with aya.
//!
//! Module names follow the packet path: `port_ingress` (frames a container sends, before the
//! bridge), `bridge_egress` (frames the local bridge sends to the
//! mesh), `underlay_ingress` (mesh frames arriving on the underlay NIC), `underlay_rx` (the
//! opt-in observe-only XDP counter).
#![no_std]
#![no_main]

mod bridge_egress;
mod encap;
mod flood;
mod maps;
mod outer;
mod packet;
mod port_ingress;
mod underlay_ingress;
mod underlay_rx;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: nothing in this crate can panic (see style.md).
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
