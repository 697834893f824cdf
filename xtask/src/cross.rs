//! `cargo xtask cross`: meshd and meshctl for Raspberry Pis and other ARM boards.
//!
//! The binaries are static (the C library linked in), so one file runs on any Linux of the
//! board's kind, whatever its C library's version: old Raspberry Pi OS releases are the point of
//! the TAP datapath. Each build is checked by running it under qemu-user with the CPU of the
//! oldest board it is for; the ARMv6 one runs on the Pi 1/Zero's ARM1176, which faults on any
//! ARMv7-only instruction.
//!
//! Why ARMv6 is built the way it is: Rust ships no standard library for its ARMv6 target here,
//! so it is compiled from source (`-Z build-std`, the nightly toolchain); and Debian's only C
//! library free of ARMv7 code is armel's (ARMv5TE, soft-float calling convention), so the
//! ARMv6 build is `arm-unknown-linux-gnueabi`. meshd does next to no floating point; the
//! calling convention costs it nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, exec, probe, workspace_root};

/// One ARM build.
pub struct Target {
    /// The name users pick (`--target`) and the directory the binaries land in.
    pub name: &'static str,
    /// What it runs on.
    pub boards: &'static str,
    pub triple: &'static str,
    /// Debian's cross compiler: the linker, and the C compiler of `ring`'s C and assembly.
    pub gcc: &'static str,
    /// The Debian packages that provide `gcc` and the C library to link.
    pub apt: &'static [&'static str],
    /// Whether the standard library is compiled from source (no prebuilt one for the target).
    pub build_std: bool,
    /// qemu-user and the CPU of the oldest board the build is for.
    pub qemu: &'static str,
    pub cpu: &'static str,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "aarch64",
        boards: "Raspberry Pi 3, 4, 5 and Zero 2 with a 64-bit OS; ARM cloud VMs",
        triple: "aarch64-unknown-linux-gnu",
        gcc: "aarch64-linux-gnu-gcc",
        // The C library's headers are only a Recommends of the compiler, and setup installs
        // without those.
        apt: &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
        build_std: false,
        qemu: "qemu-aarch64-static",
        cpu: "cortex-a53",
    },
    Target {
        name: "armv7",
        boards: "Raspberry Pi 2, 3, 4 and Zero 2 with a 32-bit OS",
        triple: "armv7-unknown-linux-gnueabihf",
        gcc: "arm-linux-gnueabihf-gcc",
        apt: &["gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross"],
        build_std: false,
        qemu: "qemu-arm-static",
        cpu: "cortex-a7",
    },
    Target {
        name: "armv6",
        boards: "Raspberry Pi 1 and Zero (ARM1176), and every board above",
        triple: "arm-unknown-linux-gnueabi",
        gcc: "arm-linux-gnueabi-gcc",
        apt: &["gcc-arm-linux-gnueabi", "libc6-dev-armel-cross"],
        build_std: true,
        qemu: "qemu-arm-static",
        cpu: "arm1176",
    },
];

/// Debian packages every cross build needs (compilers, C libraries, qemu-user).
pub fn apt_packages() -> impl Iterator<Item = &'static str> {
    TARGETS
        .iter()
        .flat_map(|t| t.apt.iter().copied())
        .chain(["qemu-user-static"])
}

/// Rust targets whose standard library rustup installs (the others are built from source).
pub fn rustup_targets() -> impl Iterator<Item = &'static str> {
    TARGETS.iter().filter(|t| !t.build_std).map(|t| t.triple)
}

#[derive(clap::Args)]
pub struct Args {
    /// Which builds (default: all): aarch64, armv7, armv6.
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(["aarch64", "armv7", "armv6"]))]
    targets: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
        .collect();
    for t in &chosen {
        let dir = build(t)?;
        check(t, &dir)?;
    }
    println!();
    for t in &chosen {
        let dir = out_dir(t);
        println!("{:<8} {}  ({})", t.name, dir.display(), t.boards);
    }
    Ok(())
}

/// Where the static meshd and meshctl of `t` land.
pub fn out_dir(t: &Target) -> PathBuf {
    workspace_root().join("target/cross").join(t.name)
}

/// The build called `name`.
pub fn target(name: &str) -> Result<&'static Target> {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .with_context(|| format!("no cross build called {name}"))
}

/// Builds static, stripped release binaries of meshd and meshctl for `t` into [`out_dir`].
pub fn build(t: &Target) -> Result<PathBuf> {
    if probe(Command::new(t.gcc).arg("--version")).is_none() {
        bail!(
            "{} is missing (Debian package {}): run `cargo xtask setup`",
            t.gcc,
            t.apt.join(", ")
        );
    }
    let env_triple = t.triple.replace('-', "_");
    let upper = env_triple.to_uppercase();
    let build_dir = workspace_root().join("target/cross/build");
    let mut c = if t.build_std {
        // Through rustup's proxy, which understands `+nightly` ($CARGO is stable's own cargo).
        let mut c = Command::new("cargo");
        c.current_dir(workspace_root()).arg("+nightly");
        c
    } else {
        cargo()
    };
    c.args([
        "build",
        "--release",
        "-p",
        "mesh",
        "--bins",
        "--target",
        t.triple,
    ])
    .arg("--target-dir")
    .arg(&build_dir);
    if t.build_std {
        c.args(["-Z", "build-std=std,panic_abort"]);
    }
    // Per-target variables: build scripts and proc macros stay host code.
    c.env(format!("CARGO_TARGET_{upper}_LINKER"), t.gcc)
        .env(
            format!("CARGO_TARGET_{upper}_RUSTFLAGS"),
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env(format!("CC_{env_triple}"), t.gcc)
        .env(format!("AR_{env_triple}"), t.gcc.replace("-gcc", "-ar"));
    // The stable cargo running this task exports its toolchain; the ARMv6 build picks its own.
    c.env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    println!("cross: building {} ({})", t.name, t.triple);
    exec(&mut c)?;
    let from = build_dir.join(t.triple).join("release");
    let to = out_dir(t);
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    for bin in ["meshd", "meshctl"] {
        std::fs::copy(from.join(bin), to.join(bin))
            .with_context(|| format!("copying {bin} into {}", to.display()))?;
    }
    Ok(to)
}

/// Runs both binaries of `t` under qemu-user on its oldest CPU: an instruction that CPU lacks,
/// or a missing dynamic library, fails here.
pub fn check(t: &Target, dir: &Path) -> Result<()> {
    for bin in ["meshd", "meshctl"] {
        let path = dir.join(bin);
        let out = Command::new(t.qemu)
            .args(["-cpu", t.cpu])
            .arg(&path)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} (`cargo xtask setup` installs it)", t.qemu))?;
        let printed = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !printed.starts_with(bin) {
            bail!(
                "{} does not run on {} ({}): {}{}",
                path.display(),
                t.cpu,
                out.status,
                printed,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "cross: {} runs on {}: {}",
            path.display(),
            t.cpu,
            printed.trim()
        );
    }
    // A dynamically linked executable names its loader in a PT_INTERP header.
    let headers = probe(
        Command::new("readelf")
            .arg("--program-headers")
            .arg(dir.join("meshd")),
    )
    .context("readelf (binutils) could not read meshd")?;
    if headers.contains("INTERP") {
        bail!(
            "{}/meshd is not static: it needs a dynamic loader",
            dir.display()
        );
    }
    Ok(())
}
