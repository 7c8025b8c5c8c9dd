//! Interned short strings: the event types a profile's recent events repeat.
//!
//! A profile keeps up to [`crate::profile::RECENT_EVENTS`] recent events, and
//! the profile stage caches many profiles, so one heap string per recent event
//! was most of the cache's memory (and of the cost of cloning a profile). Event
//! types come from a small taxonomy, so each distinct one is stored once and
//! shared; a clone is a reference-count increment.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// Distinct names kept in the shared table. Names past this (possible only
/// with an unbounded set of event types) are still correct, just not shared.
const MAX_INTERNED: usize = 4096;

/// A shared, immutable string that (de)serializes as a plain string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// The shared copy of `s`.
    pub fn new(s: &str) -> Self {
        static TABLE: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
        let table = TABLE.get_or_init(Mutex::default);
        // A poisoned lock only means another thread panicked while holding it;
        // the set itself is always consistent.
        let mut set = table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = set.get(s) {
            return Self(shared.clone());
        }
        let fresh: Arc<str> = Arc::from(s);
        if set.len() < MAX_INTERNED {
            set.insert(fresh.clone());
        }
        Self(fresh)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name::new(v))
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let (a, b) = (Name::new("engagement.page_view"), Name::from("engagement.page_view"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, b);
        assert_eq!(a, *"engagement.page_view");
        assert_eq!(a, "engagement.page_view".to_owned());
        assert_ne!(a, Name::new("user.login"));
    }

    #[test]
    fn names_round_trip_through_json_as_plain_strings() -> Result<(), serde_json::Error> {
        let a = Name::new("user.signup");
        let text = serde_json::to_string(&a)?;
        assert_eq!(text, "\"user.signup\"");
        let back: Name = serde_json::from_str(&text)?;
        assert!(Arc::ptr_eq(&a.0, &back.0));
        assert!(serde_json::from_str::<Name>("12").is_err());
        Ok(())
    }
}
