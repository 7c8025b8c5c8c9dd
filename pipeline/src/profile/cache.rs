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
    young: Generation,
    old: Generation,
    budget: usize,
}

/// Profiles with the bytes charged for each, and their sum.
#[derive(Debug, Default)]
struct Generation {
    profiles: HashMap<String, (Profile, usize)>,
    bytes: usize,
}

impl Generation {
    fn get(&self, user_id: &str) -> Option<&Profile> {
        self.profiles.get(user_id).map(|(p, _)| p)
    }

    fn insert(&mut self, profile: Profile, bytes: usize) {
        self.remove(&profile.user_id);
        self.bytes += bytes;
        self.profiles.insert(profile.user_id.clone(), (profile, bytes));
    }

    fn remove(&mut self, user_id: &str) {
        if let Some((_, b)) = self.profiles.remove(user_id) {
            self.bytes -= b;
        }
    }
}

/// Bytes charged per entry beyond the profile: the map's slot and the key.
fn entry_overhead(user_id: &str) -> usize {
    size_of::<(String, (Profile, usize))>() + user_id.len().next_multiple_of(16) + 16
}

impl ProfileCache {
    /// An empty cache holding about `budget` bytes at most (0: holds nothing).
    pub fn new(budget: usize) -> Self {
        Self { young: Generation::default(), old: Generation::default(), budget }
    }

    /// The cached profile of `user_id`.
    pub fn get(&self, user_id: &str) -> Option<&Profile> {
        self.young.get(user_id).or_else(|| self.old.get(user_id))
    }

    /// Whether `user_id` is cached.
    pub fn contains(&self, user_id: &str) -> bool {
        self.get(user_id).is_some()
    }

    /// Caches `profile` (replacing the user's previous one).
    pub fn insert(&mut self, profile: Profile) {
        let bytes = profile.approx_bytes() + entry_overhead(&profile.user_id);
        if bytes > self.budget / 2 {
            self.remove(&profile.user_id);
            return;
        }
        self.old.remove(&profile.user_id);
        self.young.remove(&profile.user_id);
        if self.young.bytes + bytes > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(profile, bytes);
    }

    /// Caches every profile of `profiles`.
    pub fn extend(&mut self, profiles: impl IntoIterator<Item = Profile>) {
        for p in profiles {
            self.insert(p);
        }
    }

    /// Forgets `user_id`.
    pub fn remove(&mut self, user_id: &str) {
        self.young.remove(user_id);
        self.old.remove(user_id);
    }

    /// Forgets everything (partitions moved: other instances may have changed these users).
    pub fn clear(&mut self) {
        *self = Self::new(self.budget);
    }

    /// Profiles cached.
    pub fn len(&self) -> usize {
        self.young.profiles.len() + self.old.profiles.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Estimated bytes held (see [`Profile::approx_bytes`]).
    pub fn bytes(&self) -> usize {
        self.young.bytes + self.old.bytes
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
    fn updating_a_young_profile_does_not_rotate_or_keep_its_old_copy() {
        let one = profile("u0", 0).approx_bytes() + entry_overhead("u0");
        let mut c = ProfileCache::new(one * 4);
        c.extend([profile("u0", 0), profile("u1", 0)]);
        c.insert(profile("u1", 0)); // replaces u1 in place: still half the budget
        assert_eq!((c.len(), c.bytes()), (2, 2 * one));
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
