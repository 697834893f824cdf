//! The data path thread: frames from the TAP devices to peers, datagrams from peers to the TAP
//! (and on to other peers). The decisions are made by `crate::switch` and [`super::neighbours`];
//! this file moves bytes and batches them: one TAP read may carry a 64 KiB TCP super-frame,
//! cut into segments that leave in one GSO send; one socket read may carry many coalesced
//! datagrams.
//!
//! One thread, one loop: it waits for the data socket and every TAP device at once
//! ([`Poller`]), like boringtun's single-threaded mode, and handles what is readable. A sparse
//! packet finds the thread asleep, and everything between the wake-up and the send runs with
//! cold caches: the fewer the layers the shorter that is (see `poller.rs`). The chores that
//! wait on timers and on the agent (heartbeats, echo requests, opening networks) run in
//! `upkeep.rs`.

use std::{
    ops::Range,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use mesh_common::DropReason;

use super::{
    Shared,
    batch::Batcher,
    bump,
    busy_poll::BusyPoll,
    ping,
    poller::{Events, Poller, Token},
    udp::DataSocket,
    upkeep::panic_message,
    vnet::Tap,
};
use crate::switch::{
    ShortId,
    echo::{self, Echo},
    forward::{self, Table},
    heartbeat, mtu,
    network::{self, OnWire},
    offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr},
    wire::Header,
};

/// The data socket's token in the wait.
pub const SOCKET: Token = 0;
/// The default network's TAP device's.
pub const DEFAULT_TAP: Token = 1;

/// Named network `vlan`'s TAP device's token.
pub fn network_token(vlan: u16) -> Token {
    NETWORK_TOKENS + Token::from(vlan)
}

const NETWORK_TOKENS: Token = 1 << 16;

/// The data path thread's body: moves frames until the data path fails (the failure is
/// recorded in `shared`, a panic included, and the agent ends meshd with it).
pub fn run(
    shared: Arc<Shared>,
    tap: Arc<Tap>,
    sock: Arc<DataSocket>,
    poller: Arc<Poller>,
    busy_poll: Duration,
) {
    let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        forward_frames(&shared, &tap, &sock, &poller, busy_poll);
    }));
    match moved {
        Err(p) => shared.fail(format!(
            "the data path panicked (a bug; please report it): {}",
            panic_message(p)
        )),
        // It returns only after recording why.
        Ok(()) => shared.fail("the data path's thread ended".into()),
    }
}

/// The loop: wait (or, within a busy-polling window, look) for readable devices and the
/// socket, and drain each.
fn forward_frames(
    shared: &Shared,
    tap: &Tap,
    sock: &DataSocket,
    poller: &Poller,
    busy_poll: Duration,
) {
    let mut from_tap = FromTap::default();
    let mut from_net = FromNet::default();
    let mut bp = BusyPoll::new(busy_poll);
    let mut events = Events::default();
    loop {
        let now = Instant::now();
        let timeout = if bp.polling(now) {
            // Polite polling: a program woken on this CPU (the one a reply is for, often) runs
            // at once instead of waiting for the scheduler to preempt us.
            std::thread::yield_now();
            bp.yielded(now.elapsed());
            Some(Duration::ZERO)
        } else {
            None
        };
        if let Err(e) = poller.wait(&mut events, timeout) {
            shared.fail(format!("waiting for the TAP device and data socket: {e}"));
            return;
        }
        for token in events.tokens() {
            let ok = match token {
                SOCKET => {
                    from_net.drain(shared, tap, sock, &mut bp);
                    true
                }
                DEFAULT_TAP => from_tap.drain(shared, tap, sock, None, &mut bp),
                t => {
                    let vlan = t.checked_sub(NETWORK_TOKENS).map(|v| v as u16);
                    match vlan.and_then(|v| Some((v, shared.network_tap(v)?))) {
                        Some((v, net_tap)) => {
                            from_tap.drain(shared, &net_tap, sock, Some(v), &mut bp)
                        }
                        None => true,
                    }
                }
            };
            if !ok {
                return;
            }
        }
    }
}

/// Frames from a local bridge to peers: buffers kept from one read to the next.
struct FromTap {
    buf: Vec<u8>,
    segments: Vec<u8>,
    local: Local,
}

impl Default for FromTap {
    fn default() -> FromTap {
        FromTap {
            buf: vec![0u8; VNET_HDR_LEN + 65536],
            segments: Vec::with_capacity(80 * 1024),
            local: Local::default(),
        }
    }
}

