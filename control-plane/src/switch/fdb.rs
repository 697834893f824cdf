//! The MAC table: which peer a MAC address lives behind, learned from frames peers send us.
//! Bounded, so a flood of made-up source MACs costs a counted eviction, not memory; entries age
//! out so a container that moves is found again.

use std::collections::{HashMap, VecDeque};

use super::{Mac, ShortId};

/// A live entry is re-stamped at most this often: a stream of frames from one MAC costs a map
/// write, not a queue entry, per frame.
const REFRESH_MS: u64 = 1000;

pub struct Fdb {
    entries: HashMap<Mac, (ShortId, u64)>,
    /// Every stamp given to an entry, oldest first (a stamp the entry has since replaced is
    /// skipped when it comes up). The front is the least recently confirmed MAC, so making
    /// room costs O(1) however many MACs a flood invents.
    order: VecDeque<(Mac, u64)>,
    capacity: usize,
    max_age_ms: u64,
    pub evictions: u64,
}

impl Fdb {
    pub fn new(capacity: usize, max_age_ms: u64) -> Fdb {
        Fdb {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            max_age_ms,
            evictions: 0,
        }
    }

    /// `mac` was seen as the source of a frame that came from `peer` (at `now_ms`; an entry
    /// learnt elsewhere may be older).
    pub fn learn(&mut self, mac: Mac, peer: ShortId, now_ms: u64) {
        if super::is_multicast(&mac) {
            return;
        }
        match self.entries.get(&mac) {
            Some((p, t)) if *p == peer && now_ms < t.saturating_add(REFRESH_MS) => return,
            Some(_) => {}
            None => self.make_room(now_ms),
        }
        self.entries.insert(mac, (peer, now_ms));
        self.order.push_back((mac, now_ms));
        if self.order.len() > 2 * self.capacity.max(1) {
            // Mostly replaced stamps: keep one per entry, in stamp order.
            let mut live: Vec<(Mac, u64)> =
                self.entries.iter().map(|(m, (_, t))| (*m, *t)).collect();
            live.sort_by_key(|(_, t)| *t);
            self.order = live.into();
        }
    }

    /// Before a new entry: drops expired entries from the old end, and the least recently
    /// confirmed one while the table is full.
    fn make_room(&mut self, now_ms: u64) {
        while let Some(&(mac, stamp)) = self.order.front() {
            let current = self.entries.get(&mac).is_some_and(|(_, t)| *t == stamp);
            let expired = now_ms.saturating_sub(stamp) >= self.max_age_ms;
            if current && !expired && self.entries.len() < self.capacity {
                return;
            }
            self.order.pop_front();
            if current {
                self.entries.remove(&mac);
                if !expired {
                    self.evictions += 1;
                }
            }
        }
    }

    /// The peer `mac` lives behind, if known and fresh.
    pub fn lookup(&self, mac: &Mac, now_ms: u64) -> Option<ShortId> {
        self.entries
            .get(mac)
            .filter(|(_, t)| now_ms.saturating_sub(*t) < self.max_age_ms)
            .map(|(p, _)| *p)
    }

    /// Forgets everything learned behind `peer` (it left the mesh).
    pub fn forget_peer(&mut self, peer: ShortId) {
        self.entries.retain(|_, (p, _)| *p != peer);
        // Their stamps in `order` are skipped when they come up.
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Mac, &(ShortId, u64))> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ShortId = ShortId(1);
    const B: ShortId = ShortId(2);

    #[test]
    fn learns_moves_and_ages() {
        let mut f = Fdb::new(10, 1000);
        let m = [2, 0, 0, 0, 0, 1];
        f.learn(m, A, 0);
        assert_eq!(f.lookup(&m, 10), Some(A));
        f.learn(m, B, 20); // the container moved
        assert_eq!(f.lookup(&m, 30), Some(B));
        assert_eq!(f.lookup(&m, 2000), None, "stale entries are not used");
        f.learn([1, 0, 0, 0, 0, 1], A, 0);
        assert_eq!(f.len(), 1, "multicast sources are never learned");
    }

    #[test]
    fn a_flood_of_macs_stays_bounded() {
        let mut f = Fdb::new(100, 60_000);
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            f.learn([2, 0, b[0], b[1], b[2], b[3]], A, u64::from(i));
        }
        assert_eq!(f.len(), 100);
        assert_eq!(f.evictions, 9_900);
        assert!(f.order.len() <= 200, "the stamp queue is bounded too");
        // The survivors are the most recently seen.
        let b = 9_999u32.to_be_bytes();
        assert_eq!(f.lookup(&[2, 0, b[0], b[1], b[2], b[3]], 10_000), Some(A));
    }

    #[test]
    fn the_least_recently_confirmed_mac_makes_room_and_refreshes_stay_bounded() {
        let mut f = Fdb::new(3, 60_000);
        let mac = |n: u8| [2, 0, 0, 0, 0, n];
        for n in 1..=3 {
            f.learn(mac(n), A, u64::from(n));
        }
        // 1 keeps talking (a refresh a second, hundreds of frames): it stays, 2 goes.
        for t in 4..5000 {
            f.learn(mac(1), A, t);
        }
        assert!(f.order.len() <= 6, "{}", f.order.len());
        f.learn(mac(4), B, 5000);
        assert_eq!(f.lookup(&mac(1), 5000), Some(A));
        assert_eq!(f.lookup(&mac(2), 5000), None);
        assert_eq!(f.lookup(&mac(3), 5000), Some(A));
        assert_eq!(f.evictions, 1);
        // Expired entries go first, without counting as evictions.
        f.learn(mac(5), B, 64_000);
        assert_eq!(f.len(), 3, "3 (learnt at 3 ms) expired and made way");
        assert_eq!(f.lookup(&mac(3), 64_000), None);
        assert_eq!(f.evictions, 1, "an expired entry is no eviction");
    }
}
