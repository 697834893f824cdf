//! The systems the bench compares, and how each is brought up and down.
//!
//! The references are built by `ref_labs.rs` in the shape the anchors were measured on: two
//! hosts on a veth underlay 198.18.0.1–2/24, one container each (10.40.0.1–2/24).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use mesh_tests::wait_until;

/// Every system the bench knows, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Underlay,
    UnderlayMeshd,
    UnderlayMeshXdp,
    KernelVxlan,
    Boringtun,
    BoringtunT1,
    WireguardGo,
    Tinc,
    MeshEbpf,
    MeshEbpfXdpRx,
    MeshTap,
    MeshTapEncrypted,
    MeshTapChacha,
    MeshMixed,
}

impl System {
    pub const ALL: [System; 14] = [
        System::Underlay,
        System::UnderlayMeshd,
        System::UnderlayMeshXdp,
        System::KernelVxlan,
        System::Boringtun,
        System::BoringtunT1,
        System::WireguardGo,
        System::Tinc,
        System::MeshEbpf,
        System::MeshEbpfXdpRx,
        System::MeshTap,
        System::MeshTapEncrypted,
        System::MeshTapChacha,
        System::MeshMixed,
    ];

    /// Name used in the table, the JSON and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            System::Underlay => "underlay",
            System::UnderlayMeshd => "underlay+meshd",
            System::UnderlayMeshXdp => "underlay+mesh-xdp",
            System::KernelVxlan => "kernel-vxlan",
            System::Boringtun => "boringtun",
            System::BoringtunT1 => "boringtun-t1",
            System::WireguardGo => "wireguard-go",
            System::Tinc => "tinc",
            System::MeshEbpf => "mesh-ebpf",
            System::MeshEbpfXdpRx => "mesh-ebpf+xdp-rx",
            System::MeshTap => "mesh-tap",
            System::MeshTapEncrypted => "mesh-tap-enc",
            System::MeshTapChacha => "mesh-tap-chacha",
            System::MeshMixed => "mesh-mixed",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            System::Underlay => "raw veth underlay, host to host (no overlay)",
            System::UnderlayMeshd => {
                "raw underlay, host to host, with meshd running on both hosts (default datapath: kernel)"
            }
            System::UnderlayMeshXdp => {
                "raw underlay with meshd's XDP receive program attached on both hosts (observe only)"
            }
            System::KernelVxlan => "Linux bridge + kernel VXLAN (Docker overlay / Flannel vxlan)",
            System::Boringtun => "boringtun userspace WireGuard, default threads",
            System::BoringtunT1 => "boringtun userspace WireGuard, --threads 1",
            System::WireguardGo => "wireguard-go userspace WireGuard (Debian's)",
            System::Tinc => "tinc 1.0 in switch mode, encrypted as it ships (userspace L2 VPN)",
            System::MeshEbpf => "mesh kernel (eBPF) datapath, plaintext (--insecure)",
            System::MeshEbpfXdpRx => {
                "mesh-ebpf with a native XDP program on each underlay's receive side (observe \
                 only: the least an XDP receive path would add to TC's)"
            }
            System::MeshTap => "mesh TAP datapath, plaintext (--insecure)",
            System::MeshTapEncrypted => {
                "mesh TAP datapath, encrypted (password, --cipher auto: AES-256-GCM where both \
                 hosts have AES hardware, else ChaCha20-Poly1305)"
            }
            System::MeshTapChacha => {
                "mesh TAP datapath, encrypted with ChaCha20-Poly1305 (--cipher chacha20-poly1305: \
                 what links to hosts without AES hardware, such as Raspberry Pis, use)"
            }
            System::MeshMixed => "mesh kernel-datapath host to TAP host, plaintext",
        }
    }

    /// Why a mode cannot be measured yet, if so.
    pub fn not_built(self) -> Option<&'static str> {
        None
    }

    pub fn by_name(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A meshd started inside a reference lab host, killed on drop.
pub struct Meshd {
    child: Child,
    pub socket: PathBuf,
}

impl Meshd {
    /// Starts meshd alone in `ns` with `extra` arguments.
    pub fn start(
        meshd: &Path,
        ns: &str,
        underlay: &str,
        run_dir: &Path,
        extra: &[&str],
    ) -> Result<Meshd> {
        std::fs::create_dir_all(run_dir)?;
        let log_path = run_dir.join("meshd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(meshd)
            // Alone on its host, with no peers: authentication has nothing to protect here.
            .arg("--insecure")
            .args(extra)
            .args(["--underlay", underlay, "--name", ns, "--run-dir"])
            .arg(run_dir)
            .arg("--state-dir")
            .arg(run_dir.join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting meshd in {ns}"))?;
        let m = Meshd {
            child,
            socket: run_dir.join("meshd.sock"),
        };
        if !wait_until(Duration::from_secs(10), || m.socket.exists()) {
            bail!(
                "meshd in {ns} did not come up; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        Ok(m)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child: SIGTERM for a clean exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if !wait_until(Duration::from_secs(3), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
