//! Loading `schemas/avro`: `envelope.avsc` and `events/<category>.<action>.avsc`.
//! Dropping a new file into `events/` defines a new event type.

use std::path::{Path, PathBuf};

use lifecycle_pipeline::EventCatalog;
use lifecycle_pipeline::avro::Envelope;

use crate::error::SchemasError;

/// The checkout the program runs in: the nearest directory, from the working
/// directory up, that holds `schemas/avro/envelope.avsc`; else the checkout this
/// crate was compiled in. Found at run time because builds are shared: one target
/// directory (`~/.cache/lifecycle/target`) serves every checkout, and cargo keeps
/// an artifact compiled in another checkout when this one's sources are older.
pub fn checkout_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    std::env::current_dir().ok().and_then(|cwd| checkout_above(&cwd)).unwrap_or(compiled)
}

/// The nearest of `dir` and its ancestors that holds `schemas/avro/envelope.avsc`.
fn checkout_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join("schemas/avro/envelope.avsc").is_file()).map(Path::to_path_buf)
}

/// The default schema directory: `schemas/avro` of the [`checkout_root`].
pub fn default_dir() -> PathBuf {
    checkout_root().join("schemas/avro")
}

/// The schema texts of one directory.
#[derive(Debug, Clone)]
pub struct SchemaFiles {
    /// Text of `envelope.avsc`.
    pub envelope: String,
    /// `(event_type, avsc text)`, sorted by event type.
    pub event_types: Vec<(String, String)>,
}

impl SchemaFiles {
    /// Reads `dir/envelope.avsc` and every `dir/events/*.avsc`.
    pub fn load(dir: &Path) -> Result<Self, SchemasError> {
        let io = |path: &Path, source| SchemasError::Io { path: path.display().to_string(), source };
        let env_path = dir.join("envelope.avsc");
        let envelope = std::fs::read_to_string(&env_path).map_err(|e| io(&env_path, e))?;
        let events_dir = dir.join("events");
        let mut event_types = Vec::new();
        for entry in std::fs::read_dir(&events_dir).map_err(|e| io(&events_dir, e))? {
            let path = entry.map_err(|e| io(&events_dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(event_type) = name.strip_suffix(".avsc") else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            event_types.push((event_type.to_owned(), text));
        }
        event_types.sort();
        Ok(Self { envelope, event_types })
    }

    /// The parsed envelope.
    pub fn envelope(&self) -> Result<Envelope, SchemasError> {
        Envelope::parse(&self.envelope)
            .map_err(|e| SchemasError::Invalid { path: "envelope.avsc".into(), message: e.to_string() })
    }

    /// The event catalog built from the event type files.
    pub fn catalog(&self) -> Result<EventCatalog, SchemasError> {
        EventCatalog::from_schemas(self.event_types.iter().map(|(t, s)| (t.as_str(), s.as_str())))
            .map_err(|e| SchemasError::Invalid { path: format!("events/{}.avsc", e.event_type), message: e.message })
    }

    /// Subject for an event type's properties schema.
    pub fn properties_subject(event_type: &str) -> String {
        format!("{event_type}-properties")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_is_the_nearest_directory_up_holding_the_schemas() {
        let tmp = std::env::temp_dir().join(format!("lifecycle-checkout-{}", std::process::id()));
        let inner = tmp.join("outer/deep/er");
        std::fs::create_dir_all(&inner).expect("dirs");
        assert_eq!(checkout_above(&inner), None);
        for root in [&tmp, &tmp.join("outer")] {
            std::fs::create_dir_all(root.join("schemas/avro")).expect("schemas dir");
            std::fs::write(root.join("schemas/avro/envelope.avsc"), "{}").expect("envelope");
        }
        assert_eq!(checkout_above(&inner), Some(tmp.join("outer")));
        assert_eq!(checkout_above(&tmp), Some(tmp.clone()));
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }

    #[test]
    fn the_shipped_schemas_load_and_cover_the_standard_taxonomy() {
        let files = SchemaFiles::load(&default_dir()).expect("load");
        files.envelope().expect("envelope parses");
        let catalog = files.catalog().expect("catalog");
        for t in [
            "user.signup",
            "user.login",
            "user.logout",
            "user.profile_update",
            "user.account_deletion",
            "engagement.page_view",
            "engagement.feature_click",
            "engagement.content_view",
            "engagement.search",
            "engagement.share",
            "transaction.cart_add",
            "transaction.cart_remove",
            "transaction.checkout_start",
            "transaction.purchase_complete",
            "transaction.refund",
        ] {
            assert!(catalog.contains(t), "{t}");
        }
    }
}
