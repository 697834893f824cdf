//! Address allocation without a central store, as a pure state machine (no I/O, no clock).
//!
//! A network's range (offsets `0..size`) is cut into pieces, each starting at a *token*. A
//! token names the one peer that owns the piece up to the next token, and only that owner ever
//! changes it: to give part of it away (a donation), it writes the new owner into the token
//! (cutting a new token first if it gives only part). Because every change is made by the one
//! peer that owns what changes, views can be merged in any order (per token, the higher
//! version wins) and two peers never both believe they own one address — so no address is ever
//! handed out twice, whatever the partitions, and nothing waits for a quorum.
//!
//! What Weave's ring allocator taught, and how this differs:
//! - A network is seeded once, by the peer that creates it; every other peer joins by
//!   receiving a donation from a reachable owner ("a joining node just works").
//! - A peer's *heir* is the peer that first gave it space (the creator's: the first peer it
//!   gave space to), written once by the peer itself. When a peer is declared dead (a
//!   tombstone: `meshctl ipam reclaim`, or unheard-of for a stated time), only its heir — or,
//!   if the heir is dead too, the heir's heir — takes its pieces. One peer per dead peer can
//!   act, so two reclaims can never hand out the same range twice (Weave's `rmpeer` on two
//!   hosts could).
//! - Memory is one entry per piece and per member, not per address.
//!
//! - The heir takes over only once every living member it knows has acknowledged the
//!   tombstone. An acknowledgement travels with its member's view, so the heir has by then
//!   seen every gift of the dead peer that any of them knew of; the takeover raises the
//!   token's generation, so a gift nobody had heard of loses to it. A partition delays a
//!   reclaim; it never stops peers allocating from what they own.
//!
//! A tombstoned peer stops allocating from what it owned. Two ways remain to get a duplicate,
//! both outside what the allocator can see: declaring a peer dead that is alive in another
//! partition (meshd refuses it while the peer is reachable), and a gift the dead peer made to
//! a new member that no other member had heard of when the heir took over (its recipient
//! finds its piece taken when it reconnects). docs/ipam.md has the whole design.

use std::collections::{BTreeMap, BTreeSet};

/// A peer, by its mesh id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer(pub u64);

/// The owner of the piece from this token's start to the next token's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub owner: Peer,
    /// Raised by every change; the higher wins when views merge.
    pub version: u64,
    /// Who gave it to its owner (the owner's heir, once the owner takes it in).
    pub from: Peer,
    /// Raised when an heir takes the token from a dead owner: whatever the dead owner wrote
    /// that had not reached anyone loses to the takeover.
    pub generation: u32,
}

impl Token {
    fn rank(&self) -> (u32, u64, Peer) {
        (self.generation, self.version, self.owner)
    }
}

/// What a peer says about itself (and the tombstone others may add).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// Written once by the member.
    pub heir: Option<Peer>,
    /// Declared dead: its pieces go to its heir.
    pub dead: bool,
    /// Free addresses it owns, and the version of that report (written by the member).
    pub free: u32,
    pub free_version: u64,
    /// The dead peers whose tombstone this member has seen (written by the member). Its view,
    /// tokens included, travels with this: an heir that sees every living member's
    /// acknowledgement has seen everything they knew of the dead peer's last gifts.
    pub acked: BTreeSet<Peer>,
}

/// The shared, mergeable view of one network's range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    pub size: u32,
    pub tokens: BTreeMap<u32, Token>,
    pub members: BTreeMap<Peer, Member>,
}

impl Ring {
    /// The range as its creator seeds it: all of it owned by `creator`.
    pub fn seed(creator: Peer, size: u32) -> Ring {
        assert!(size > 0, "an empty range");
        Ring {
            size,
            tokens: BTreeMap::from([(
                0,
                Token {
                    owner: creator,
                    version: 1,
                    from: creator,
                    generation: 0,
                },
            )]),
            members: BTreeMap::from([(creator, Member::default())]),
        }
    }

    /// Takes in another view. Order does not matter; merging twice changes nothing.
    pub fn merge(&mut self, other: &Ring) {
        if self.size == 0 {
            self.size = other.size;
        }
        for (start, t) in &other.tokens {
            match self.tokens.get(start) {
                // Equal versions with different owners cannot come from single writers; the
                // tie-break only keeps merging deterministic.
                Some(mine) if mine.rank() >= t.rank() => {}
                _ => {
                    self.tokens.insert(*start, *t);
                }
            }
        }
        for (p, m) in &other.members {
            let mine = self.members.entry(*p).or_default();
            if mine.heir.is_none() {
                mine.heir = m.heir;
            }
            mine.dead |= m.dead;
            if m.free_version > mine.free_version {
                mine.free = m.free;
                mine.free_version = m.free_version;
            }
            mine.acked.extend(m.acked.iter().copied());
        }
    }

