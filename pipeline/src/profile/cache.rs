//! The profile stage's in-memory cache of profiles, bounded by bytes.
//!
//! Two generations: new and updated profiles go into the young one; when its
//! bytes reach half the budget it becomes the old one and the previous old
//! generation is dropped. Lookups look in both. So memory stays under about the
//! budget (plus one batch) however many users there are and however large
//! their profiles grow, and a profile used within the last generation survives
//! a rotation, unlike a cache that is cleared when full.

use std::collections::HashMap;

use super::model::Profile;

/// A byte-bounded map from user id to profile.
#[derive(Debug)]
pub struct ProfileCache {
    young: HashMap<String, (Profile, usize)>,
    old: HashMap<String, (Profile, usize)>,
    young_bytes: usize,
    old_bytes: usize,
    budget: usize,
}

/// Bytes charged per entry beyond the profile: the map's slot and the key.
fn entry_overhead(user_id: &str) -> usize {
    size_of::<(String, (Profile, usize))>() + user_id.len().next_multiple_of(16) + 16
}

impl ProfileCache {
    /// An empty cache holding about `budget` bytes at most (0: holds nothing).
    pub fn new(budget: usize) -> Self {
        Self { young: HashMap::new(), old: HashMap::new(), young_bytes: 0, old_bytes: 0, budget }
    }

    /// The cached profile of `user_id`.
    pub fn get(&self, user_id: &str) -> Option<&Profile> {
        self.young.get(user_id).or_else(|| self.old.get(user_id)).map(|(p, _)| p)
    }

    /// Whether `user_id` is cached.
    pub fn contains(&self, user_id: &str) -> bool {
        self.young.contains_key(user_id) || self.old.contains_key(user_id)
    }

    /// Caches `profile` (replacing the user's previous one).
    pub fn insert(&mut self, profile: Profile) {
        let bytes = profile.approx_bytes() + entry_overhead(&profile.user_id);
        if bytes > self.budget / 2 {
            self.remove(&profile.user_id);
            return;
        }
        if let Some((_, b)) = self.old.remove(&profile.user_id) {
            self.old_bytes -= b;
        }
        if self.young_bytes + bytes > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::replace(&mut self.young_bytes, 0);
        }
        let user_id = profile.user_id.clone();
        if let Some((_, b)) = self.young.insert(user_id, (profile, bytes)) {
            self.young_bytes -= b;
        }
        self.young_bytes += bytes;
    }

    /// Caches every profile of `profiles`.
    pub fn extend(&mut self, profiles: impl IntoIterator<Item = Profile>) {
        for p in profiles {
            self.insert(p);
        }
    }

    /// Forgets `user_id`.
    pub fn remove(&mut self, user_id: &str) {
        if let Some((_, b)) = self.young.remove(user_id) {
            self.young_bytes -= b;
        }
        if let Some((_, b)) = self.old.remove(user_id) {
            self.old_bytes -= b;
        }
    }

    /// Forgets everything (partitions moved: other instances may have changed these users).
    pub fn clear(&mut self) {
        *self = Self::new(self.budget);
    }

    /// Profiles cached.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (see [`Profile::approx_bytes`]).
    pub fn bytes(&self) -> usize {
        self.young_bytes + self.old_bytes
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

    #[test]
    fn holds_what_fits_and_finds_it_in_either_generation() {
        let one = profile("u0", 0).approx_bytes() + entry_overhead("u0");
        let mut c = ProfileCache::new(one * 10);
        for i in 0..5 {
            c.insert(profile(&format!("u{i}"), 0));
        }
        assert_eq!(c.len(), 5);
        // The sixth fills past half the budget: the first five become the old generation.
        c.insert(profile("u5", 0));
        assert_eq!(c.len(), 6);
        assert!((0..6).all(|i| c.contains(&format!("u{i}"))));
        assert_eq!(c.get("u3").map(|p| p.user_id.as_str()), Some("u3"));
        assert!(c.bytes() <= one * 10);
    }

    #[test]
    fn stays_within_the_budget_however_many_users_come() {
        let budget = 64 * 1024;
        let mut c = ProfileCache::new(budget);
        for i in 0..10_000 {
            c.insert(profile(&format!("user-{i}"), i % 300));
            assert!(c.bytes() <= budget, "{} bytes after {i}", c.bytes());
        }
        assert!(c.len() > 10 && c.len() < 10_000);
        // The newest users are there; the oldest were dropped with their generation.
        assert!(c.contains("user-9999") && !c.contains("user-0"));
    }

    #[test]
    fn replacing_a_profile_charges_its_new_size_once() {
        let mut c = ProfileCache::new(1 << 20);
        c.insert(profile("a", 10));
        let before = c.bytes();
        c.insert(profile("a", 1000));
        assert_eq!(c.len(), 1);
        assert!(c.bytes() > before);
        c.insert(profile("a", 10));
        assert_eq!(c.bytes(), before);
        c.remove("a");
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn a_used_profile_survives_a_rotation_and_moves_to_the_young_generation() {
        let one = profile("u0", 0).approx_bytes() + entry_overhead("u0");
        let mut c = ProfileCache::new(one * 4);
        c.extend([profile("u0", 0), profile("u1", 0)]);
        c.insert(profile("u2", 0)); // rotation: u0, u1 old
        c.insert(profile("u0", 0)); // u0 back in the young generation
        assert_eq!(c.bytes(), 3 * one);
        c.insert(profile("u3", 0)); // rotation: u2, u0 old; u1 dropped
        assert!(c.contains("u0") && c.contains("u2") && c.contains("u3") && !c.contains("u1"));
    }

    #[test]
    fn a_zero_budget_or_a_huge_profile_is_not_cached() {
        let mut c = ProfileCache::new(0);
        c.insert(profile("a", 0));
        assert!(c.is_empty());
        let mut c = ProfileCache::new(4096);
        c.insert(profile("a", 0));
        c.insert(profile("a", 10_000));
        assert!(c.is_empty() && c.bytes() == 0);
    }
}
