//! The data path's loops: frames from the TAP to peers, datagrams from peers to the TAP (and
//! on to other peers), and heartbeats. The decisions are made by `crate::switch` and
//! [`super::neighbours`]; this file moves bytes and batches them: one TAP read may carry a
//! 64 KiB TCP super-frame, cut into segments that leave in one GSO send; one socket read may
//! carry many coalesced datagrams.

use std::{
    ops::Range,
    sync::{Arc, PoisonError, atomic::Ordering},
    time::Instant,
};

use mesh_common::DropReason;

use super::{
    HEARTBEAT_EVERY, Shared, TAP_MTU, batch::Batcher, bump, device, network_device, ping,
    udp::DataSocket, vnet::Tap,
};
use crate::switch::{
    LinkId, ShortId,
    echo::{self, Echo},
    forward::{self, Table},
    heartbeat, mtu,
    network::{self, OnWire},
    offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr},
    wire::Header,
};

pub async fn run(shared: Arc<Shared>, tap: Arc<Tap>, sock: Arc<DataSocket>) {
    let why = supervise(vec![
        (
            "reading the TAP device",
            tokio::spawn(tap_to_net(shared.clone(), tap.clone(), sock.clone(), None)),
        ),
        (
            "opening networks' TAP devices",
            tokio::spawn(open_networks(shared.clone(), sock.clone())),
        ),
        (
            "receiving from peers",
            tokio::spawn(net_to_tap(shared.clone(), tap.clone(), sock.clone())),
        ),
        (
            "sending heartbeats",
            tokio::spawn(heartbeats(shared.clone(), tap, sock.clone())),
        ),
        (
            "sending echo requests",
            tokio::spawn(echo_requests(shared.clone(), sock)),
        ),
        ("busy-polling", {
            let shared = shared.clone();
            tokio::spawn(async move { shared.busy_poll.run().await })
        }),
    ])
    .await;
    shared.fail(why);
}

/// Waits for the first of `tasks` to end (none ends while the data path works: an error it
/// recorded, or a panic), stops the others, and says which ended and how; the agent then
/// ends meshd with that reason.
async fn supervise(tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>) -> String {
    let (names, handles): (Vec<_>, Vec<_>) = tasks.into_iter().unzip();
    let (ended, i, rest) = futures_util::future::select_all(handles).await;
    for t in rest {
        t.abort();
    }
    let which = names[i];
    match ended {
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("the data path's task {which} panicked (a bug; please report it): {msg}")
        }
        _ => format!("the data path's task {which} ended"),
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

/// Opens named networks' TAP devices as the agent asks (`Shared::open_network`), each on its
/// network's bridge, and reads each in a task of its own. Runs as long as the data path.
async fn open_networks(shared: Arc<Shared>, sock: Arc<DataSocket>) {
    let Some(mut queue) = shared
        .network_queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return std::future::pending().await;
    };
    while let Some((vlan, reply)) = queue.recv().await {
        if shared.network_tap(vlan).is_some() {
            let _ = reply.send(Ok(()));
            continue;
        }
        let opened = async {
            let tap_name = network_device(&shared.tap_name, vlan)?;
            let bridge = network_device(&shared.bridge, vlan)?;
            let tap = Tap::open(&tap_name).map_err(|e| format!("{e:#}"))?;
            device::attach(&bridge, &tap_name, TAP_MTU)
                .await
                .map_err(|e| format!("{e:#}"))?;
            Ok::<_, String>(Arc::new(tap))
        }
        .await;
        match opened {
            Ok(tap) => {
                shared
                    .networks
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(vlan, tap.clone());
                tracing::info!(vlan, "carrying a network's frames");
                tokio::spawn(tap_to_net(shared.clone(), tap, sock.clone(), Some(vlan)));
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(format!("opening network VLAN {vlan}: {e}")));
            }
        }
    }
}

