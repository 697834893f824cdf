//! The data path thread's wait for work: one epoll set holding the data socket and every TAP
//! device, waited on directly by that thread, and a wait for room on a full socket.
//!
//! Why not the async runtime: a sparse packet finds the thread asleep, and what runs between
//! the wake-up and the first read is paid cold, cache and TLB misses included. Through a
//! tokio runtime that path (its driver dispatching readiness to tasks, the scheduler polling
//! them) cost 13-20 us more per cold pass than boringtun's plain epoll loop on a nested VM
//! (perf traces of 10 ms pings): a plain `epoll_wait` and a `read` touch far less.
//!
//! Level-triggered: a device left with frames (a drain cut short to give the other its turn)
//! is reported again by the next wait.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// What a registered descriptor is, as the wait reports it.
pub type Token = u64;

pub struct Poller {
    epoll: OwnedFd,
}

/// Most events one wait returns (there are only a few descriptors).
const MAX_EVENTS: usize = 16;

/// The events of one wait.
pub struct Events {
    list: [libc::epoll_event; MAX_EVENTS],
    len: usize,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            list: [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            len: 0,
        }
    }
}

impl Events {
    /// The tokens of the descriptors found readable.
    pub fn tokens(&self) -> impl Iterator<Item = Token> + '_ {
        self.list[..self.len].iter().map(|e| e.u64)
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Poller {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Reports `fd` as readable under `token` from the next wait on (from any thread: a wait
    /// already under way sees it too).
    pub fn add(&self, fd: RawFd, token: Token) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: EPOLL_CTL_ADD with a valid event; `fd` stays open while registered (the
        // data path keeps its devices for its whole life).
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until a descriptor is readable, at most `timeout` (none: as long as it takes;
    /// zero: only looks). Fills `events` (empty on timeout or when a signal interrupted).
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => -1,
            // Rounded up: a wait of 0.3 ms must not become a look.
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: the kernel writes at most MAX_EVENTS events into `list`.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.list.as_mut_ptr(),
                MAX_EVENTS as i32,
                ms,
            )
        };
        if n < 0 {
            events.len = 0;
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        events.len = n as usize;
        Ok(())
    }
}

/// How long a write waits for a device or socket that has no room before the frame is given
/// up (counted): long against any queue draining, short enough that a stuck one never stalls
/// the data path for good.
const WRITE_WAIT: Duration = Duration::from_secs(1);

/// Runs the non-blocking write `f` on `fd`; when `fd` has no room (`WouldBlock`), waits for
/// room (at most [`WRITE_WAIT`]) and tries again.
pub fn write_waiting<T>(fd: RawFd, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(fd, WRITE_WAIT)?,
            r => return r,
        }
    }
}

/// Waits until `fd` takes more data (a socket whose send buffer was full), at most `timeout`;
/// `TimedOut` if it still does not.
fn wait_writable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        match n {
            0 => return Err(io::Error::from(io::ErrorKind::TimedOut)),
            n if n > 0 => return Ok(()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn reports_readable_descriptors_by_token_and_times_out_on_none() {
        let p = Poller::new().unwrap();
        let (a, b) = UnixDatagram::pair().unwrap();
        let (c, d) = UnixDatagram::pair().unwrap();
        p.add(b.as_raw_fd(), 7).unwrap();
        p.add(d.as_raw_fd(), 9).unwrap();
        let mut ev = Events::default();
        p.wait(&mut ev, Some(Duration::ZERO)).unwrap();
        assert_eq!(ev.tokens().count(), 0, "nothing sent yet");
        a.send(b"x").unwrap();
        p.wait(&mut ev, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(ev.tokens().collect::<Vec<_>>(), vec![7]);
        // Level-triggered: still readable, still reported.
        c.send(b"y").unwrap();
        p.wait(&mut ev, Some(Duration::from_secs(10))).unwrap();
        let mut got: Vec<_> = ev.tokens().collect();
        got.sort();
        assert_eq!(got, vec![7, 9]);
    }

    #[test]
    fn a_socket_with_room_is_writable_at_once() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        wait_writable(a.as_raw_fd(), Duration::from_secs(10)).unwrap();
    }
}