    /// The pieces: (start, end, token).
    pub fn pieces(&self) -> impl Iterator<Item = (u32, u32, &Token)> + '_ {
        let ends = self
            .tokens
            .keys()
            .skip(1)
            .copied()
            .chain(std::iter::once(self.size));
        self.tokens.iter().zip(ends).map(|((s, t), e)| (*s, e, t))
    }

    pub fn is_dead(&self, p: Peer) -> bool {
        self.members.get(&p).is_some_and(|m| m.dead)
    }

    /// Who takes a dead peer's pieces: its heir, or the first living one up the heirs' chain.
    pub fn responsible_for(&self, dead: Peer) -> Option<Peer> {
        let mut seen = BTreeSet::from([dead]);
        let mut p = self.members.get(&dead)?.heir?;
        while self.is_dead(p) {
            if !seen.insert(p) {
                return None;
            }
            p = self.members.get(&p)?.heir?;
        }
        Some(p)
    }
}

/// Why an allocation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoAddress {
    /// We own no free address: ask a peer with free space for a donation.
    NoSpace,
    /// We were declared dead: we may not hand out addresses any more.
    Tombstoned,
}

/// Why a chosen address could not be handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotYours {
    /// We do not own it (another peer does, or nobody knows yet).
    NotOurs,
    /// We handed it out already.
    InUse,
    /// We were declared dead.
    Tombstoned,
}

/// One peer's allocator: the shared view and what it handed out itself.
#[derive(Clone, Debug)]
pub struct Node {
    pub me: Peer,
    pub ring: Ring,
    /// Offsets we handed out and that are still in use.
    pub allocated: BTreeSet<u32>,
    /// Our own changes are numbered from here (persisted with them, so a restart never reuses
    /// a version).
    clock: u64,
}

impl Node {
    /// A peer that creates the network.
    pub fn create(me: Peer, size: u32) -> Node {
        Node {
            me,
            ring: Ring::seed(me, size),
            allocated: BTreeSet::new(),
            clock: 1,
        }
    }

