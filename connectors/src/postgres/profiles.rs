//! Profile storage: one PostgreSQL transaction per batch holds the profiles, the
//! lifecycle history, the applied event ids and the consumed offsets, so state
//! and offsets advance together (effectively-once on any broker).

use std::collections::{BTreeMap, HashMap, HashSet};

use lifecycle_pipeline::profile::{AccountStatus, Profile, Transition};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::rules::RuleWrites;
use uuid::Uuid;

/// Namespace of user UUIDs (v5 of the external user id).
pub const USER_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6379_636c_6500_7573_6572_7331);

/// The `users.id` of an external user id.
pub fn user_uuid(user_id: &str) -> Uuid {
    Uuid::new_v5(&USER_NAMESPACE, user_id.as_bytes())
}

/// `users.id` of an API or command `user_id`: a UUID as is, else the UUID of the external id.
pub fn resolve_user(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|_| user_uuid(id))
}

/// Documents per upsert statement, in bytes (a single larger document goes alone).
const UPSERT_CHUNK_BYTES: usize = 2 << 20;

/// Consecutive ranges of items whose sizes add up to at most `limit` each; an
/// item larger than `limit` is a range of its own.
fn byte_chunks(sizes: impl Iterator<Item = usize>, limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, size) in sizes.enumerate() {
        match out.last_mut() {
            Some(r) if bytes + size <= limit => {
                r.end = i + 1;
                bytes += size;
            }
            _ => {
                out.push(i..i + 1);
                bytes = size;
            }
        }
    }
    out
}

