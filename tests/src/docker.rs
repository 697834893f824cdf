//! A real Docker daemon on a lab host: its own data root, exec root, pid file and API socket
//! under the lab dir, so several run at once, and a local image (busybox through `docker
//! import`: there is no registry here). Dropping it removes its containers and stops it.

use std::{
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Host, Lab, wait_until};

/// Debian's docker CLI (docker.io), matching its dockerd.
const DOCKER: &str = "/usr/bin/docker";
/// Where Docker looks for plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";
/// The image every test container runs.
pub const IMAGE: &str = "meshtest:busybox";

pub struct Dockerd {
    /// The API socket (`unix://` + this for DOCKER_HOST).
    pub socket: PathBuf,
    child: Child,
}

impl Dockerd {
    /// Starts dockerd in `host`'s network namespace with `args` (e.g. `--bridge=none`), and
    /// imports [`IMAGE`]. Entered with nsenter, not `ip netns exec`, which remounts /sys and
    /// hides the cgroup hierarchy dockerd needs.
    pub fn start(lab: &Lab, host: &Host, args: &[&str]) -> Result<Dockerd> {
        Dockerd::start_with_plugins(lab, host, args, None)
    }

    /// [`Dockerd::start`], finding its plugins in `plugins` (e.g. a meshd's
    /// `--docker-plugin` socket there): dockerd runs in a mount namespace of its own where
    /// that directory is /run/docker/plugins, the one place Docker looks for plugin sockets.
    pub fn start_with_plugins(
        lab: &Lab,
        host: &Host,
        args: &[&str],
        plugins: Option<&std::path::Path>,
    ) -> Result<Dockerd> {
        let dir = lab.dir().join(format!("{}-docker", host.name));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let mut command = match plugins {
            None => Command::new("nsenter"),
            Some(p) => {
                std::fs::create_dir_all(PLUGIN_DIR)?;
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount --bind \"$0\" {PLUGIN_DIR} && exec nsenter \"$@\""
                    ))
                    .arg(p);
                c
            }
        };
        let child = command
            .arg(format!("--net=/var/run/netns/{}", host.ns))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd (Debian package docker.io: `cargo xtask setup`)")?;
        let d = Dockerd { socket, child };
        if !wait_until(Duration::from_secs(60), || d.docker(&["info"]).is_ok()) {
            bail!(
                "dockerd did not come up: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
        }
        d.import_image(&dir)?;
        Ok(d)
    }

    /// `docker <args>` against this daemon: stdout, or an error with stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The pid of running container `name`.
    pub fn pid(&self, name: &str) -> Result<u32> {
        Ok(self
            .docker(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()?)
    }

    /// A directory with busybox and its applets, imported as [`IMAGE`].
    fn import_image(&self, dir: &std::path::Path) -> Result<()> {
        let root = dir.join("image");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        let busybox = bin.join("busybox");
        if !busybox.exists() {
            std::fs::copy("/usr/bin/busybox", &busybox)
                .context("copying busybox (Debian package busybox-static)")?;
            for applet in ["sh", "sleep", "ip", "ping", "nc", "cat", "wc", "head"] {
                std::os::unix::fs::symlink("busybox", bin.join(applet))?;
            }
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .output()
            .context("packing the image")?;
        let mut import = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        import
            .stdin
            .take()
            .context("docker import's stdin")?
            .write_all(&tar.stdout)?;
        let out = import.wait_with_output()?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let stopped = wait_until(Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
