//! PostgreSQL storage for the registry.

use sqlx::Row;
use sqlx::postgres::PgPool;

use super::compat::{self, Level};

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Subject name.
    pub subject: String,
    /// Version within the subject (1-based).
    pub version: i32,
    /// Global schema id.
    pub id: i32,
    /// Schema text as registered.
    pub schema: String,
    /// AVRO (the only type this registry accepts).
    pub schema_type: String,
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    /// The newest (non-deleted) one.
    Latest,
    /// A specific version number.
    Number(i32),
}

/// Storage errors and outcomes the API maps to Confluent error codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The schema conflicts with existing versions.
    #[error("incompatible: {}", .0.join("; "))]
    Incompatible(Vec<String>),
    /// A stored schema no longer parses (should never happen).
    #[error("stored schema {0} does not parse: {1}")]
    Corrupt(i32, String),
}

/// The registry's tables.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

const VERSION_COLS: &str = "sv.subject, sv.version, s.id, s.schema_text, s.schema_type \
     FROM registry_subject_versions sv JOIN registry_schemas s ON s.id = sv.schema_id";

fn registered(row: &sqlx::postgres::PgRow) -> Result<Registered, sqlx::Error> {
    Ok(Registered {
        subject: row.try_get(0)?,
        version: row.try_get(1)?,
        id: row.try_get(2)?,
        schema: row.try_get(3)?,
        schema_type: row.try_get(4)?,
    })
}

