//! A record of what each lab created, written before each resource exists, so that a lab whose
//! process died without cleaning up (SIGKILL, abort, power cut of the test runner) can be reaped
//! by the next run.
//!
//! One file per lab, `<REGISTRY_DIR>/<lab id>.rec`, one line per resource:
//! `owner <pid> <start>`, `netns <name>`, `proc <pid> <start>`, `bpf <dir>`. `<start>` is the
//! process start time from /proc/<pid>/stat, so a recycled PID is never mistaken for ours.
//! Processes the lab did not start itself but that live in its namespaces (meshd's TAP keeper)
//! are the lab's too: they are ended before the namespaces go.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::PathBuf,
};

use anyhow::{Context, Result};

pub const REGISTRY_DIR: &str = "/run/mesh-lab";

/// A bpffs for the labs' meshd pins (`--bpf-dir`). `ip netns exec` remounts /sys, so the
/// host's /sys/fs/bpf is not visible to the processes a lab starts; this one is.
pub const BPF_DIR: &str = "/run/mesh-lab/bpf";

/// Mounts a bpffs at [`BPF_DIR`] unless one is there (once, however many labs a test process
/// starts at the same time: two mounts would stack).
pub fn mount_bpffs() -> Result<()> {
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(BPF_DIR).with_context(|| format!("creating {BPF_DIR}"))?;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // SAFETY: statfs into a zeroed struct; NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/run/mesh-lab/bpf";
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a bpffs at {BPF_DIR}"));
    }
    Ok(())
}

/// Start time (clock ticks since boot) of process `pid`, or `None` if it does not exist.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may contain spaces, so count from its closing ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` is alive and still the process that had start time `start`.
pub fn same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Append-only record of one lab's resources.
pub struct Record {
    path: PathBuf,
}

impl Record {
    pub fn create(lab_id: &str) -> Result<Record> {
        fs::create_dir_all(REGISTRY_DIR).with_context(|| format!("creating {REGISTRY_DIR}"))?;
        let me = std::process::id();
        let rec = Record {
            path: PathBuf::from(REGISTRY_DIR).join(format!("{lab_id}.rec")),
        };
        let start = start_time(me).context("reading own start time")?;
        // Written whole under another name and renamed: another test process reaping stale
        // labs must never see this record without its owner (it would take the lab for one
        // whose owner died and tear it down under us).
        let fresh = rec.path.with_extension("new");
        fs::write(&fresh, format!("owner {me} {start}\n"))
            .with_context(|| format!("writing {}", fresh.display()))?;
        fs::rename(&fresh, &rec.path)
            .with_context(|| format!("renaming {} into place", fresh.display()))?;
        Ok(rec)
    }

    pub fn netns(&self, name: &str) -> Result<()> {
        self.append(&format!("netns {name}"))
    }

    pub fn bpf_dir(&self, dir: &std::path::Path) -> Result<()> {
        self.append(&format!("bpf {}", dir.display()))
    }

    pub fn process(&self, pid: u32) -> Result<()> {
        match start_time(pid) {
            Some(start) => self.append(&format!("proc {pid} {start}")),
            None => Ok(()), // already gone
        }
    }

    fn append(&self, line: &str) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(f, "{line}")?;
        f.sync_data()?;
        Ok(())
    }

    pub fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What a record file lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub owner: Option<(u32, u64)>,
    pub netns: Vec<String>,
    pub procs: Vec<(u32, u64)>,
    pub bpf_dirs: Vec<String>,
}

/// Parses a record file; unknown or broken lines are skipped (a crash may cut the last line).
pub fn parse(text: &str) -> Leftovers {
    let mut l = Leftovers::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let pid_start = |f: &[&str]| Some((f.get(1)?.parse().ok()?, f.get(2)?.parse().ok()?));
        match f.first() {
            Some(&"owner") => l.owner = pid_start(&f),
            Some(&"proc") => l.procs.extend(pid_start(&f)),
            Some(&"netns") if f.len() == 2 => l.netns.push(f[1].to_owned()),
            Some(&"bpf") if f.len() == 2 => l.bpf_dirs.push(f[1].to_owned()),
            _ => {}
        }
    }
    l
}

/// Removes what labs of dead owners left behind: kills their processes, deletes their
/// namespaces, removes their records. Labs of live processes (parallel tests) are untouched.
/// Returns the names of the namespaces it deleted.
pub fn reap_stale() -> Vec<String> {
    let mut reaped = Vec::new();
    let Ok(entries) = fs::read_dir(REGISTRY_DIR) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rec") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let left = parse(&text);
        if left
            .owner
            .is_some_and(|(pid, start)| same_process(pid, start))
        {
            continue;
        }
        release(&left);
        reaped.extend(left.netns);
        let _ = fs::remove_file(&path);
    }
    reaped
}

/// Kills the recorded processes that are still the same processes, then every other process
/// left in the lab's namespaces, deletes the namespaces, and removes the pin directories.
pub fn release(left: &Leftovers) {
    for &(pid, start) in &left.procs {
        if same_process(pid, start) {
            // SAFETY: plain kill(2) on a PID we recorded and just re-identified by start time.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    for &(pid, start) in &left.procs {
        crate::wait_until(std::time::Duration::from_secs(2), || {
            !same_process(pid, start) || is_zombie(pid)
        });
    }
    for ns in &left.netns {
        end_processes_in(ns);
        let _ = crate::sh::ip(&["netns", "del", ns]);
    }
    for dir in &left.bpf_dirs {
        // Unlinking the pins detaches the programs and frees the maps.
        let _ = fs::remove_dir_all(dir);
    }
}

/// Ends every process in namespace `ns` (one of a lab's own): what the lab's processes started
/// there, such as meshd's TAP keeper, which outlives meshd on purpose.
pub fn end_processes_in(ns: &str) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
    else {
        return;
    };
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &pid in &pids {
        // SAFETY: kill(2) on a process inside a namespace this lab created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &pids {
        crate::wait_until(std::time::Duration::from_secs(2), || {
            start_time(pid as u32).is_none() || is_zombie(pid as u32)
        });
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_skips_a_torn_last_line() {
        let l = parse(
            "owner 10 99\nnetns ml10-1-h1\nproc 11 100\nbpf /run/mesh-lab/bpf/ml10-1\nnetns ml10-1-h2\nproc 1",
        );
        assert_eq!(l.owner, Some((10, 99)));
        assert_eq!(l.bpf_dirs, vec!["/run/mesh-lab/bpf/ml10-1"]);
        assert_eq!(l.netns, vec!["ml10-1-h1", "ml10-1-h2"]);
        assert_eq!(l.procs, vec![(11, 100)]);
    }

    #[test]
    fn own_process_is_recognised_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let start = start_time(me).expect("own /proc entry");
        assert!(same_process(me, start));
        assert!(!same_process(me, start + 1));
    }
}
