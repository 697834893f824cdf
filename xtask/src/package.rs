//! `cargo xtask package`: the Debian package (`target/package/mesh_<version>_<arch>.deb`) with
//! both binaries, the systemd unit, the commented default configuration, man pages and shell
//! completions; then checks it: lintian (no errors), an install with dpkg into a scratch root
//! (maintainer scripts included), and the installed meshd started in a network namespace with
//! the shipped configuration.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, exec, probe, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Build the package only; skip lintian and the install check.
    #[arg(long)]
    no_check: bool,
}

const DESCRIPTION: &str = "one virtual Ethernet switch across hosts
 mesh joins the Linux bridges of many hosts into one Ethernet segment over an
 authenticated, encrypted QUIC control plane. Plaintext links are forwarded in
 the kernel by eBPF programs; everything else (sealed links, old kernels such
 as a Raspberry Pi's) by meshd through a TAP device. It heals around failed
 links, relays through peers and crosses NAT.
 .
 This package holds meshd (the daemon, run as the meshd systemd service) and
 meshctl (status, peers, routes and the MAC table of a running meshd).";

/// Maintainer scripts. They honour DPKG_ROOT (an install into another root touches no
/// running system) and never start meshd: it needs a password or certificates first.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade restarts a running meshd (its kernel datapath forwards on meanwhile).
    if systemctl is-active --quiet meshd.service; then
        systemctl restart meshd.service || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl stop meshd.service >/dev/null 2>&1 || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "purge" ]; then
    rm -rf "${DPKG_ROOT:-}/var/lib/mesh"
fi
exit 0
"#;

