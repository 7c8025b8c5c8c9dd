//! The profile stage's in-memory cache of profiles, bounded by bytes.
//!
//! Least recently cached first out: every batch caches the profiles it
//! updated again, so the order of caching is the order of use. Once the
//! profiles reach the budget, each insert drops the least recently cached
//! until they fit, so the cache fills to its budget and stays there, however
//! many users there are and however large their profiles grow. (A cache of two
//! generations, dropping the older half at once, swung between half and all
//! of its budget, and resident memory swung with it.)
//!
//! The budget covers the map's and the queue's own tables at their real
//! capacity, not only the profiles: a hash table never shrinks, so a table
//! sized for the many small profiles of a young cache stays when fewer, larger
//! profiles fill it later. Profiles are boxed so a table slot is a few words.

use std::collections::{HashMap, VecDeque};

use super::model::Profile;

/// A byte-bounded map from user id to profile.
#[derive(Debug)]
pub struct ProfileCache {
    entries: HashMap<String, Entry>,
    /// User ids in the order they were cached, oldest first, with the insert
    /// number: a pair whose number is not its entry's is stale (the user was
    /// cached again since, or removed) and skipped. Compacted when stale pairs
    /// outnumber the entries.
    order: VecDeque<(u64, String)>,
    inserts: u64,
    /// The most entries the map's table had room for: it never shrinks, and its
    /// `capacity()` drops below its allocation as removals leave tombstones.
    map_capacity: usize,
    /// Bytes charged for the entries (profiles and key copies), tables apart.
    bytes: usize,
    budget: usize,
}

/// A cached profile, the bytes charged for it, and its insert number.
#[derive(Debug)]
struct Entry {
    profile: Box<Profile>,
    bytes: usize,
    insert: u64,
}

/// Whether the order queue's pair (`insert`, `user_id`) is the user's live
/// entry, not a stale one left by a later insert or a removal.
fn is_current(entries: &HashMap<String, Entry>, insert: u64, user_id: &str) -> bool {
    entries.get(user_id).is_some_and(|e| e.insert == insert)
}

/// Bytes charged per entry beyond the profile: the heap copies of its key, in
/// the map and in the order queue (a live pair and at most one stale one on
/// average, given the compaction rule). Table slots are charged by capacity.
fn entry_overhead(user_id: &str) -> usize {
    3 * (user_id.len().next_multiple_of(16) + 16)
}