impl Store {
    /// Wraps a pool whose database has the registry migrations applied.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies the registry's migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        sqlx::migrate!("./migrations").run(&self.pool).await
    }

    /// Checks the database answers and holds the registry's tables.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM registry_config LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Schema text and type by global id.
    pub async fn schema_by_id(&self, id: i32) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT schema_text, schema_type FROM registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// `(subject, version)` pairs that use a schema id.
    pub async fn usages(&self, id: i32, include_deleted: bool) -> Result<Vec<(String, i32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject, version FROM registry_subject_versions \
             WHERE schema_id = $1 AND (NOT deleted OR $2) ORDER BY subject, version",
        )
        .bind(id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Subjects with at least one version, sorted.
    pub async fn subjects(&self, include_deleted: bool, prefix: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT subject FROM registry_subject_versions \
             WHERE (NOT deleted OR $1) AND starts_with(subject, $2) ORDER BY subject",
        )
        .bind(include_deleted)
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Version numbers of a subject, ascending (empty: no such subject).
    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<i32>, StoreError> {
        let rows = sqlx::query(
            "SELECT version FROM registry_subject_versions WHERE subject = $1 AND (NOT deleted OR $2) ORDER BY version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// One version of a subject.
    pub async fn version(
        &self,
        subject: &str,
        sel: VersionSel,
        include_deleted: bool,
    ) -> Result<Option<Registered>, StoreError> {
        let row =
            match sel {
                VersionSel::Latest => sqlx::query(&format!(
                    "SELECT {VERSION_COLS} WHERE sv.subject = $1 AND NOT sv.deleted ORDER BY sv.version DESC LIMIT 1"
                ))
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?,
                VersionSel::Number(v) => {
                    sqlx::query(&format!(
                        "SELECT {VERSION_COLS} WHERE sv.subject = $1 AND sv.version = $2 AND (NOT sv.deleted OR $3)"
                    ))
                    .bind(subject)
                    .bind(v)
                    .bind(include_deleted)
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
        Ok(row.as_ref().map(registered).transpose()?)
    }

    /// The version of `subject` holding a schema with this identity.
    pub async fn lookup(
        &self,
        subject: &str,
        identity: &str,
        include_deleted: bool,
    ) -> Result<Option<Registered>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLS} WHERE sv.subject = $1 AND s.identity = $2 AND (NOT sv.deleted OR $3) \
             ORDER BY sv.version LIMIT 1"
        ))
        .bind(subject)
        .bind(identity)
        .bind(include_deleted)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(registered).transpose()?)
    }

    /// Registers `text` under `subject`: returns the existing version when the
    /// same schema is already there, else checks compatibility and adds a version.
    /// Serialised per subject with an advisory lock.
    pub async fn register(
        &self,
        subject: &str,
        text: &str,
        identity: &str,
        schema: &apache_avro::Schema,
    ) -> Result<Registered, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(subject).execute(&mut *tx).await?;
        let existing = sqlx::query(&format!(
            "SELECT {VERSION_COLS} WHERE sv.subject = $1 AND s.identity = $2 AND NOT sv.deleted ORDER BY sv.version LIMIT 1"
        ))
        .bind(subject)
        .bind(identity)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(registered(&row)?);
        }
        let level = level_in(&mut tx, subject).await?;
        if level != Level::None {
            let rows = sqlx::query(&format!(
                "SELECT {VERSION_COLS} WHERE sv.subject = $1 AND NOT sv.deleted ORDER BY sv.version"
            ))
            .bind(subject)
            .fetch_all(&mut *tx)
            .await?;
            let mut old = Vec::with_capacity(rows.len());
            for row in &rows {
                let r = registered(row)?;
                let parsed = compat::parse(&r.schema).map_err(|e| StoreError::Corrupt(r.id, e))?;
                old.push((r.version, parsed));
            }
            compat::check(level, schema, &old).map_err(StoreError::Incompatible)?;
        }
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO registry_schemas (schema_type, schema_text, identity) VALUES ('AVRO', $1, $2) \
             ON CONFLICT (identity) DO UPDATE SET identity = EXCLUDED.identity RETURNING id",
        )
        .bind(text)
        .bind(identity)
        .fetch_one(&mut *tx)
        .await?;
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO registry_subject_versions (subject, version, schema_id) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2 FROM registry_subject_versions WHERE subject = $1 \
             RETURNING version",
        )
        .bind(subject)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let schema_text: String = sqlx::query_scalar("SELECT schema_text FROM registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Registered { subject: subject.to_owned(), version, id, schema: schema_text, schema_type: "AVRO".into() })
    }

    /// Soft-deletes (or, when already soft-deleted and `permanent`, removes) all
    /// versions of a subject; returns the versions affected.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>, StoreError> {
        let rows = if permanent {
            sqlx::query("DELETE FROM registry_subject_versions WHERE subject = $1 AND deleted RETURNING version")
                .bind(subject)
                .fetch_all(&self.pool)
                .await?
        } else {
            sqlx::query("UPDATE registry_subject_versions SET deleted = true WHERE subject = $1 AND NOT deleted RETURNING version")
                .bind(subject)
                .fetch_all(&self.pool)
                .await?
        };
        let mut v: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Soft- or permanently deletes one version; `None` when there was nothing to delete.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: i32,
        permanent: bool,
    ) -> Result<Option<i32>, StoreError> {
        let sql = if permanent {
            "DELETE FROM registry_subject_versions WHERE subject = $1 AND version = $2 AND deleted RETURNING version"
        } else {
            "UPDATE registry_subject_versions SET deleted = true WHERE subject = $1 AND version = $2 AND NOT deleted RETURNING version"
        };
        let row = sqlx::query(sql).bind(subject).bind(version).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The configured level of a subject (`None`: not configured), or the global level for `""`.
    pub async fn level(&self, subject: &str) -> Result<Option<Level>, StoreError> {
        let row: Option<String> = sqlx::query_scalar("SELECT compatibility FROM registry_config WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_deref().and_then(Level::parse))
    }

    /// Sets the level of a subject, or the global level for `""`.
    pub async fn set_level(&self, subject: &str, level: Level) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
        )
        .bind(subject)
        .bind(level.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a subject's own level; returns the level it had.
    pub async fn delete_level(&self, subject: &str) -> Result<Option<Level>, StoreError> {
        let row: Option<String> = sqlx::query_scalar(
            "DELETE FROM registry_config WHERE subject = $1 AND subject <> '' RETURNING compatibility",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_deref().and_then(Level::parse))
    }
}

async fn level_in(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, subject: &str) -> Result<Level, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT subject, compatibility FROM registry_config WHERE subject IN ($1, '')")
            .bind(subject)
            .fetch_all(&mut **tx)
            .await?;
    let pick = |s: &str| rows.iter().find(|(subj, _)| subj == s).and_then(|(_, l)| Level::parse(l));
    Ok(pick(subject).or_else(|| pick("")).unwrap_or(Level::Backward))
}
