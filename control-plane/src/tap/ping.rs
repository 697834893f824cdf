//! `meshctl ping` on the data path: the pings waiting for echo replies, and the queue of
//! requests for the data path's chores to send (they seal with the data path's keys and send
//! on its socket, so the agent asks rather than sends; see `upkeep.rs`). The echo format and
//! routing are `crate::switch::echo`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Shared;
use crate::switch::{ShortId, echo::Echo};

/// A request for the data path to send.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub target: ShortId,
    pub session: u32,
    pub seq: u32,
}

/// A reply that came back, and the round trip it measured (µs).
#[derive(Clone, Debug)]
pub struct Arrival {
    pub echo: Echo,
    pub rtt_us: u64,
}

pub struct Echoes {
    next_session: AtomicU32,
    waiting: Mutex<HashMap<u32, UnboundedSender<Arrival>>>,
    to_send: UnboundedSender<Outgoing>,
    queue: Mutex<Option<UnboundedReceiver<Outgoing>>>,
}

impl Default for Echoes {
    fn default() -> Echoes {
        let (to_send, queue) = unbounded_channel();
        Echoes {
            // Sessions of an earlier meshd (replies still in flight) are unlikely to collide.
            next_session: AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761)),
            waiting: Mutex::new(HashMap::new()),
            to_send,
            queue: Mutex::new(Some(queue)),
        }
    }
}

impl Echoes {
    /// The queue of requests to send: taken once, by the data path's chores.
    pub fn take_queue(&self) -> Option<UnboundedReceiver<Outgoing>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// A reply for one of our sessions; false when no ping waits for it (late, or not ours).
    pub fn arrived(&self, a: Arrival) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting
            .get(&a.echo.session)
            .is_some_and(|tx| tx.send(a).is_ok())
    }
}

/// One `meshctl ping`: sends requests and receives their replies until dropped.
pub struct PingSession {
    shared: Arc<Shared>,
    session: u32,
    replies: UnboundedReceiver<Arrival>,
}

impl PingSession {
    pub fn start(shared: Arc<Shared>) -> PingSession {
        let (tx, replies) = unbounded_channel();
        let echoes = &shared.echoes;
        let mut waiting = echoes
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let session = loop {
            let s = echoes.next_session.fetch_add(1, Ordering::Relaxed);
            if !waiting.contains_key(&s) {
                break s;
            }
        };
        waiting.insert(session, tx);
        drop(waiting);
        PingSession {
            shared,
            session,
            replies,
        }
    }

    /// Queues request `seq` to `target`; fails when the data path has no route to it.
    pub fn send(&self, target: ShortId, seq: u32) -> Result<(), String> {
        if !self.shared.table().next_hop.contains_key(&target) {
            return Err("the data path has no route to it".into());
        }
        self.shared
            .echoes
            .to_send
            .send(Outgoing {
                target,
                session: self.session,
                seq,
            })
            .map_err(|_| "the data path is not running".to_string())
    }

    /// The next reply.
    pub async fn next(&mut self) -> Option<Arrival> {
        self.replies.recv().await
    }
}

impl Drop for PingSession {
    fn drop(&mut self) {
        self.shared
            .echoes
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.session);
    }
}