impl FromTap {
    /// Forwards the frames waiting on `tap`. The TAP device's MTU is far above the overlay's,
    /// so an oversize frame reaches us and gets an answer (ICMP) or is split, instead of being
    /// dropped silently by the bridge. `vlan`: the named network whose TAP device this is (its
    /// frames leave tagged), or none for `default`'s. False when the device failed (recorded).
    ///
    /// Small frames that queued up while we were busy go out together: up to DRAIN reads are
    /// forwarded before the sends, so frames the TAP device hands over one per read share GSO
    /// sends too. A frame that finds nothing queued behind it is sent at once. After a send
    /// the socket gets its turn; frames still waiting are reported by the next wait.
    fn drain(
        &mut self,
        shared: &Shared,
        tap: &Tap,
        sock: &DataSocket,
        vlan: Option<u16>,
        bp: &mut BusyPoll,
    ) -> bool {
        let local = &mut self.local;
        let mut drained = 0;
        loop {
            let n = match tap.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    send_queued(shared, tap, sock, local);
                    return true;
                }
                Err(e) => {
                    let device = match vlan {
                        None => shared.tap_name.clone(),
                        Some(v) => super::network_device(&shared.tap_name, v).unwrap_or_default(),
                    };
                    shared.fail(format!("reading the TAP device {device} failed: {e}"));
                    return false;
                }
            };
            bump(&shared.counters.tap_reads);
            let now = Instant::now();
            local.now_ms = shared.ms_at(now);
            local.decided = None;
            drained += 1;
            let Some(hdr) = VnetHdr::parse(&self.buf[..n]) else {
                shared.counters.dropped(DropReason::Malformed);
                continue;
            };
            let super_frame = hdr.gso_size > 0;
            if super_frame {
                bump(&shared.counters.gso_reads);
            }
            bp.traffic(if super_frame { 2 } else { 1 }, local.now_ms, now);
            let table = shared
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let frame = &mut self.buf[VNET_HDR_LEN..n];
            let made = offload::wire_frames(&hdr, frame, &mut self.segments, |f| {
                if network::tagged(f) {
                    shared.counters.dropped(DropReason::Network);
                } else {
                    local_frame(shared, &table, f, vlan, local);
                }
            });
            if let Err(e) = made {
                tracing::debug!(?e, "unusable frame from the TAP device");
                shared.counters.dropped(DropReason::Malformed);
            }
            // A super-frame (TCP in bulk) is plenty for one send already: waiting for more
            // would only delay its segments and the ACKs they clock.
            if super_frame || drained >= DRAIN || local.batcher.bytes() >= DRAIN_BYTES {
                send_queued(shared, tap, sock, local);
                return true;
            }
        }
    }
}

/// What processing one TAP read produced besides datagrams: ICMP answers for the bridge.
#[derive(Default)]
struct Local {
    batcher: Batcher,
    sends: Vec<(ShortId, Header)>,
    /// ICMP errors to write back to the TAP (rare: allocated per answer).
    replies: Vec<Vec<u8>>,
    /// A named network's frame with its tag on.
    tagged: Vec<u8>,
    /// The data path's clock (`Shared::now_ms`) when the frame being forwarded was read: read
    /// once per TAP read, not per use (clock reads were 6% of the sending thread's time).
    now_ms: u64,
    /// The length of the frame the next hops in `sends` were found for in this TAP read, if
    /// they fit every next hop's link (none: not decided in this read). Every frame one read
    /// yields (a super-frame's segments, a packet's fragments) has the same Ethernet header,
    /// which is all the forwarding decision reads, and a frame no longer than one that fit
    /// fits too: the other 40-odd segments of a 64 KiB super-frame skip the FDB, the routes
    /// and the link MTUs (those look-ups were about 4% of the sending thread's time).
    decided: Option<usize>,
}

/// Most TAP reads forwarded before their frames are sent.
const DRAIN: usize = 64;
/// Most bytes waiting to be sent before they are.
const DRAIN_BYTES: usize = 64 * 1024;

/// Sends what the frames read so far produced: ICMP answers back into the bridge, datagrams
/// to the peers.
fn send_queued(shared: &Shared, tap: &Tap, sock: &DataSocket, local: &mut Local) {
    for r in local.replies.drain(..) {
        if let Err(e) = tap.send(&r) {
            tracing::debug!(error = %e, "writing an ICMP error to the TAP device");
        }
    }
    flush(shared, sock, &mut local.batcher);
}