/// Frames from the local bridge to peers. The TAP device's MTU is far above the overlay's, so
/// an oversize frame reaches us and gets an answer (ICMP) or is split, instead of being dropped
/// silently by the bridge. `vlan`: the named network whose TAP device this is (its frames
/// leave tagged), or none for `default`'s.
async fn tap_to_net(shared: Arc<Shared>, tap: Arc<Tap>, sock: Arc<DataSocket>, vlan: Option<u16>) {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    let mut segments = Vec::with_capacity(80 * 1024);
    let mut local = Local::default();
    let mut drained = 0;
    loop {
        // Small frames that queued up while we were busy go out together: up to DRAIN reads
        // are forwarded before the sends, so frames the TAP device hands over one per read
        // share GSO sends too. A frame that finds nothing queued behind it is sent at once.
        let read = if drained == 0 {
            tap.recv(&mut buf).await
        } else {
            tap.try_recv(&mut buf)
        };
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drained = 0;
                send_queued(&shared, &tap, &sock, &mut local).await;
                continue;
            }
            Err(e) => {
                shared.fail(format!(
                    "reading the TAP device {} failed: {e}",
                    shared.tap_name
                ));
                return;
            }
        };
        bump(&shared.counters.tap_reads);
        local.now_ms = shared.now_ms();
        local.decided = None;
        drained += 1;
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else {
            shared.counters.dropped(DropReason::Malformed);
            continue;
        };
        let super_frame = hdr.gso_size > 0;
        if super_frame {
            bump(&shared.counters.gso_reads);
        }
        shared
            .busy_poll
            .traffic(if super_frame { 2 } else { 1 }, local.now_ms);
        let table = shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let frame = &mut buf[VNET_HDR_LEN..n];
        let made = offload::wire_frames(&hdr, frame, &mut segments, |f| {
            if network::tagged(f) {
                shared.counters.dropped(DropReason::Network);
            } else {
                local_frame(&shared, &table, f, vlan, &mut local);
            }
        });
        if let Err(e) = made {
            tracing::debug!(?e, "unusable frame from the TAP device");
            shared.counters.dropped(DropReason::Malformed);
        }
        // A super-frame (TCP in bulk) is plenty for one send already: waiting for more would
        // only delay its segments and the ACKs they clock.
        if super_frame || drained >= DRAIN || local.batcher.bytes() >= DRAIN_BYTES {
            drained = 0;
            send_queued(&shared, &tap, &sock, &mut local).await;
        }
    }
}

/// Most TAP reads forwarded before their frames are sent.
const DRAIN: usize = 64;
/// Most bytes waiting to be sent before they are.
const DRAIN_BYTES: usize = 64 * 1024;