/// Upserts `profiles` with their documents in one statement.
async fn upsert_profiles(
    tx: &mut Transaction<'static, Postgres>,
    profiles: &[(&Profile, &str)],
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::with_capacity(profiles.len());
    let mut externals = Vec::with_capacity(profiles.len());
    let mut stages = Vec::with_capacity(profiles.len());
    let mut statuses = Vec::with_capacity(profiles.len());
    let mut docs = Vec::with_capacity(profiles.len());
    let mut created = Vec::with_capacity(profiles.len());
    for &(p, doc) in profiles {
        ids.push(user_uuid(&p.user_id));
        externals.push(p.user_id.clone());
        stages.push(p.lifecycle_stage.as_str().to_owned());
        statuses.push(match p.account_status {
            AccountStatus::Active => "active",
            AccountStatus::Deleted => "deleted",
        });
        docs.push(doc);
        created.push(p.signup_date.or(p.behavioral.first_seen).unwrap_or_else(chrono::Utc::now));
    }
    sqlx::query(
        "INSERT INTO users (id, external_id, current_lifecycle_stage, account_status, profile, created_at, updated_at) \
         SELECT id, ext, stage, status, doc::json, created, now() \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
           AS v(id, ext, stage, status, doc, created) \
         ON CONFLICT (id) DO UPDATE SET current_lifecycle_stage = EXCLUDED.current_lifecycle_stage, \
           account_status = EXCLUDED.account_status, profile = EXCLUDED.profile, \
           external_id = EXCLUDED.external_id, updated_at = now()",
    )
    .bind(&ids)
    .bind(&externals)
    .bind(&stages)
    .bind(&statuses)
    .bind(&docs)
    .bind(&created)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A batch transaction of the profile stage.
pub struct ProfileTx {
    pub(super) tx: Transaction<'static, Postgres>,
}

/// Opens a batch transaction.
pub async fn begin(pool: &PgPool) -> Result<ProfileTx, sqlx::Error> {
    Ok(ProfileTx { tx: pool.begin().await? })
}

impl ProfileTx {
    /// Locks the offset rows of `partitions` (creating missing ones at 0) and
    /// returns the next offset to apply per partition. Concurrent instances that
    /// briefly own the same partition during a rebalance are serialised here.
    pub async fn lock_offsets(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, i64>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO stage_offsets (consumer_group, topic, partition, next_offset) \
             SELECT $1, $2, p, 0 FROM UNNEST($3::int[]) AS p ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .execute(&mut *self.tx)
        .await?;
        let rows = sqlx::query(
            "SELECT partition, next_offset FROM stage_offsets \
             WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3) ORDER BY partition FOR UPDATE",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.iter().map(|r| (r.get::<i32, _>(0), r.get::<i64, _>(1))).collect())
    }

    /// The subset of `event_ids` already applied.
    pub async fn seen(&mut self, event_ids: &[String]) -> Result<HashSet<String>, sqlx::Error> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT event_id FROM processed_events WHERE event_id = ANY($1)")
            .bind(event_ids)
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Stored profiles of `user_ids` (absent users are simply missing). The
    /// documents come as text and parse straight into profiles, without a
    /// `serde_json::Value` tree in between (several times the document's size).
    pub async fn load(&mut self, user_ids: &[String]) -> Result<HashMap<String, Profile>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT external_id, profile::text FROM users WHERE external_id = ANY($1) AND profile IS NOT NULL",
        )
        .bind(user_ids)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let doc: &str = r.get(1);
            match serde_json::from_str::<Profile>(doc) {
                Ok(p) => {
                    out.insert(id, p);
                }
                Err(e) => return Err(sqlx::Error::Decode(format!("profile of {id}: {e}").into())),
            }
        }
        Ok(out)
    }

    /// Writes the batch without committing: upserted profiles, each with its
    /// JSON document (the caller serialises it once, for the changelog too),
    /// history rows, what segments and triggers evaluated, applied event ids
    /// and the next offsets. A value PostgreSQL refuses fails here, before the
    /// caller produces anything for the batch.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &mut self,
        profiles: &[(&Profile, &str)],
        transitions: &[Transition],
        rules: &RuleWrites,
        applied: &[(String, String)],
        group: &str,
        topic: &str,
        next_offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), sqlx::Error> {
        if !profiles.is_empty() {
            // A statement carries about UPSERT_CHUNK_BYTES of documents, so the
            // connection's buffer holds a slice of the batch, not all of it.
            for range in byte_chunks(profiles.iter().map(|(_, doc)| doc.len()), UPSERT_CHUNK_BYTES) {
                upsert_profiles(&mut self.tx, &profiles[range]).await?;
            }
            // Emails: unique when present; an address another user holds is kept in
            // the profile document only (and logged by the caller's metrics).
            let mut seen_email = HashSet::new();
            let (mut eids, mut emails) = (Vec::new(), Vec::new());
            for (p, _) in profiles {
                if let Some(e) = &p.email
                    && seen_email.insert(e.clone())
                {
                    eids.push(user_uuid(&p.user_id));
                    emails.push(e.clone());
                }
            }
            sqlx::query(
                "UPDATE users u SET email = v.email FROM UNNEST($1::uuid[], $2::text[]) AS v(id, email) \
                 WHERE u.id = v.id AND u.email IS DISTINCT FROM v.email \
                   AND NOT EXISTS (SELECT 1 FROM users o WHERE o.email = v.email AND o.id <> v.id)",
            )
            .bind(&eids)
            .bind(&emails)
            .execute(&mut *self.tx)
            .await?;
        }
        if !transitions.is_empty() {
            let users: Vec<Uuid> = transitions.iter().map(|t| user_uuid(&t.user_id)).collect();
            let from: Vec<String> = transitions.iter().map(|t| t.from.as_str().to_owned()).collect();
            let to: Vec<String> = transitions.iter().map(|t| t.to.as_str().to_owned()).collect();
            let at: Vec<chrono::DateTime<chrono::Utc>> = transitions.iter().map(|t| t.at).collect();
            let meta: Vec<serde_json::Value> =
                transitions.iter().map(|t| serde_json::json!({"event_id": t.event_id})).collect();
            sqlx::query(
                "INSERT INTO user_lifecycle_history (user_id, from_stage, to_stage, transitioned_at, metadata) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])",
            )
            .bind(&users)
            .bind(&from)
            .bind(&to)
            .bind(&at)
            .bind(&meta)
            .execute(&mut *self.tx)
            .await?;
            // The audit log of lifecycle events (seed table lifecycle_events).
            let data: Vec<serde_json::Value> = transitions
                .iter()
                .map(|t| serde_json::json!({"from_stage": t.from.as_str(), "to_stage": t.to.as_str(), "cause_event_id": t.event_id}))
                .collect();
            sqlx::query(
                "INSERT INTO lifecycle_events (event_type, user_id, lifecycle_stage, event_data, created_at) \
                 SELECT 'lifecycle.stage_changed', u, s, d, t FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::timestamptz[]) AS v(u, s, d, t)",
            )
            .bind(&users)
            .bind(&to)
            .bind(&data)
            .bind(&at)
            .execute(&mut *self.tx)
            .await?;
        }
        if !rules.is_empty() {
            self.write_rules(rules).await?;
        }
        if !applied.is_empty() {
            let ids: Vec<&str> = applied.iter().map(|(e, _)| e.as_str()).collect();
            let users: Vec<Uuid> = applied.iter().map(|(_, u)| user_uuid(u)).collect();
            sqlx::query(
                "INSERT INTO processed_events (event_id, user_id) SELECT * FROM UNNEST($1::text[], $2::uuid[])",
            )
            .bind(&ids)
            .bind(&users)
            .execute(&mut *self.tx)
            .await?;
        }
        let parts: Vec<i32> = next_offsets.keys().copied().collect();
        let offs: Vec<i64> = next_offsets.values().copied().collect();
        sqlx::query(
            "UPDATE stage_offsets s SET next_offset = v.o, updated_at = now() FROM UNNEST($3::int[], $4::bigint[]) AS v(p, o) \
             WHERE s.consumer_group = $1 AND s.topic = $2 AND s.partition = v.p AND v.o > s.next_offset",
        )
        .bind(group)
        .bind(topic)
        .bind(&parts)
        .bind(&offs)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Commits the batch.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// Marks one record as done without applying it (it was dead-lettered): the
/// partition's next offset moves past it and its event id counts as seen, so
/// neither a restart nor a redelivery applies it later.
pub async fn skip_record(
    pool: &PgPool,
    (group, topic): (&str, &str),
    (partition, offset): (i32, i64),
    event: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO stage_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE \
           SET next_offset = GREATEST(stage_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(offset + 1)
    .execute(&mut *tx)
    .await?;
    if let Some((event_id, user_id)) = event {
        sqlx::query("INSERT INTO processed_events (event_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(event_id)
            .bind(user_uuid(user_id))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Deletes applied-event ids older than `hours` (the deduplication window).
pub async fn prune_processed(pool: &PgPool, hours: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM processed_events WHERE processed_at < now() - make_interval(hours => $1)")
        .bind(i32::try_from(hours).unwrap_or(i32::MAX))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::byte_chunks;

    #[test]
    fn chunks_stay_under_the_limit_and_a_large_item_goes_alone() {
        let chunks = |sizes: &[usize]| byte_chunks(sizes.iter().copied(), 10);
        assert_eq!(chunks(&[]), vec![]);
        assert_eq!(chunks(&[4, 4, 2, 1]), vec![0..3, 3..4]);
        assert_eq!(chunks(&[3, 25, 3, 3]), vec![0..1, 1..2, 2..4]);
        assert_eq!(chunks(&[10, 0, 10]), vec![0..2, 2..3]);
        let sizes = [7usize, 1, 9, 2, 2, 6, 11, 4];
        let all = chunks(&sizes);
        assert_eq!(all.iter().map(|r| r.len()).sum::<usize>(), sizes.len());
        assert!(all.iter().all(|r| r.len() == 1 || sizes[r.clone()].iter().sum::<usize>() <= 10));
    }
}