/// One wire-sized frame from the bridge: checked against the overlay MTU (less the tag on a
/// named network), then forwarded.
fn local_frame(shared: &Shared, table: &Table, frame: &[u8], vlan: Option<u16>, local: &mut Local) {
    let on = vlan.unwrap_or(crate::networks::DEFAULT_VLAN);
    let mtu = network::interface_mtu(shared.mtu, on) as usize;
    if mtu::packet_len(frame) <= mtu {
        forward_tagged(shared, table, frame, vlan, local);
    } else {
        oversize(shared, frame, mtu, true, local, |f, local| {
            forward_tagged(shared, table, f, vlan, local)
        });
    }
}

/// Forwards a frame from network `vlan`'s bridge with the network's tag on.
fn forward_tagged(
    shared: &Shared,
    table: &Table,
    frame: &[u8],
    vlan: Option<u16>,
    local: &mut Local,
) {
    match vlan {
        None => forward_local(shared, table, frame, local),
        Some(v) => {
            let mut tagged = std::mem::take(&mut local.tagged);
            network::tag(frame, v, &mut tagged);
            forward_local(shared, table, &tagged, local);
            local.tagged = tagged;
        }
    }
}

/// Queues one frame (within the overlay MTU) to its next hops. A frame too big for the probed
/// path to a next hop is answered like any oversize frame (ICMP, or split).
fn forward_local(shared: &Shared, table: &Table, frame: &[u8], local: &mut Local) {
    let len = mtu::packet_len(frame);
    if local.decided.is_none_or(|d| len > d) {
        local.sends.clear();
        local.decided = None;
        {
            let mut fdb = shared.fdb.lock().unwrap_or_else(PoisonError::into_inner);
            let now = local.now_ms;
            shared.learn_elsewhere(&mut fdb, frame, now);
            forward::from_local(table, &fdb, frame, now, |to, h| local.sends.push((to, h)));
        }
        let nb = shared.neighbours();
        if local
            .sends
            .iter()
            .all(|(to, _)| len <= nb.link_mtu(*to).unwrap_or(usize::MAX))
        {
            local.decided = Some(len);
        }
    }
    if local.decided.is_some() {
        let mut nb = shared.neighbours();
        for (to, h) in &local.sends {
            if !nb.queue(*to, h, frame, &mut local.batcher, local.now_ms) {
                shared.counters.dropped(DropReason::NoRoute);
            }
        }
        return;
    }
    // A flood may meet several narrow links: one answer is enough.
    let mut answered = false;
    let sends = std::mem::take(&mut local.sends);
    for &(to, h) in &sends {
        let link_mtu = shared.neighbours().link_mtu(to).unwrap_or(usize::MAX);
        if len <= link_mtu {
            queue(shared, &mut local.batcher, frame, to, h, local.now_ms);
        } else {
            answered |= oversize(shared, frame, link_mtu, !answered, local, |f, local| {
                queue(shared, &mut local.batcher, f, to, h, local.now_ms)
            });
        }
    }
    local.sends = sends;
}

/// A frame too big for `mtu`: an ICMP answer for the bridge (when `answer`), fragments handed
/// to `forward`, or a counted drop (see `mtu::handle`). Returns whether it answered.
fn oversize(
    shared: &Shared,
    frame: &[u8],
    mtu: usize,
    answer: bool,
    local: &mut Local,
    mut forward: impl FnMut(&[u8], &mut Local),
) -> bool {
    let mut out = Vec::new();
    match mtu::handle(frame, mtu, &mut out) {
        mtu::Oversize::Reply => {
            if answer {
                bump(&shared.counters.too_big);
                local.replies.push(out);
            }
            answer
        }
        mtu::Oversize::Fragments(parts) => {
            bump(&shared.counters.fragmented);
            for r in parts {
                forward(&out[r], local);
            }
            false
        }
        mtu::Oversize::Drop => {
            shared.counters.dropped(DropReason::TooBig);
            false
        }
    }
}

/// Seals (or frames) `inner` for neighbour `to` into the batch for its address; `now`: the
/// data path's clock (`Shared::now_ms`).
fn queue(shared: &Shared, batcher: &mut Batcher, inner: &[u8], to: ShortId, h: Header, now: u64) {
    if !shared.neighbours().queue(to, &h, inner, batcher, now) {
        shared.counters.dropped(DropReason::NoRoute);
    }
}

/// Sends what was queued: each run of same-size datagrams to one address in one call.
fn flush(shared: &Shared, sock: &DataSocket, batcher: &mut Batcher) {
    for (addr, seg, buf, count) in batcher.pending() {
        bump(&shared.counters.udp_sends);
        match sock.send_segments(buf, seg, addr) {
            Ok(()) => {
                shared
                    .counters
                    .tx_frames
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Counted (meshctl status); one peer unreachable for a moment is no news for
                // the log.
                bump(&shared.counters.send_errors);
                tracing::debug!(error = %e, %addr, "sending frames failed");
            }
        }
    }
    batcher.clear();
}