/// Sends what the frames read so far produced: ICMP answers back into the bridge, datagrams
/// to the peers.
async fn send_queued(shared: &Shared, tap: &Tap, sock: &DataSocket, local: &mut Local) {
    for r in local.replies.drain(..) {
        if let Err(e) = tap.send(&r).await {
            tracing::debug!(error = %e, "writing an ICMP error to the TAP device");
        }
    }
    flush(shared, sock, &mut local.batcher).await;
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
async fn flush(shared: &Shared, sock: &DataSocket, batcher: &mut Batcher) {
    for (addr, seg, buf, count) in batcher.pending() {
        bump(&shared.counters.udp_sends);
        match sock.send_segments(buf, seg, addr).await {
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

/// Datagrams from peers: deliver, relay, or both. One receive may hold many (GRO).
async fn net_to_tap(shared: Arc<Shared>, tap: Arc<Tap>, sock: Arc<DataSocket>) {
    let mut buf = vec![0u8; 65536 + 4096];
    let mut batcher = Batcher::default();
    let mut sends: Vec<(ShortId, Header)> = Vec::with_capacity(16);
    let mut deliveries: Vec<Range<usize>> = Vec::with_capacity(64);
    let mut coalescer = Coalescer::default();
    let mut untagged = Vec::with_capacity(2048);
    // A run held open for the next receive (see the end of the loop).
    let mut holding = false;
    loop {
        let continued = std::mem::take(&mut holding);
        let received = if continued {
            let r = sock.try_recv(&mut buf);
            if r.is_err() {
                // Nothing waiting (or an error): the held run goes out now.
                if let Some(run) = coalescer.finish() {
                    write_tap(&shared, &tap, run, true).await;
                }
            }
            r
        } else {
            sock.recv(&mut buf).await
        };
        let (n, from, seg) = match received {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "receiving on the data port");
                continue;
            }
        };
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
                    on_echo(&shared, &sock, &table, header, &buf[inner]).await;
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
                queue(&shared, &mut batcher, frame, to, h, now_ms);
            }
        }
        if frames > 0 {
            shared.busy_poll.traffic(frames, now_ms);
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
                            network::untag(frame, &mut untagged);
                            write_tap(&shared, &net_tap, &untagged, false).await;
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
                write_tap(&shared, &tap, run, true).await;
            }
            if !coalescer.push(frame) {
                write_tap(&shared, &tap, frame, false).await;
            }
        }
        // A run that may still grow after a receive of several datagrams waits for the next
        // receive if it is already here (never for one that is not, and for one receive at
        // most): a 64 KiB TCP super-frame crosses the wire in two sends (one carries at most
        // 64 KiB of datagrams), and joined across both it reaches the container's stack as
        // one packet, not two (half the TAP writes, half the receiving program's wake-ups).
        if !continued && n > seg && coalescer.can_grow() {
            holding = true;
        } else if let Some(run) = coalescer.finish() {
            write_tap(&shared, &tap, run, true).await;
        }
        flush(&shared, &sock, &mut batcher).await;
    }
}

