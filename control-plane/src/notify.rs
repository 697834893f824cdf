//! The systemd notification protocol (`sd_notify`), for `Type=notify` units: one datagram per
//! message on the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). READY=1 once meshd serves, STATUS= lines as its peers come and go, WATCHDOG=1
//! from the agent's loop when the unit sets `WatchdogSec=`, STOPPING=1 when it begins to stop.
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::{Duration, Instant},
};

pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    /// How often the agent's loop must say it is alive, and when it last did.
    watchdog: Option<(Duration, Instant)>,
    /// The last STATUS sent (repeats are not sent again).
    status: String,
    /// A send failed and was logged (logged once).
    failed: bool,
}

impl Notifier {
    /// The notifier systemd asked for through the environment, if any.
    pub fn from_env() -> anyhow::Result<Option<Notifier>> {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let target = target.to_string_lossy().into_owned();
        let to = socket_address(&target)
            .map_err(|e| anyhow::anyhow!("NOTIFY_SOCKET={target:?}: {e}"))?;
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
        .map(|every| (every, Instant::now()));
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
            watchdog,
            status: String::new(),
            failed: false,
        }))
    }

    fn send(&mut self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to)
            && !self.failed
        {
            self.failed = true;
            tracing::warn!(error = %e, "notifying systemd (NOTIFY_SOCKET) failed");
        }
    }

    /// meshd serves: the control plane listens and the datapath is up.
    pub fn ready(&mut self, status: &str) {
        self.status = status.to_owned();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A new one-line status (sent only when it changed).
    pub fn status(&mut self, status: &str) {
        if self.status != status {
            self.status = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// Called from the agent's loop: a watchdog ping when one is due.
    pub fn alive(&mut self) {
        if let Some((every, last)) = self.watchdog
            && last.elapsed() >= every
        {
            self.watchdog = Some((every, Instant::now()));
            self.send("WATCHDOG=1");
        }
    }

    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// The address `NOTIFY_SOCKET` names: an absolute path, or `@name` in the abstract namespace.
fn socket_address(target: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if target.starts_with('/') {
        SocketAddr::from_pathname(target)
    } else {
        Err(std::io::Error::other(
            "neither an absolute path nor an abstract name (@name)",
        ))
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is set and meant for this
/// process (`WATCHDOG_PID` absent or ours), as sd_watchdog_enabled(3) says.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_twice_per_period_and_only_for_its_process() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notify_socket_names_a_path_or_an_abstract_socket() {
        assert!(socket_address("/run/systemd/notify").is_ok());
        assert!(socket_address("@abstract").is_ok());
        assert!(socket_address("relative/path").is_err());
    }

    #[test]
    fn messages_arrive_in_order_and_repeated_statuses_are_not_resent() {
        let dir = std::env::temp_dir().join(format!("mesh-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            to: socket_address(path.to_str().unwrap()).unwrap(),
            watchdog: Some((Duration::ZERO, Instant::now())),
            status: String::new(),
            failed: false,
        };
        n.ready("0 peers");
        n.status("0 peers");
        n.status("1 peer");
        n.alive();
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..4 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=0 peers",
                "STATUS=1 peer",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
