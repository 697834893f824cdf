//! `cargo xtask setup`: make a fresh Debian 12 machine of this project's kind able to build and
//! test mesh. Every step checks first and only acts when something is missing, so a second run
//! takes seconds. The bpf-linker recipe links it against the nightly toolchain's own libLLVM.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd::{exec, probe};

/// Debian packages the tests and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "nftables",
    "tcpdump",
    "bpftool",
    "procps",
    // tests/tests/slow_disk.rs makes fsync slow with strace's fault injection.
    "strace",
    // The boringtun reference lab (`cargo xtask bench`) configures boringtun with `wg`.
    "wireguard-tools",
    // More userspace references for `cargo xtask bench`: wireguard-go and tinc 1.0.
    "wireguard-go",
    "tinc",
    // The bench chart's font.
    "fonts-dejavu-core",
    // tests/tests/systemd_unit.rs checks the unit with `systemd-analyze verify`.
    "systemd",
    // setpriv: tests run meshd with only some capabilities.
    "util-linux",
    // promtool: tests/tests/metrics.rs lints a scrape with `promtool check metrics`.
    "prometheus",
    // `cargo xtask package`: the .deb is checked with lintian; objdump lists its libraries.
    "lintian",
    "binutils",
    // tests/tests/docker.rs runs a real dockerd (one per lab host) with a busybox image.
    "docker.io",
    "busybox-static",
    // tests/tests/cni.rs runs mesh-cni with Debian's host-local as its IPAM plugin.
    "containernetworking-plugins",
    // CI checks vagrant/: `vagrant validate`, shellcheck.
    "vagrant",
    "shellcheck",
];

/// The eBPF crate is built with the plain `nightly` toolchain that is on the machine.
const NIGHTLY: &str = "nightly";
/// bpf-linker must link against the same LLVM major as that nightly's rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// The boringtun-cli release the bench reference uses.
const BORINGTUN_VERSION: &str = "0.7.1";

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    rust_targets()?;
    bpf_linker()?;
    bpffs()?;
    boringtun()?;
    cargo_fuzz()?;
    println!("setup: everything is in place");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        // `cargo xtask cross` (ARM builds; `cargo xtask test` runs the ARMv6 one under qemu).
        .chain(crate::cross::apt_packages())
        .filter(|p| {
            probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    require_root("install Debian packages")?;
    exec(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = probe(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .with_context(|| {
            format!(
                "the `{NIGHTLY}` toolchain is missing; install it with \
                 `rustup toolchain install {NIGHTLY} --profile minimal`"
            )
        })?;
    Ok(PathBuf::from(out.trim()))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        println!("setup: rust-src for {NIGHTLY} present");
        return Ok(());
    }
    println!("setup: adding rust-src to {NIGHTLY}");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The standard libraries of the ARM builds rustup ships (`cargo xtask cross`).
fn rust_targets() -> Result<()> {
    let installed = probe(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is missing")?;
    let missing: Vec<&str> = crate::cross::rustup_targets()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        println!("setup: rust targets for the ARM builds present");
        return Ok(());
    }
    println!("setup: adding rust targets {}", missing.join(" "));
    exec(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

fn bpf_linker_works() -> bool {
    probe(Command::new("bpf-linker").arg("--version")).is_some()
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {NIGHTLY}'s libLLVM (about a minute)"
    );
    let lib = nightly_sysroot()?.join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .with_context(|| format!("no libLLVM.so.*-nightly in {}", lib.display()))?;
    // A stable prefix: bpf-linker keeps an rpath to it, so it must outlive this run.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/bpf-linker-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [
        llvm.file_name()
            .expect("read_dir entries have names")
            .to_owned(),
        "libLLVM.so".into(),
    ] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.display()))?;
    }
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails; check that {} points at \
             {NIGHTLY}'s libLLVM and that ~/.cargo/bin is on PATH",
            prefix_lib.display()
        );
    }
    Ok(())
}

/// boringtun-cli, the userspace WireGuard that `cargo xtask bench` measures as the encrypted
/// reference (`bench/ref_labs.rs`).
fn boringtun() -> Result<()> {
    if probe(Command::new("boringtun-cli").arg("--version")).is_some() {
        println!("setup: boringtun-cli present");
        return Ok(());
    }
    println!(
        "setup: installing boringtun-cli {BORINGTUN_VERSION} (bench reference; a few minutes)"
    );
    exec(Command::new("cargo").args([
        "install",
        "boringtun-cli",
        "--locked",
        "--version",
        BORINGTUN_VERSION,
    ]))
}

/// cargo-fuzz, for `cargo xtask fuzz` (the fuzz targets build with the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> Result<()> {
    if probe(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (for `cargo xtask fuzz`)");
    exec(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    require_root("mount bpffs")?;
    println!("setup: mounting bpffs at /sys/fs/bpf");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("need root to {what}: run `sudo cargo xtask setup`");
    }
    Ok(())
}