async fn write_tap(shared: &Shared, tap: &Tap, bytes: &[u8], with_header: bool) {
    bump(&shared.counters.tap_writes);
    if with_header && VnetHdr::parse(bytes).is_some_and(|h| h.gso_size > 0) {
        bump(&shared.counters.coalesced_writes);
    }
    let written = if with_header {
        tap.send_with_header(bytes).await
    } else {
        tap.send(bytes).await
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
async fn on_echo(shared: &Shared, sock: &DataSocket, table: &Table, header: Header, inner: &[u8]) {
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
            send_echo(shared, sock, to, &h, &e).await;
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

async fn send_echo(shared: &Shared, sock: &DataSocket, to: ShortId, h: &Header, e: &Echo) {
    let mut inner = Vec::with_capacity(64);
    e.write(&mut inner);
    let mut out = Vec::with_capacity(128);
    let addr = shared
        .neighbours()
        .prepare(to, h, &inner, &mut out, shared.now_ms());
    match addr {
        Some(addr) => {
            if sock.send_to(&out, addr).await.is_err() {
                bump(&shared.counters.send_errors);
            }
        }
        None => shared.counters.dropped(DropReason::NoRoute),
    }
}

/// Echo requests of `meshctl ping`s, queued by the agent: sent from here, where the socket is.
async fn echo_requests(shared: Arc<Shared>, sock: Arc<DataSocket>) {
    // Taken once; ending early would read as the data path failing (see `supervise`).
    let Some(mut queue) = shared.echoes.take_queue() else {
        return std::future::pending().await;
    };
    while let Some(req) = queue.recv().await {
        let table = shared.table();
        let (Some(me), Some(hop)) = (table.me, table.next_hop.get(&req.target)) else {
            shared.counters.dropped(DropReason::NoRoute);
            continue;
        };
        let e = Echo::request(req.session, req.seq, heartbeat::stamp_of(Instant::now()));
        send_echo(&shared, &sock, *hop, &echo::header(me, req.target), &e).await;
    }
    // The sender lives in `shared`, which outlives this task: the queue never closes.
    std::future::pending::<()>().await;
}

/// Heartbeats to every neighbour: they tell it our data address (through any NAT), that our
/// data path works, and the largest datagram it got through to us lately; some are padded into
/// path-MTU probes.
async fn heartbeats(shared: Arc<Shared>, tap: Arc<Tap>, sock: Arc<DataSocket>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    // Late heartbeats are not made up for in a burst (see the agent's tick).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::with_capacity(65536);
    let mut inner = Vec::with_capacity(65536);
    let mut challenge = Vec::with_capacity(65536);
    let mut probe_out = Vec::with_capacity(65536);
    loop {
        tick.tick().await;
        // Heartbeats say "my data path works": they stop when it does not, so that peers
        // route around this host while its control connections still look fine.
        if let Err(e) = tap.attached() {
            shared.fail(format!("the TAP device {} is gone: {e}", shared.tap_name));
        }
        if shared.failure().is_some() {
            return;
        }
        let Some(me) = shared
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .me
        else {
            continue;
        };
        // Every link, also one whose short id is still being settled: it stays alive.
        let links: Vec<LinkId> = shared.neighbours().link_ids().collect();
        for link in links {
            out.clear();
            let (addr, candidate) = {
                let mut nb = shared.neighbours();
                let Some(peer) = nb.get(link).map(|n| n.peer) else {
                    continue;
                };
                let h = Header {
                    origin: me,
                    destination: peer,
                    hops: 1,
                    heartbeat: true,
                };
                let Some(probe) = nb.heartbeat_payload(link, &mut inner, Instant::now()) else {
                    continue;
                };
                let addr = nb.prepare_on(link, &h, &inner, &mut out, shared.now_ms());
                // The path-MTU probe: the same heartbeat padded, sealed on its own (every
                // datagram has its own counter). Taken in twice, it changes nothing.
                probe_out.clear();
                if let Some(len) = probe {
                    let plain = inner.len();
                    inner.resize(len, 0);
                    nb.prepare_on(link, &h, &inner, &mut probe_out, shared.now_ms());
                    inner.truncate(plain);
                }
                // A new address the neighbour's heartbeats came from gets the challenge too
                // (sealed separately: every datagram has its own counter).
                let candidate = nb.candidate(link).and_then(|c| {
                    challenge.clear();
                    nb.prepare_on(link, &h, &inner, &mut challenge, shared.now_ms())
                        .map(|_| c)
                });
                (addr, candidate)
            };
            if let Some(addr) = addr {
                for datagram in [&out, &probe_out].into_iter().filter(|d| !d.is_empty()) {
                    if sock.send_to(datagram, addr).await.is_err() {
                        bump(&shared.counters.send_errors);
                    }
                }
            }
            if let Some(candidate) = candidate
                && sock.send_to(&challenge, candidate).await.is_err()
            {
                bump(&shared.counters.send_errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_panicking_task_ends_the_data_path_with_its_message_and_stops_the_others() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let forever = tokio::spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
            let watch = forever.abort_handle();
            let lock = Arc::new(std::sync::Mutex::new(0u32));
            let held = lock.clone();
            let why = supervise(vec![
                ("looping", forever),
                (
                    "crashing",
                    tokio::spawn(async move {
                        // Poisons the lock, as a bug on the data path thread would.
                        let _guard = held.lock().unwrap();
                        panic!("index out of bounds");
                    }),
                ),
            ])
            .await;
            assert!(why.contains("crashing panicked"), "{why}");
            assert!(why.contains("index out of bounds"), "{why}");
            tokio::task::yield_now().await;
            assert!(watch.is_finished(), "the other task was stopped");
            // The poisoned lock is still readable the way Shared reads its locks.
            assert!(lock.is_poisoned());
            assert_eq!(*lock.lock().unwrap_or_else(PoisonError::into_inner), 0);
        });
    }
}
