//! `cargo xtask test`: unit tests and network-namespace tests.
//!
//! The namespace tests need root (they create namespaces, veths, bridges, BPF programs) and the
//! binaries `meshd`/`meshctl` built next to the test executables; this task arranges both.

use anyhow::{Result, bail};

use crate::{
    cmd::{cargo, exec},
    cross,
};

/// Where tests/tests/arm_qemu.rs finds the ARMv6 meshd and meshctl.
const ARMV6_BIN_DIR: &str = "MESH_ARMV6_BIN_DIR";

#[derive(clap::Args)]
pub struct Args {
    /// Run the fault suite instead (tests/tests/faults.rs: link flaps, SIGKILL and SIGSTOP of
    /// meshd, partitions, hosts joining and leaving, an underlay address change; each followed
    /// by recovery, duplicate and storm checks). About 5 minutes.
    #[arg(long)]
    faults: bool,
    /// Only run tests whose name contains this string.
    filter: Option<String>,
    /// Extra arguments passed to the test binaries (after `--`).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the namespace tests need root: run `sudo -E cargo xtask test`");
    }
    // The end-to-end tests start the real binaries; build them first so they are current.
    exec(cargo().args(["build", "--bins"]))?;
    let mut test = cargo();
    if !args.faults {
        // tests/tests/arm_qemu.rs meshes the ARMv6 (Raspberry Pi 1/Zero) build, run by
        // qemu-user, with x86 hosts.
        let armv6 = cross::target("armv6")?;
        let dir = cross::build(armv6)?;
        cross::check(armv6, &dir)?;
        test.env(ARMV6_BIN_DIR, &dir);
    }
    if args.faults {
        test.args(["test", "-p", "mesh-tests", "--test", "faults"]);
    } else {
        test.args(["test", "--workspace", "--exclude", "mesh-ebpf"]);
    }
    if let Some(f) = &args.filter {
        test.arg(f);
    }
    test.arg("--").args(&args.test_args);
    if args.faults {
        // One at a time: each measures CPU and gossip at rest, which a neighbour's fault
        // would disturb.
        test.args(["--ignored", "--test-threads=1", "--nocapture"]);
    }
    exec(&mut test)
}