/// Datagrams from peers: deliver, relay, or both. One receive may hold many (GRO). Buffers
/// are kept from one receive to the next.
struct FromNet {
    buf: Vec<u8>,
    batcher: Batcher,
    sends: Vec<(ShortId, Header)>,
    deliveries: Vec<Range<usize>>,
    coalescer: Coalescer,
    untagged: Vec<u8>,
}

impl Default for FromNet {
    fn default() -> FromNet {
        FromNet {
            buf: vec![0u8; 65536 + 4096],
            batcher: Batcher::default(),
            sends: Vec::with_capacity(16),
            deliveries: Vec::with_capacity(64),
            coalescer: Coalescer::default(),
            untagged: Vec::with_capacity(2048),
        }
    }
}

/// Most receives handled before the TAP devices get their turn (what remains is reported by
/// the next wait).
const RECEIVES_PER_TURN: usize = 64;

impl FromNet {
    /// Handles the datagrams waiting on the data socket.
    fn drain(&mut self, shared: &Shared, tap: &Tap, sock: &DataSocket, bp: &mut BusyPoll) {
        // A run held open for the next receive (see the end of `received`).
        let mut holding = false;
        for _ in 0..RECEIVES_PER_TURN {
            let continued = std::mem::take(&mut holding);
            match sock.recv(&mut self.buf) {
                Ok((n, from, seg)) => {
                    holding = self.received(shared, tap, sock, bp, (n, from, seg), continued);
                }
                Err(e) => {
                    // Nothing waiting (or an error): a held run goes out now.
                    if let Some(run) = self.coalescer.finish() {
                        write_tap(shared, tap, run, true);
                    }
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        return;
                    }
                    tracing::debug!(error = %e, "receiving on the data port");
                }
            }
        }
        if let Some(run) = self.coalescer.finish() {
            write_tap(shared, tap, run, true);
        }
    }

    /// One receive's datagrams; `continued`: it follows one whose run was held open for it.
    /// Returns whether this one's run is held open for the next receive.
    fn received(
        &mut self,
        shared: &Shared,
        tap: &Tap,
        sock: &DataSocket,
        bp: &mut BusyPoll,
        (n, from, seg): (usize, std::net::SocketAddr, usize),
        continued: bool,
    ) -> bool {
        let FromNet {
            buf,
            batcher,
            sends,
            deliveries,
            coalescer,
            untagged,
        } = self;
        bump(&shared.counters.udp_receives);
        // One clock read for everything one receive brought (they arrived together).
        let now = Instant::now();
        let now_ms = shared.ms_at(now);
        let table = shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut at = 0;
        // Data frames (not heartbeats) this receive brought: what busy-polling goes by.
        let mut frames = 0;
        while at < n {
            let end = (at + seg.max(1)).min(n);
            let accepted = shared.neighbours().accept(&mut buf[at..end], from, now);
            let chunk = at;
            at = end;
            let (header, inner, neighbour) = match accepted {
                Ok(r) => r,
                Err(why) => {
                    shared.counters.dropped(why);
                    continue;
                }
            };
            if header.heartbeat {
                if !header.is_link_heartbeat() {
                    let inner = chunk + inner.start..chunk + inner.end;
                    on_echo(shared, sock, &table, header, &buf[inner]);
                }
                continue;
            }
            bump(&shared.counters.rx_frames);
            frames += 1;
            let inner = chunk + inner.start..chunk + inner.end;
            let frame = &buf[inner.clone()];
            let decision = {
                let mut fdb = shared.fdb.lock().unwrap_or_else(PoisonError::into_inner);
                forward::from_peer(
                    &table,
                    &mut fdb,
                    neighbour,
                    header,
                    frame,
                    now_ms,
                    |to, h| sends.push((to, h)),
                )
            };
            match decision {
                Ok(deliver) => {
                    if deliver {
                        deliveries.push(inner);
                    } else if !sends.is_empty() {
                        bump(&shared.counters.relayed);
                    }
                }
                Err(forward::Dropped::OwnOrigin | forward::Dropped::HopLimit) => {
                    shared.counters.dropped(DropReason::Loop);
                }
                Err(forward::Dropped::NoRoute) => {
                    shared.counters.dropped(DropReason::NoRoute);
                }
                Err(forward::Dropped::Malformed) => {
                    shared.counters.dropped(DropReason::Malformed);
                }
            }
            for (to, h) in sends.drain(..) {
                // A relay cannot answer the origin's sender with ICMP: the origin's own
                // path-MTU check normally keeps such frames from being sent at all.
                let link_mtu = shared.neighbours().link_mtu(to).unwrap_or(usize::MAX);
                if mtu::packet_len(frame) > link_mtu {
                    shared.counters.dropped(DropReason::TooBig);
                    continue;
                }
                queue(shared, batcher, frame, to, h, now_ms);
            }
        }
        if frames > 0 {
            bp.traffic(frames, now_ms, now);
        }
        // Consecutive segments of one TCP flow go to the bridge as one super-frame.
        for r in deliveries.drain(..) {
            let frame = &buf[r];
            match network::on_wire(frame) {
                OnWire::Default => {}
                OnWire::Network(vlan) => {
                    match shared.network_tap(vlan) {
                        Some(net_tap) => {
                            bump(&shared.counters.delivered);
                            network::untag(frame, untagged);
                            write_tap(shared, &net_tap, untagged, false);
                        }
                        // Nothing here is on that network.
                        None => shared.counters.dropped(DropReason::Network),
                    }
                    continue;
                }
                OnWire::Foreign => {
                    shared.counters.dropped(DropReason::Network);
                    continue;
                }
            }
            bump(&shared.counters.delivered);
            if coalescer.push(frame) {
                continue;
            }
            if let Some(run) = coalescer.finish() {
                write_tap(shared, tap, run, true);
            }
            if !coalescer.push(frame) {
                write_tap(shared, tap, frame, false);
            }
        }
        // A run that may still grow after a receive of several datagrams waits for the next
        // receive if it is already here (never for one that is not, and for one receive at
        // most): a 64 KiB TCP super-frame crosses the wire in two sends (one carries at most
        // 64 KiB of datagrams), and joined across both it reaches the container's stack as
        // one packet, not two (half the TAP writes, half the receiving program's wake-ups).
        let holding = !continued && n > seg && coalescer.can_grow();
        if !holding && let Some(run) = coalescer.finish() {
            write_tap(shared, tap, run, true);
        }
        flush(shared, sock, batcher);
        holding
    }
}

