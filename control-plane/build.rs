//! Builds the eBPF object (ebpf-datapath/ebpf) with the nightly toolchain and bpf-linker, via
//! aya-build, into OUT_DIR; src/datapath embeds it. A missing toolchain is reported as one line
//! that names the command that installs it.

use std::{path::Path, process::Command};

const SETUP_HINT: &str = "run `cargo xtask setup`";

fn fail(what: &str) -> ! {
    println!("cargo::error=eBPF toolchain missing: {what}; {SETUP_HINT}");
    std::process::exit(1);
}

fn check_toolchain() {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| fail("the `nightly` toolchain is not installed"));
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        fail("rust-src is not installed for `nightly`");
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !linker_ok {
        fail("bpf-linker is not installed or cannot load its LLVM");
    }
}

fn main() {
    check_toolchain();
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf-datapath/ebpf");
    let root_dir = ebpf.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "mesh-ebpf",
        root_dir,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        println!("cargo::error=building the eBPF datapath failed: {e:#}");
        std::process::exit(1);
    }
}
