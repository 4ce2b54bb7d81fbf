//! The session table: a slab of slots addressed by [`Key`]s, with an index by client address.
//!
//! A key is a slot and that slot's generation. Vacating a slot bumps its generation, so a key
//! still held after its session ended (by an epoll registration, a lookup task, a recency
//! entry) finds nothing instead of the slot's next occupant. Vacant slots are reused before
//! the slab grows. The key is also the epoll event data of a session's socket: a number,
//! never a pointer.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A session's identity: its slot in the table and that slot's generation, so that a key
/// of an ended session never names the slot's next occupant. Also the epoll event data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key(pub(super) u64);

impl Key {
    /// The key of slot `index` in its `generation`.
    pub(super) fn new(index: u32, generation: u32) -> Self {
        Key(u64::from(generation) << 32 | u64::from(index))
    }

    /// The slot.
    fn index(self) -> u32 {
        self.0 as u32
    }

    /// The slot's generation.
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What the table holds: anything that knows the client it belongs to.
pub(super) trait Peer {
    /// The client address the entry is found by.
    fn peer(&self) -> SocketAddr;
}

/// A slot of the table.
struct Slot<T> {
    /// Bumped each time the slot is vacated.
    generation: u32,
    /// The occupant.
    entry: Option<T>,
}

/// Entries (a route's sessions) by slot, and the slot of each client.
pub(super) struct Table<T> {
    /// Entries by slot.
    slots: Vec<Slot<T>>,
    /// Vacant slots, reused before the slab grows.
    vacant: Vec<u32>,
    /// The slot of each client's entry.
    by_peer: HashMap<SocketAddr, u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { slots: Vec::new(), vacant: Vec::new(), by_peer: HashMap::new() }
    }
}

impl<T: Peer> Table<T> {
    /// How many entries there are.
    pub(super) fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// The key of `peer`'s entry.
    pub(super) fn find(&self, peer: &SocketAddr) -> Option<Key> {
        let &index = self.by_peer.get(peer)?;
        let slot = self.slots.get(index as usize)?;
        Some(Key::new(index, slot.generation))
    }

    /// The entry of `key`, unless it has left.
    pub(super) fn get(&self, key: Key) -> Option<&T> {
        let slot = self.slots.get(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        slot.entry.as_ref()
    }

    /// As [`Table::get`], mutable.
    pub(super) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        let slot = self.slots.get_mut(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        slot.entry.as_mut()
    }

    /// Adds an entry for a client that has none; gives it back if the slab is full.
    pub(super) fn insert(&mut self, entry: T) -> Result<Key, T> {
        let index = match self.vacant.pop() {
            Some(index) => index,
            None => {
                let Ok(index) = u32::try_from(self.slots.len()) else { return Err(entry) };
                self.slots.push(Slot { generation: 0, entry: None });
                index
            }
        };
        let Some(slot) = self.slots.get_mut(index as usize) else { return Err(entry) };
        self.by_peer.insert(entry.peer(), index);
        slot.entry = Some(entry);
        Ok(Key::new(index, slot.generation))
    }

    /// Takes the entry of `key` out.
    pub(super) fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.index() as usize)?;
        if slot.generation != key.generation() {
            return None;
        }
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.vacant.push(key.index());
        let peer = entry.peer();
        if self.by_peer.get(&peer) == Some(&key.index()) {
            self.by_peer.remove(&peer);
        }
        Some(entry)
    }

    /// Every entry with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            let entry = slot.entry.as_ref()?;
            Some((Key::new(u32::try_from(index).ok()?, slot.generation), entry))
        })
    }

    /// Takes every entry out, leaving the table empty.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = T> {
        self.by_peer.clear();
        self.vacant.clear();
        std::mem::take(&mut self.slots).into_iter().filter_map(|slot| slot.entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client and a label.
    #[derive(Debug, Clone, PartialEq)]
    struct Entry(SocketAddr, &'static str);

    impl Peer for Entry {
        fn peer(&self) -> SocketAddr {
            self.0
        }
    }

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn an_entry_is_found_by_its_client_and_by_its_key() {
        let mut table = Table::default();
        let a = table.insert(Entry(client(1), "a")).expect("room");
        let b = table.insert(Entry(client(2), "b")).expect("room");
        assert_ne!(a, b);
        assert_eq!(table.len(), 2);
        assert_eq!(table.find(&client(1)), Some(a));
        assert_eq!(table.find(&client(2)), Some(b));
        assert_eq!(table.find(&client(3)), None);
        assert_eq!(table.get(a), Some(&Entry(client(1), "a")));
        if let Some(entry) = table.get_mut(b) {
            entry.1 = "b2";
        }
        assert_eq!(table.get(b), Some(&Entry(client(2), "b2")));
    }

    #[test]
    fn a_removed_entry_key_finds_nothing_even_once_its_slot_is_reused() {
        let mut table = Table::default();
        let old = table.insert(Entry(client(1), "old")).expect("room");
        assert_eq!(table.remove(old), Some(Entry(client(1), "old")));
        assert_eq!((table.len(), table.find(&client(1))), (0, None));
        assert_eq!(table.remove(old), None, "removed twice");

        let new = table.insert(Entry(client(2), "new")).expect("room");
        assert_eq!(new.index(), old.index(), "the vacant slot is reused");
        assert_eq!(new.generation(), old.generation() + 1);
        assert_eq!(table.get(old), None, "the old key must not name the new occupant");
        assert_eq!(table.get_mut(old), None);
        assert_eq!(table.remove(old), None);
        assert_eq!(table.get(new), Some(&Entry(client(2), "new")));
    }

    #[test]
    fn the_slab_grows_only_when_no_slot_is_vacant() {
        let mut table = Table::default();
        let keys: Vec<Key> = (0..4).map(|i| table.insert(Entry(client(i), "x")).expect("room")).collect();
        table.remove(keys[1]);
        table.remove(keys[3]);
        let reused: Vec<u32> = (10..12).map(|i| table.insert(Entry(client(i), "y")).expect("room").index()).collect();
        assert_eq!(reused, [3, 1], "vacant slots, the last vacated first");
        assert_eq!(table.insert(Entry(client(20), "z")).expect("room").index(), 4, "then the slab grows");
        assert_eq!(table.len(), 5);
    }

    #[test]
    fn iter_and_take_all_see_every_entry_once() {
        let mut table = Table::default();
        let keys: Vec<Key> = (0..5).map(|i| table.insert(Entry(client(i), "x")).expect("room")).collect();
        table.remove(keys[2]);
        let seen: Vec<(Key, u16)> = table.iter().map(|(key, entry)| (key, entry.0.port())).collect();
        assert_eq!(seen, [(keys[0], 0), (keys[1], 1), (keys[3], 3), (keys[4], 4)]);
        let mut taken: Vec<u16> = table.take_all().map(|entry| entry.0.port()).collect();
        taken.sort_unstable();
        assert_eq!(taken, [0, 1, 3, 4]);
        assert_eq!((table.len(), table.find(&client(0)), table.get(keys[0])), (0, None, None));
        assert_eq!(table.insert(Entry(client(9), "after")).expect("room").index(), 0, "a fresh slab");
    }

    #[test]
    fn a_key_round_trips_its_slot_and_generation() {
        let key = Key::new(u32::MAX - 1, 7);
        assert_eq!((key.index(), key.generation()), (u32::MAX - 1, 7));
        assert_eq!(Key(key.0), key, "the epoll event data gives the key back");
    }
}