pub fn run(args: Args) -> Result<()> {
    exec(cargo().args(["build", "--release", "--bins", "-p", "mesh"]))?;
    let root = workspace_root();
    let release = root.join("target/release");
    let version = probe(Command::new(release.join("meshd")).arg("--version"))
        .context("running the built meshd")?
        .split_whitespace()
        .nth(1)
        .context("meshd --version printed no version")?
        .to_owned();
    let arch = probe(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg (this task builds a Debian package on Debian)")?
        .trim()
        .to_owned();
    let out_dir = root.join("target/package");
    let stage = out_dir.join(format!("mesh_{version}-1_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    stage_files(&root, &release, &stage, &version, &arch)?;
    let deb = out_dir.join(format!("mesh_{version}-1_{arch}.deb"));
    exec(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    if !args.no_check {
        lintian(&deb)?;
        install_check(&deb)?;
    }
    Ok(())
}

/// Writes `data` to `stage/rel` with `mode`, creating directories (0755).
fn put(stage: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = stage.join(rel);
    let dir = path.parent().expect("a file has a parent");
    fs::create_dir_all(dir)?;
    fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n (no name or time stamp: reproducible, as lintian wants).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("gzip")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn output_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Strips a binary of what a package does not ship (symbols, notes).
fn strip(path: &Path) -> Result<()> {
    exec(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(path),
    )
}

fn stage_files(root: &Path, release: &Path, stage: &Path, version: &str, arch: &str) -> Result<()> {
    // The CNI plugin, where runtimes look for plugins on Debian (containernetworking-plugins).
    let cni = stage.join("usr/lib/cni/mesh-cni");
    fs::create_dir_all(cni.parent().expect("usr/lib/cni"))?;
    fs::copy(release.join("mesh-cni"), &cni)?;
    strip(&cni)?;
    for bin in ["meshd", "meshctl"] {
        let to = stage.join("usr/bin").join(bin);
        fs::create_dir_all(to.parent().expect("usr/bin"))?;
        fs::copy(release.join(bin), &to)?;
        strip(&to)?;
        // Manual pages (section 8: system administration) and completions, from the binaries'
        // own command-line definitions.
        let man = match bin {
            "meshd" => output_of(Command::new(release.join(bin)).arg("--manual"))?,
            _ => output_of(Command::new(release.join(bin)).arg("manual"))?,
        };
        let man = String::from_utf8_lossy(&man).replacen(
            &format!(".TH {bin} 1"),
            &format!(".TH {bin} 8"),
            1,
        );
        put(
            stage,
            &format!("usr/share/man/man8/{bin}.8.gz"),
            &gzip(man.as_bytes())?,
            0o644,
        )?;
        for (shell, path) in [
            (
                "bash",
                format!("usr/share/bash-completion/completions/{bin}"),
            ),
            ("zsh", format!("usr/share/zsh/vendor-completions/_{bin}")),
            (
                "fish",
                format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
            ),
        ] {
            let script = match bin {
                "meshd" => {
                    output_of(Command::new(release.join(bin)).args(["--completions", shell]))?
                }
                _ => output_of(Command::new(release.join(bin)).args(["completions", shell]))?,
            };
            put(stage, &path, &script, 0o644)?;
        }
    }
    let packaging = root.join("packaging");
    put(
        stage,
        "lib/systemd/system/meshd.service",
        &fs::read(packaging.join("systemd/meshd.service"))?,
        0o644,
    )?;
    put(
        stage,
        "etc/mesh/meshd.toml",
        &fs::read(packaging.join("meshd.toml"))?,
        0o644,
    )?;
    put(
        stage,
        "usr/share/doc/mesh/examples/meshd-tap.conf",
        &fs::read(packaging.join("systemd/meshd-tap.conf"))?,
        0o644,
    )?;
    put(
        stage,
        "usr/share/doc/mesh/copyright",
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    let changelog = format!(
        "mesh ({version}-1) unstable; urgency=medium\n\n  * Built from the mesh repository by `cargo xtask package`.\n\n -- mesh developers <mesh@lists.mesh.invalid>  Tue, 01 Dec 2026 00:00:00 +0000\n"
    );
    put(
        stage,
        "usr/share/doc/mesh/changelog.Debian.gz",
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;
    let depends = depends(&[
        stage.join("usr/bin/meshd"),
        stage.join("usr/bin/meshctl"),
        stage.join("usr/lib/cni/mesh-cni"),
    ])?;
    let size_kib = du_kib(stage)?;
    let control = format!(
        "Package: mesh\nVersion: {version}-1\nSection: net\nPriority: optional\nArchitecture: {arch}\nMaintainer: mesh developers <mesh@lists.mesh.invalid>\nInstalled-Size: {size_kib}\nDepends: {depends}\nRecommends: iproute2\nDescription: {DESCRIPTION}\n"
    );
    put(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(stage, "DEBIAN/conffiles", b"/etc/mesh/meshd.toml\n", 0o644)?;
    put(stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    // Directories 0755 (the staging tree may have inherited a umask).
    exec(
        Command::new("find")
            .arg(stage)
            .args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]),
    )?;
    Ok(())
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mesh
Source: the mesh repository

Files: *
Copyright: 2026 the mesh developers
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the \"License\"); you may not
 use this file except in compliance with the License. You may obtain a copy of
 the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an \"AS IS\" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations under
 the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in \"/usr/share/common-licenses/Apache-2.0\".
";

/// The packages providing the shared libraries the binaries link (from their NEEDED entries).
fn depends(bins: &[PathBuf]) -> Result<String> {
    let mut needed = std::collections::BTreeSet::new();
    for b in bins {
        let dump = String::from_utf8(output_of(Command::new("objdump").arg("-p").arg(b))?)?;
        for line in dump.lines() {
            if let Some(lib) = line.trim().strip_prefix("NEEDED") {
                needed.insert(lib.trim().to_owned());
            }
        }
    }
    let mut deps = Vec::new();
    for lib in &needed {
        let dep = match lib.as_str() {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1" => {
                "libc6 (>= 2.34)"
            }
            "libgcc_s.so.1" => "libgcc-s1 (>= 4.2)",
            "ld-linux-x86-64.so.2" | "ld-linux-aarch64.so.1" | "ld-linux-armhf.so.3" => continue,
            other => {
                bail!("{other}: no Debian package known for it; add it to xtask/src/package.rs")
            }
        };
        if !deps.contains(&dep) {
            deps.push(dep);
        }
    }
    Ok(deps.join(", "))
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = String::from_utf8(output_of(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(dir),
    )?)?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// lintian must report no errors (warnings are printed).
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--no-tag-display-limit", "--fail-on", "error"])
        .arg(deb)
        .output()
        .context("lintian (cargo xtask setup installs it)")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("lintian reports errors in {}", deb.display());
    }
    println!("package: lintian reports no errors");
    Ok(())
}

/// Installs the package into a scratch root with dpkg (its maintainer scripts run, told by
/// DPKG_ROOT to leave the running system alone), then starts the installed meshd with the
/// installed configuration in a network namespace and waits until it serves.
fn install_check(deb: &Path) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("mesh-package-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let result = install_and_run(deb, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn install_and_run(deb: &Path, root: &Path) -> Result<()> {
    let admin = root.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info"))?;
    fs::create_dir_all(admin.join("updates"))?;
    fs::write(admin.join("status"), "")?;
    exec(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-script-chrootless", "--force-depends", "-i"])
            .arg(deb),
    )?;
    for f in [
        "usr/bin/meshd",
        "usr/bin/meshctl",
        "usr/lib/cni/mesh-cni",
        "lib/systemd/system/meshd.service",
        "etc/mesh/meshd.toml",
        "usr/share/man/man8/meshd.8.gz",
        "usr/share/bash-completion/completions/meshctl",
    ] {
        if !root.join(f).exists() {
            bail!("the package did not install /{f}");
        }
    }
    // The installed meshd, the installed configuration; only what a lab host must differ in
    // (its interface, directories, a password) on the command line.
    let mut lab = mesh_tests::Lab::new("package")?;
    let host = lab.add_host("pk1")?;
    let password = lab.password_file("pw", "package check")?;
    let meshd = root.join("usr/bin/meshd");
    let config = root.join("etc/mesh/meshd.toml");
    let state = lab.dir().join("state");
    let run = lab.dir().join("run");
    let proc = lab.spawn(
        &host.ns,
        &meshd,
        &[
            "--config",
            &config.display().to_string(),
            "--password-file",
            &password.display().to_string(),
            "--underlay",
            &host.underlay_if,
            "--state-dir",
            &state.display().to_string(),
            "--run-dir",
            &run.display().to_string(),
            "--datapath",
            "tap",
        ],
    )?;
    let meshctl = root.join("usr/bin/meshctl");
    let socket = run.join("meshd.sock");
    let ready = mesh_tests::wait_until(Duration::from_secs(20), || {
        Command::new(&meshctl)
            .args(["--socket", &socket.display().to_string(), "status"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ready {
        bail!(
            "the installed meshd did not come up with the shipped configuration:\n{}",
            lab.log(proc)
        );
    }
    println!("package: installed into a scratch root; meshd runs with the shipped configuration");
    Ok(())
}