fn write_tap(shared: &Shared, tap: &Tap, bytes: &[u8], with_header: bool) {
    bump(&shared.counters.tap_writes);
    if with_header && VnetHdr::parse(bytes).is_some_and(|h| h.gso_size > 0) {
        bump(&shared.counters.coalesced_writes);
    }
    let written = if with_header {
        tap.send_with_header(bytes)
    } else {
        tap.send(bytes)
    };
    if let Err(e) = written {
        bump(&shared.counters.tap_write_errors);
        match e.raw_os_error() {
            // The device is gone or detached: nothing written from now on arrives.
            Some(libc::EBADFD | libc::ENODEV | libc::EIO) => shared.fail(format!(
                "writing to the TAP device {} failed: {e}",
                shared.tap_name
            )),
            _ => tracing::debug!(error = %e, "writing to the TAP device"),
        }
    }
}

/// A data-path echo (`meshctl ping`) from a neighbour: answered, relayed, or handed to the
/// ping waiting for it.
fn on_echo(shared: &Shared, sock: &DataSocket, table: &Table, header: Header, inner: &[u8]) {
    let Some(e) = Echo::parse(inner) else {
        shared.counters.dropped(DropReason::Malformed);
        return;
    };
    match echo::on_echo(table, header, e) {
        echo::Action::Send(to, h, e) => {
            let answering = h.origin == header.destination;
            if answering {
                bump(&shared.counters.echoes_answered);
            } else {
                bump(&shared.counters.echoes_relayed);
            }
            send_echo(shared, sock, to, &h, &e);
        }
        echo::Action::Arrived(e) => {
            let rtt_us = heartbeat::stamp_of(Instant::now()).saturating_sub(e.sent_us);
            shared.echoes.arrived(ping::Arrival { echo: e, rtt_us });
        }
        echo::Action::Drop(echo::Dropped::Loop) => shared.counters.dropped(DropReason::Loop),
        echo::Action::Drop(echo::Dropped::NoRoute) => {
            shared.counters.dropped(DropReason::NoRoute);
        }
    }
}

pub(super) fn send_echo(shared: &Shared, sock: &DataSocket, to: ShortId, h: &Header, e: &Echo) {
    let mut inner = Vec::with_capacity(64);
    e.write(&mut inner);
    let mut out = Vec::with_capacity(128);
    let addr = shared
        .neighbours()
        .prepare(to, h, &inner, &mut out, shared.now_ms());
    match addr {
        Some(addr) => {
            if sock.send_to(&out, addr).is_err() {
                bump(&shared.counters.send_errors);
            }
        }
        None => shared.counters.dropped(DropReason::NoRoute),
    }
}
