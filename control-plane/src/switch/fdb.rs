//! The MAC table: which peer a MAC address lives behind, learned from frames peers send us.
//! Bounded, so a flood of made-up source MACs costs a counted eviction, not memory; entries age
//! out so a container that moves is found again.

use std::collections::HashMap;

use super::{Mac, ShortId};

pub struct Fdb {
    entries: HashMap<Mac, (ShortId, u64)>,
    capacity: usize,
    max_age_ms: u64,
    pub evictions: u64,
}

impl Fdb {
    pub fn new(capacity: usize, max_age_ms: u64) -> Fdb {
        Fdb {
            entries: HashMap::new(),
            capacity,
            max_age_ms,
            evictions: 0,
        }
    }

    /// `mac` was seen as the source of a frame that came from `peer`.
    pub fn learn(&mut self, mac: Mac, peer: ShortId, now_ms: u64) {
        if super::is_multicast(&mac) {
            return;
        }
        if !self.entries.contains_key(&mac) && self.entries.len() >= self.capacity {
            self.expire(now_ms);
            if self.entries.len() >= self.capacity {
                // Still full of live entries: replace the oldest.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(m, _)| *m)
                {
                    self.entries.remove(&oldest);
                    self.evictions += 1;
                }
            }
        }
        self.entries.insert(mac, (peer, now_ms));
    }

    /// The peer `mac` lives behind, if known and fresh.
    pub fn lookup(&self, mac: &Mac, now_ms: u64) -> Option<ShortId> {
        self.entries
            .get(mac)
            .filter(|(_, t)| now_ms.saturating_sub(*t) < self.max_age_ms)
            .map(|(p, _)| *p)
    }

    /// Drops entries older than the maximum age.
    pub fn expire(&mut self, now_ms: u64) {
        let max = self.max_age_ms;
        self.entries
            .retain(|_, (_, t)| now_ms.saturating_sub(*t) < max);
    }

    /// Forgets everything learned behind `peer` (it left the mesh).
    pub fn forget_peer(&mut self, peer: ShortId) {
        self.entries.retain(|_, (p, _)| *p != peer);
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
    }
}
