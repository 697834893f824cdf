//! The data path's chores besides moving frames, on a small async runtime of their own:
//! heartbeats to every neighbour, `meshctl ping`'s echo requests, and opening named networks'
//! TAP devices. They send on the data socket directly (sends never wait on the data path
//! thread) and hand new devices to its wait ([`Poller::add`]).

use std::{
    os::fd::AsRawFd,
    sync::{Arc, PoisonError},
    time::Instant,
};

use mesh_common::DropReason;

use super::{
    HEARTBEAT_EVERY, Shared, TAP_MTU, bump, device, network_device, poller::Poller, pump,
    udp::DataSocket, vnet::Tap,
};
use crate::switch::{
    LinkId,
    echo::{self, Echo},
    heartbeat,
    wire::Header,
};

/// Runs the chores until one of them ends (an error it recorded, or a panic), and records why
/// as the data path's failure: the agent then ends meshd with that reason.
pub async fn run(shared: Arc<Shared>, tap: Arc<Tap>, sock: Arc<DataSocket>, poller: Arc<Poller>) {
    let why = supervise(vec![
        (
            "opening networks' TAP devices",
            tokio::spawn(open_networks(shared.clone(), poller)),
        ),
        (
            "sending heartbeats",
            tokio::spawn(heartbeats(shared.clone(), tap, sock.clone())),
        ),
        (
            "sending echo requests",
            tokio::spawn(echo_requests(shared.clone(), sock)),
        ),
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
            let msg = panic_message(e.into_panic());
            format!("the data path's task {which} panicked (a bug; please report it): {msg}")
        }
        _ => format!("the data path's task {which} ended"),
    }
}

/// What a panic said, for the failure it becomes.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Opens named networks' TAP devices as the agent asks (`Shared::open_network`), each on its
/// network's bridge, and hands each to the data path thread's wait. Runs as long as the data
/// path.
async fn open_networks(shared: Arc<Shared>, poller: Arc<Poller>) {
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
                // In the table first: the data path looks the device up by the token.
                if let Err(e) = poller.add(tap.as_raw_fd(), pump::network_token(vlan)) {
                    shared
                        .networks
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&vlan);
                    let _ = reply.send(Err(format!(
                        "opening network VLAN {vlan}: waiting for its TAP device: {e}"
                    )));
                    continue;
                }
                tracing::info!(vlan, "carrying a network's frames");
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(format!("opening network VLAN {vlan}: {e}")));
            }
        }
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
        pump::send_echo(&shared, &sock, *hop, &echo::header(me, req.target), &e);
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
                    if sock.send_to(datagram, addr).is_err() {
                        bump(&shared.counters.send_errors);
                    }
                }
            }
            if let Some(candidate) = candidate
                && sock.send_to(&challenge, candidate).is_err()
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