    /// A peer joining a network it knows of through `ring` (it owns nothing yet).
    pub fn join(me: Peer, ring: Ring) -> Node {
        let clock = ring.tokens.values().map(|t| t.version).max().unwrap_or(0);
        let mut n = Node {
            me,
            ring,
            allocated: BTreeSet::new(),
            clock,
        };
        n.ring.members.entry(me).or_default();
        n
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Our pieces: (start, end).
    pub fn owned(&self) -> Vec<(u32, u32)> {
        if self.ring.is_dead(self.me) {
            return Vec::new();
        }
        self.ring
            .pieces()
            .filter(|(_, _, t)| t.owner == self.me)
            .map(|(s, e, _)| (s, e))
            .collect()
    }

    pub fn free_count(&self) -> u32 {
        self.owned()
            .iter()
            .map(|(s, e)| e - s - self.allocated.range(*s..*e).count() as u32)
            .sum()
    }

    /// Hands out the lowest free address we own.
    pub fn allocate(&mut self) -> Result<u32, NoAddress> {
        if self.ring.is_dead(self.me) {
            return Err(NoAddress::Tombstoned);
        }
        let found = self
            .owned()
            .into_iter()
            .find_map(|(s, e)| (s..e).find(|a| !self.allocated.contains(a)));
        let a = found.ok_or(NoAddress::NoSpace)?;
        self.allocated.insert(a);
        self.report_free();
        Ok(a)
    }

    /// Hands out `a`, which someone chose (a fixed address): only when we own it and it is
    /// free, since only an address's owner may hand it out.
    pub fn allocate_at(&mut self, a: u32) -> Result<(), NotYours> {
        if self.ring.is_dead(self.me) {
            return Err(NotYours::Tombstoned);
        }
        if !self.owned().iter().any(|(s, e)| (*s..*e).contains(&a)) {
            return Err(NotYours::NotOurs);
        }
        if !self.allocated.insert(a) {
            return Err(NotYours::InUse);
        }
        self.report_free();
        Ok(())
    }

    /// Takes an address back (its container is gone).
    pub fn release(&mut self, a: u32) -> bool {
        let was = self.allocated.remove(&a);
        if was {
            self.report_free();
        }
        was
    }

    fn report_free(&mut self) {
        let (free, v) = (self.free_count(), self.tick());
        let m = self.ring.members.entry(self.me).or_default();
        m.free = free;
        m.free_version = v;
    }

    /// Gives `to` the upper half of our largest free run (at least one address). False when
    /// we have nothing free to give.
    pub fn donate(&mut self, to: Peer) -> bool {
        if to == self.me || self.ring.is_dead(self.me) || self.ring.is_dead(to) {
            return false;
        }
        // The largest run of free addresses inside one of our pieces.
        let mut best: Option<(u32, u32)> = None;
        for (s, e) in self.owned() {
            let mut run_start = None;
            for a in s..=e {
                let free = a < e && !self.allocated.contains(&a);
                match (free, run_start) {
                    (true, None) => run_start = Some(a),
                    (false, Some(rs)) => {
                        if best.is_none_or(|(bs, be)| a - rs > be - bs) {
                            best = Some((rs, a));
                        }
                        run_start = None;
                    }
                    _ => {}
                }
            }
        }
        let Some((rs, re)) = best else {
            return false;
        };
        let give_from = rs + (re - rs) / 2;
        // Cut at the end first (the rest stays ours), then at the start (it becomes `to`'s).
        // New tokens inside our piece carry its generation.
        let generation = self
            .ring
            .tokens
            .range(..=rs)
            .next_back()
            .map_or(0, |(_, t)| t.generation);
        if re < self.ring.size && !self.ring.tokens.contains_key(&re) {
            let v = self.tick();
            self.ring.tokens.insert(
                re,
                Token {
                    owner: self.me,
                    version: v,
                    from: self.me,
                    generation,
                },
            );
        }
        let v = self.tick();
        self.ring.tokens.insert(
            give_from,
            Token {
                owner: to,
                version: v,
                from: self.me,
                generation,
            },
        );
        // The creator's heir is the first peer it gives space to.
        let me = self.ring.members.entry(self.me).or_default();
        if me.heir.is_none() {
            me.heir = Some(to);
        }
        self.report_free();
        true
    }

    /// After taking in others' views: name our heir if we have none (the peer that first gave
    /// us space), and take the pieces of dead peers we are responsible for. Returns how many
    /// pieces we took.
    pub fn settle(&mut self) -> usize {
        if self.ring.is_dead(self.me) {
            return 0;
        }
        let me = self.me;
        if self.ring.members.get(&me).is_none_or(|m| m.heir.is_none()) {
            let giver = self
                .ring
                .tokens
                .values()
                .find(|t| t.owner == me && t.from != me)
                .map(|t| t.from);
            if let Some(g) = giver {
                self.ring.members.entry(me).or_default().heir = Some(g);
            }
        }
        // Acknowledge the tombstones we have seen.
        let dead: Vec<Peer> = self
            .ring
            .members
            .iter()
            .filter(|(_, m)| m.dead)
            .map(|(p, _)| *p)
            .collect();
        self.ring
            .members
            .entry(me)
            .or_default()
            .acked
            .extend(dead.iter().copied());
        let ours: Vec<u32> = self
            .ring
            .tokens
            .iter()
            .filter(|(_, t)| {
                t.owner != me
                    && self.ring.is_dead(t.owner)
                    && self.ring.responsible_for(t.owner) == Some(me)
                    && self.everyone_acked(t.owner)
            })
            .map(|(s, _)| *s)
            .collect();
        for s in &ours {
            let v = self.tick();
            let t = self.ring.tokens.get_mut(s).expect("listed above");
            *t = Token {
                owner: me,
                version: v,
                from: t.owner,
                generation: t.generation + 1,
            };
        }
        if !ours.is_empty() {
            self.report_free();
        }
        ours.len()
    }

    /// Whether every living member we know has seen `dead`'s tombstone: then we have seen
    /// what they knew of its last gifts. (A partition delays a reclaim; it never wedges
    /// allocation from what peers own.)
    fn everyone_acked(&self, dead: Peer) -> bool {
        self.ring
            .members
            .iter()
            .filter(|(p, m)| **p != dead && !m.dead)
            .all(|(_, m)| m.acked.contains(&dead))
    }

    /// Declares `peer` dead (an operator's `meshctl ipam reclaim`, or unheard-of for the stated
    /// time). Its heir takes its pieces when it next settles.
    pub fn tombstone(&mut self, peer: Peer) {
        self.ring.members.entry(peer).or_default().dead = true;
    }

    /// Takes in a neighbour's view, then settles.
    pub fn merge(&mut self, other: &Ring) {
        self.ring.merge(other);
        // Our own versions stay ahead of anything we have seen of our tokens.
        let seen = self
            .ring
            .tokens
            .values()
            .map(|t| t.version)
            .max()
            .unwrap_or(0);
        self.clock = self.clock.max(seen);
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_address_is_handed_out_only_by_its_owner_and_only_once() {
        let mut a = Node::create(Peer(1), 8);
        let mut b = Node::join(Peer(2), a.ring.clone());
        assert_eq!(b.allocate_at(3), Err(NotYours::NotOurs));
        assert_eq!(a.allocate_at(3), Ok(()));
        assert_eq!(a.allocate_at(3), Err(NotYours::InUse));
        assert_eq!(a.allocate(), Ok(0));
        assert_eq!(a.free_count(), 6);
        assert_eq!(
            a.allocate_at(8),
            Err(NotYours::NotOurs),
            "outside the range"
        );
    }

    #[test]
    fn the_creator_owns_everything_and_hands_out_the_lowest_free_address() {
        let mut a = Node::create(Peer(1), 8);
        assert_eq!(a.allocate(), Ok(0));
        assert_eq!(a.allocate(), Ok(1));
        assert!(a.release(0));
        assert_eq!(a.allocate(), Ok(0));
        assert_eq!(a.free_count(), 6);
    }

    #[test]
    fn a_donation_moves_half_of_the_largest_free_run_and_names_heirs() {
        let mut a = Node::create(Peer(1), 16);
        for _ in 0..4 {
            a.allocate().unwrap();
        }
        let mut b = Node::join(Peer(2), a.ring.clone());
        assert_eq!(b.allocate(), Err(NoAddress::NoSpace));
        assert!(a.donate(Peer(2)));
        b.merge(&a.ring);
        assert_eq!(b.owned(), vec![(10, 16)]);
        assert_eq!(a.owned(), vec![(0, 10)]);
        assert_eq!(b.ring.members[&Peer(2)].heir, Some(Peer(1)));
        assert_eq!(a.ring.members[&Peer(1)].heir, Some(Peer(2)));
        assert_eq!(b.allocate(), Ok(10));
    }

    #[test]
    fn merging_is_order_free_and_idempotent() {
        let mut a = Node::create(Peer(1), 64);
        let mut b = Node::join(Peer(2), a.ring.clone());
        let mut c = Node::join(Peer(3), a.ring.clone());
        a.donate(Peer(2));
        b.merge(&a.ring);
        b.donate(Peer(3));
        let (ra, rb) = (a.ring.clone(), b.ring.clone());
        let mut x = c.ring.clone();
        x.merge(&ra);
        x.merge(&rb);
        let mut y = c.ring.clone();
        y.merge(&rb);
        y.merge(&ra);
        y.merge(&ra);
        assert_eq!(x.tokens, y.tokens);
        c.merge(&x);
        assert!(!c.owned().is_empty());
    }

    #[test]
    fn only_the_heir_takes_a_dead_peers_pieces_and_then_the_heirs_heir() {
        let mut a = Node::create(Peer(1), 64);
        let mut b = Node::join(Peer(2), a.ring.clone());
        a.donate(Peer(2));
        b.merge(&a.ring);
        let mut c = Node::join(Peer(3), b.ring.clone());
        b.donate(Peer(3));
        c.merge(&b.ring);
        a.merge(&b.ring);
        a.merge(&c.ring);
        // 3 dies: its heir is 2 (which gave it space), not 1.
        a.tombstone(Peer(3));
        assert_eq!(a.settle(), 0, "1 is not 3's heir");
        b.merge(&a.ring);
        let before = b.owned().len();
        assert!(b.owned().len() >= before);
        assert!(b.ring.tokens.values().all(|t| t.owner != Peer(3)));
        // 2 dies too: 2's heir is 1 (which gave it space).
        a.merge(&b.ring);
        a.tombstone(Peer(2));
        a.settle();
        assert!(a.ring.tokens.values().all(|t| t.owner == Peer(1)));
        assert_eq!(a.free_count(), 64);
    }

    #[test]
    fn a_tombstoned_peer_hands_out_nothing() {
        let mut a = Node::create(Peer(1), 8);
        a.tombstone(Peer(1));
        assert_eq!(a.allocate(), Err(NoAddress::Tombstoned));
        assert!(!a.donate(Peer(2)));
    }
}
