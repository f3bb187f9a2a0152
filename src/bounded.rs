//! A map of fixed capacity for isolate memory: whatever its keys, and
//! devices choose some of them (push service origins, endpoints), it never
//! holds more than its capacity. Inserting a new key into a full map drops
//! the least recently used entry.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

pub struct BoundedMap<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, u64)>,
    /// Bumped on every use: the entry with the smallest stamp goes first.
    clock: u64,
}

impl<K, V> fmt::Debug for BoundedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoundedMap({}/{})", self.entries.len(), self.capacity)
    }
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: HashMap::new(), clock: 0 }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The entry for `key`, marked as used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let now = self.tick();
        self.entries.get_mut(key).map(|(value, used)| {
            *used = now;
            value
        })
    }

    /// The entry for `key`, created by `make` if absent (which may drop the
    /// least recently used entry), marked as used.
    pub fn entry_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        if !self.entries.contains_key(key) {
            self.make_room();
        }
        let now = self.tick();
        let (value, used) = self.entries.entry(key.clone()).or_insert_with(|| (make(), now));
        *used = now;
        value
    }

    /// Set `key` to `value` (which may drop the least recently used entry).
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(slot) = self.get_mut(&key) {
            *slot = value;
            return;
        }
        self.make_room();
        let now = self.tick();
        self.entries.insert(key, (value, now));
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(value, _)| value)
    }

    /// Every value, in no particular order (not marked as used).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(value, _)| value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn make_room(&mut self) {
        while self.entries.len() >= self.capacity {
            let oldest = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone());
            match oldest {
                Some(key) => {
                    self.entries.remove(&key);
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_and_drops_the_least_recently_used() {
        let mut map = BoundedMap::new(3);
        for i in 0..3 {
            map.insert(i, i * 10);
        }
        assert_eq!(map.get_mut(&0), Some(&mut 0));
        map.insert(3, 30);
        assert_eq!(map.len(), 3);
        assert!(map.get_mut(&1).is_none(), "1 was the least recently used");
        assert!(map.get_mut(&0).is_some());
        *map.entry_or_insert_with(&4, || 40) += 1;
        assert_eq!(map.get_mut(&4), Some(&mut 41));
        assert_eq!(map.len(), 3);
        map.insert(4, 7);
        assert_eq!(map.get_mut(&4), Some(&mut 7));
        for i in 100..10_000 {
            map.insert(i, i);
            assert!(map.len() <= map.capacity());
        }
        assert_eq!(map.remove(&9_999), Some(9_999));
        assert_eq!(BoundedMap::<u8, u8>::new(0).capacity(), 1);
    }
}