impl ProfileCache {
    /// An empty cache holding about `budget` bytes at most (0: holds nothing).
    pub fn new(budget: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), inserts: 0, map_capacity: 0, bytes: 0, budget }
    }

    /// Takes `user_id`'s profile out of the cache (to update it without a copy;
    /// caching it again afterwards makes it the most recent).
    pub fn take(&mut self, user_id: &str) -> Option<Profile> {
        let e = self.entries.remove(user_id)?;
        self.bytes -= e.bytes;
        Some(*e.profile)
    }

    /// Whether `user_id` is cached.
    pub fn contains(&self, user_id: &str) -> bool {
        self.entries.contains_key(user_id)
    }

    /// Caches `profile` (replacing the user's previous one) as the most recent,
    /// dropping the least recently cached profiles while over the budget. A
    /// profile larger than the whole budget is not cached.
    pub fn insert(&mut self, profile: Profile) {
        let bytes = profile.approx_bytes() + entry_overhead(&profile.user_id);
        self.remove(&profile.user_id);
        if bytes > self.budget {
            return;
        }
        self.inserts += 1;
        self.bytes += bytes;
        self.order.push_back((self.inserts, profile.user_id.clone()));
        self.entries.insert(profile.user_id.clone(), Entry { profile: Box::new(profile), bytes, insert: self.inserts });
        self.map_capacity = self.map_capacity.max(self.entries.capacity());
        while self.bytes() > self.budget {
            let Some((insert, user_id)) = self.order.pop_front() else { break };
            if is_current(&self.entries, insert, &user_id) {
                self.remove(&user_id);
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(insert, user_id)| is_current(entries, *insert, user_id));
        }
    }

    /// Caches every profile of `profiles`.
    pub fn extend(&mut self, profiles: impl IntoIterator<Item = Profile>) {
        for p in profiles {
            self.insert(p);
        }
    }

    /// Forgets `user_id`.
    pub fn remove(&mut self, user_id: &str) {
        self.take(user_id);
    }

    /// Forgets everything (partitions moved: other instances may have changed these users).
    pub fn clear(&mut self) {
        *self = Self::new(self.budget);
    }

    /// Profiles cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Estimated bytes held: the profiles (see [`Profile::approx_bytes`]),
    /// their keys, and the map's and queue's tables at their capacity.
    pub fn bytes(&self) -> usize {
        self.bytes + self.table_bytes()
    }

    /// The map's and the queue's tables. The map holds at most 7 entries per
    /// 8 slots, with a control byte per slot.
    fn table_bytes(&self) -> usize {
        self.map_capacity * 8 / 7 * (size_of::<(String, Entry)>() + 1)
            + self.order.capacity() * size_of::<(u64, String)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(user: &str, extra: usize) -> Profile {
        let mut p = Profile::new(user);
        p.email = Some("x".repeat(extra));
        p
    }

    /// Bytes charged for one small profile, tables apart.
    fn one() -> usize {
        profile("u0", 0).approx_bytes() + entry_overhead("u0")
    }

    /// What `n` small profiles cost with their tables, as the cache counts them.
    fn holding(n: usize) -> usize {
        let mut c = ProfileCache::new(usize::MAX);
        c.extend((0..n).map(|i| profile(&format!("u{i}"), 0)));
        c.bytes()
    }

    #[test]
    fn holds_what_fits_and_drops_the_least_recently_cached_first() {
        let mut c = ProfileCache::new(holding(5));
        for i in 0..5 {
            c.insert(profile(&format!("u{i}"), 0));
        }
        assert_eq!((c.len(), c.bytes()), (5, holding(5)));
        let u3 = c.take("u3").expect("cached");
        assert_eq!(u3.user_id, "u3");
        c.insert(u3);
        c.insert(profile("u5", 0));
        assert_eq!(c.len(), 5);
        assert!(!c.contains("u0") && (1..6).all(|i| c.contains(&format!("u{i}"))));
    }

    #[test]
    fn a_recached_profile_is_the_most_recent_again() {
        // Three profiles, with tables grown for the fourth one and for the
        // order queue's fifth pair (from 4 to 8 pairs).
        let mut c = ProfileCache::new(holding(4) - one() + 4 * size_of::<(u64, String)>());
        c.extend([profile("u0", 0), profile("u1", 0), profile("u2", 0)]);
        c.insert(profile("u0", 0)); // used again: u1 is now the least recent
        c.insert(profile("u3", 0));
        assert!(c.contains("u0") && !c.contains("u1") && c.contains("u2") && c.contains("u3"));
        assert_eq!(c.bytes() - c.table_bytes(), 3 * one());
    }

    #[test]
    fn the_budget_covers_the_tables_at_their_capacity() {
        let mut c = ProfileCache::new(usize::MAX);
        c.extend((0..1000).map(|i| profile(&format!("u{i}"), 0)));
        assert!(c.table_bytes() >= 1000 * (size_of::<(String, Entry)>() + size_of::<(u64, String)>()));
        // Fewer, larger profiles later: the map keeps its table, and it is still charged.
        let table = c.table_bytes();
        for i in 0..900 {
            c.remove(&format!("u{i}"));
        }
        assert_eq!(c.table_bytes(), table);
        assert_eq!(c.bytes(), 100 * one() + c.table_bytes());
    }

    #[test]
    fn taking_a_profile_removes_it() {
        let mut c = ProfileCache::new(usize::MAX);
        c.extend([profile("a", 10), profile("b", 0)]);
        let a = c.take("a").expect("cached");
        assert_eq!(a, profile("a", 10));
        assert!(!c.contains("a") && c.contains("b") && c.take("a").is_none());
        assert_eq!(c.bytes() - c.table_bytes(), one());
        c.insert(a);
        assert!(c.contains("a"));
    }

    #[test]
    fn fills_to_the_budget_and_stays_there_however_many_users_come() {
        let budget = 256 * 1024;
        let mut c = ProfileCache::new(budget);
        let largest = profile("user-9999", 299).approx_bytes() + entry_overhead("user-9999");
        let mut full = false;
        for i in 0..10_000 {
            c.insert(profile(&format!("user-{i}"), i % 300));
            assert!(c.bytes() <= budget, "{} bytes after {i}", c.bytes());
            full |= c.bytes() + largest > budget;
            // Once full it stays full: evictions free only what the newcomer
            // needs (the tables' size can only have grown meanwhile).
            assert!(!full || c.bytes() + 2 * largest > budget, "{} bytes after {i}", c.bytes());
        }
        assert!(c.len() > 10 && c.len() < 10_000);
        assert!(c.contains("user-9999") && !c.contains("user-0"));
    }

    #[test]
    fn replacing_a_profile_charges_its_new_size_once() {
        let mut c = ProfileCache::new(1 << 20);
        c.insert(profile("a", 10));
        let before = c.bytes();
        c.insert(profile("a", 1000));
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes() - before, profile("a", 1000).approx_bytes() - profile("a", 10).approx_bytes());
        c.insert(profile("a", 10));
        assert_eq!(c.bytes(), before);
        c.remove("a");
        assert_eq!((c.len(), c.bytes() - c.table_bytes()), (0, 0));
    }

    #[test]
    fn the_order_queue_stays_bounded_when_the_same_users_come_back() {
        let mut c = ProfileCache::new(1 << 20);
        for i in 0..100_000 {
            c.insert(profile(&format!("u{}", i % 7), 0));
            assert!(c.order.len() <= 2 * c.len() + 65, "{} queued for {} entries", c.order.len(), c.len());
        }
        assert_eq!(c.len(), 7);
        // Removed users leave stale pairs that never evict a later copy.
        c.remove("u1");
        c.insert(profile("u1", 0));
        assert!(c.contains("u1") && c.len() == 7);
    }

    #[test]
    fn a_zero_budget_or_a_huge_profile_is_not_cached() {
        let mut c = ProfileCache::new(0);
        c.insert(profile("a", 0));
        assert!(c.is_empty() && c.bytes() == 0);
        let mut c = ProfileCache::new(8192);
        c.insert(profile("a", 0));
        assert!(c.contains("a"));
        c.insert(profile("a", 10_000));
        assert!(c.is_empty() && c.bytes() == c.table_bytes());
    }

    #[test]
    fn clearing_forgets_everything_and_keeps_the_budget() {
        let mut c = ProfileCache::new(holding(2));
        c.extend([profile("u0", 0), profile("u1", 0)]);
        c.clear();
        assert!(c.is_empty() && c.bytes() == 0);
        c.extend([profile("u2", 0), profile("u3", 0), profile("u4", 0)]);
        assert_eq!(c.len(), 2);
    }
}
