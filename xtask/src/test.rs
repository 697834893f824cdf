//! `cargo xtask test`: unit tests and network-namespace tests.
//!
//! The namespace tests need root (they create namespaces, veths, bridges, BPF programs) and the
//! binaries `meshd`/`meshctl` built next to the test executables; this task arranges both.

use anyhow::{Result, bail};

use crate::cmd::{cargo, exec};

#[derive(clap::Args)]
pub struct Args {
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
    test.args(["test", "--workspace", "--exclude", "mesh-ebpf"]);
    if let Some(f) = &args.filter {
        test.arg(f);
    }
    test.arg("--").args(&args.test_args);
    exec(&mut test)
}
