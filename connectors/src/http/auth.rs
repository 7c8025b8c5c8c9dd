//! API keys: SHA-256 hashed at rest in PostgreSQL, each mapped to a role, with
//! an optional expiry and rotation; every request is admitted by one statement
//! in PostgreSQL that checks the key is still valid and within its rate, so
//! both hold across every instance of the API.
//!
//! Keys are 32 random bytes (`lck_` + 64 hex chars), so a fast unsalted hash is
//! the right tool: there is nothing to brute-force. The plaintext is shown once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::ApiError;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including unmasked PII and key management.
    Admin,
    /// Read, ingest and execute.
    Operator,
    /// Read only.
    Analyst,
}

/// Kinds of access an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read data (all roles).
    Read,
    /// Write data or execute workflows (admin, operator).
    Write,
    /// Administration (admin).
    Admin,
}

impl Role {
    /// Parses `admin`, `operator` or `analyst`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            "analyst" => Some(Self::Analyst),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Analyst => "analyst",
        }
    }

    /// Whether this role grants `access`.
    pub fn allows(self, access: Access) -> bool {
        match self {
            Self::Admin => true,
            Self::Operator => access != Access::Admin,
            Self::Analyst => access == Access::Read,
        }
    }
}

/// The authenticated caller, put into request extensions by [`authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Key id (not the key).
    pub key_id: Uuid,
    /// Key name, for logs and audit.
    pub name: String,
    /// Role of the key.
    pub role: Role,
}

impl Caller {
    /// `Ok` when the caller's role grants `access`, else 403.
    pub fn require(&self, access: Access) -> Result<(), ApiError> {
        if self.role.allows(access) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("role '{}' may not perform this operation", self.role.as_str()),
            ))
        }
    }
}

/// SHA-256 of a key, hex.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// What [`ApiKeys::admit`] decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the key's rate: served.
    Accepted,
    /// Over the key's rate; the wait until a request leaves the window.
    Limited(Duration),
    /// The key was revoked or has expired.
    Invalid,
}

/// One key as listed to administrators (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Key id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When it stops working (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its last accepted request (`None`: never used).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The key that replaced it in a rotation.
    pub replaced_by: Option<Uuid>,
}

/// A rotation's outcome: the new key (shown once) and when the old one stops.
#[derive(Clone, PartialEq, Eq)]
pub struct Rotated {
    /// New key id.
    pub id: Uuid,
    /// New key, plaintext.
    pub key: String,
    /// When the new key expires (the old key's lifetime again, when it had one).
    pub expires_at: Option<DateTime<Utc>>,
    /// When the old key stops working.
    pub old_expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Rotated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotated")
            .field("id", &self.id)
            .field("key", &crate::secret::REDACTED)
            .field("expires_at", &self.expires_at)
            .field("old_expires_at", &self.old_expires_at)
            .finish()
    }
}

/// Key store: who a key is (cached briefly) and, on every request, whether it
/// is still valid and within its rate, decided by PostgreSQL for all instances.
#[derive(Debug)]
pub struct ApiKeys {
    pool: PgPool,
    cache: RwLock<HashMap<String, (Option<Caller>, Instant)>>,
    cache_ttl: Duration,
    limit: u32,
    window: Duration,
}

/// The SQL condition on `api_keys` of a key that works: not revoked, not expired.
macro_rules! working {
    () => {
        "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
    };
}

/// The admission statement. A sliding-window log per key: the row holds the
/// times of the key's accepted requests within the window (at most `limit`).
/// `ON CONFLICT DO UPDATE` locks the row and re-reads its latest version, so
/// requests to any number of API instances are counted exactly; the `WHERE`
/// leaves the row untouched when the window is full. The key's validity is
/// read in the same statement: a revoked or expired key inserts nothing.
const ADMIT: &str = concat!(
    "
WITH k AS (
  SELECT id FROM api_keys WHERE id = $1 AND ",
    working!(),
    "
), up AS (
  INSERT INTO api_rate_limits AS r (key_id, hits)
  SELECT id, ARRAY[now()] FROM k
  ON CONFLICT (key_id) DO UPDATE
    SET hits = ARRAY(SELECT t FROM unnest(r.hits) t WHERE t > now() - $2 * interval '1 millisecond' ORDER BY t)
               || now()
    WHERE (SELECT count(*) FROM unnest(r.hits) t WHERE t > now() - $2 * interval '1 millisecond') < $3
  RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM k), EXISTS (SELECT 1 FROM up),
  (SELECT EXTRACT(EPOCH FROM min(t) + $2 * interval '1 millisecond' - now())::float8
     FROM api_rate_limits r, unnest(r.hits) t
    WHERE r.key_id = $1 AND t > now() - $2 * interval '1 millisecond')"
);

impl ApiKeys {
    /// Keys from `pool`; `requests_per_minute` per key across every instance.
    pub fn new(pool: PgPool, requests_per_minute: u32) -> Arc<Self> {
        Arc::new(Self {
            pool,
            cache: RwLock::new(HashMap::new()),
            cache_ttl: Duration::from_secs(10),
            limit: requests_per_minute.max(1),
            window: Duration::from_secs(60),
        })
    }

    /// Creates a key that never expires; `(id, plaintext)`, the plaintext is not stored.
    pub async fn create(pool: &PgPool, name: &str, role: Role) -> Result<(Uuid, String), sqlx::Error> {
        let (id, key, _) = Self::create_expiring(pool, name, role, None).await?;
        Ok((id, key))
    }

    /// Creates a key that stops working `expires_in` from now (never with
    /// `None`); `(id, plaintext, expires_at)`.
    pub async fn create_expiring(
        pool: &PgPool,
        name: &str,
        role: Role,
        expires_in: Option<Duration>,
    ) -> Result<(Uuid, String, Option<DateTime<Utc>>), sqlx::Error> {
        let key = new_key();
        let (id, expires_at): (Uuid, Option<DateTime<Utc>>) = sqlx::query_as(
            "INSERT INTO api_keys (name, key_hash, role, expires_at) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') RETURNING id, expires_at",
        )
        .bind(name)
        .bind(hash_key(&key))
        .bind(role.as_str())
        .bind(expires_in.map(|d| d.as_millis().min(i64::MAX as u128) as i64))
        .fetch_one(pool)
        .await?;
        Ok((id, key, expires_at))
    }

    /// Revokes a key by id; true when a key was revoked. Every instance refuses
    /// it from its next request on.
    pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a working key with a new one of the same name and role; the old
    /// key goes on working for `grace` (or until it expired anyway, if sooner).
    /// `None` when there is no such working key.
    pub async fn rotate(pool: &PgPool, id: Uuid, grace: Duration) -> Result<Option<Rotated>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let old: Option<(String, String, Option<f64>)> = sqlx::query_as(concat!(
            "SELECT name, role, EXTRACT(EPOCH FROM expires_at - created_at)::float8 FROM api_keys WHERE id = $1 AND ",
            working!(),
            " FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, role, lifetime_secs)) = old else { return Ok(None) };
        let key = new_key();
        let (new_id, expires_at): (Uuid, Option<DateTime<Utc>>) = sqlx::query_as(
            "INSERT INTO api_keys (name, key_hash, role, expires_at) \
             VALUES ($1, $2, $3, now() + $4 * interval '1 second') RETURNING id, expires_at",
        )
        .bind(&name)
        .bind(hash_key(&key))
        .bind(&role)
        .bind(lifetime_secs)
        .fetch_one(&mut *tx)
        .await?;
        let old_expires_at: DateTime<Utc> = sqlx::query_scalar(
            "UPDATE api_keys SET replaced_by = $2, \
             expires_at = LEAST(COALESCE(expires_at, 'infinity'), now() + $3 * interval '1 millisecond') \
             WHERE id = $1 RETURNING expires_at",
        )
        .bind(id)
        .bind(new_id)
        .bind(grace.as_millis().min(i64::MAX as u128) as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Rotated { id: new_id, key, expires_at, old_expires_at }))
    }

    /// Every key, newest first, with its last use.
    pub async fn list(pool: &PgPool) -> Result<Vec<KeyInfo>, sqlx::Error> {
        type Row = (
            Uuid,
            String,
            String,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<Uuid>,
            bool,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.id, k.name, k.role, k.created_at, k.expires_at, k.revoked_at, \
               (SELECT max(t) FROM unnest(r.hits) t), k.replaced_by, \
               k.expires_at IS NOT NULL AND k.expires_at <= now() \
             FROM api_keys k LEFT JOIN api_rate_limits r ON r.key_id = k.id ORDER BY k.created_at DESC, k.id",
        )
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, role, created_at, expires_at, revoked_at, last_used_at, replaced_by, expired)| KeyInfo {
                id,
                name,
                role,
                status: if revoked_at.is_some() {
                    "revoked"
                } else if expired {
                    "expired"
                } else {
                    "active"
                },
                created_at,
                expires_at,
                revoked_at,
                last_used_at,
                replaced_by,
            })
            .collect())
    }

    /// Resolves a presented key to its caller (`None`: unknown, revoked or
    /// expired). Identities are cached for a few seconds; whether the key still
    /// works is decided per request by [`ApiKeys::admit`].
    pub async fn lookup(&self, key: &str) -> Result<Option<Caller>, sqlx::Error> {
        let hash = hash_key(key);
        let now = Instant::now();
        if let Some((caller, at)) = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hash)
            && now.duration_since(*at) < self.cache_ttl
        {
            return Ok(caller.clone());
        }
        let row: Option<(Uuid, String, String)> =
            sqlx::query_as(concat!("SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND ", working!()))
                .bind(&hash)
                .fetch_optional(&self.pool)
                .await?;
        let caller = row.and_then(|(key_id, name, role)| Role::parse(&role).map(|role| Caller { key_id, name, role }));
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(hash, (caller.clone(), now));
        Ok(caller)
    }

    /// Admits one request of `caller`: one statement, whichever instance asks
    /// (see [`ADMIT`]).
    pub async fn admit(&self, caller: &Caller) -> Result<Admission, sqlx::Error> {
        let window_ms = self.window.as_millis() as i64;
        let (valid, accepted, wait): (bool, bool, Option<f64>) = sqlx::query_as(ADMIT)
            .bind(caller.key_id)
            .bind(window_ms)
            .bind(i64::from(self.limit))
            .fetch_one(&self.pool)
            .await?;
        Ok(if !valid {
            Admission::Invalid
        } else if accepted {
            Admission::Accepted
        } else {
            let wait = wait.unwrap_or(0.0).clamp(0.0, self.window.as_secs_f64());
            Admission::Limited(Duration::from_secs_f64(wait))
        })
    }

    /// Drops what is cached about a key (it was found revoked or expired).
    fn forget(&self, key_id: Uuid) {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, (c, _)| c.as_ref().is_none_or(|c| c.key_id != key_id));
    }
}

fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("lck_{}", hex::encode(bytes))
}

fn presented_key(req: &Request) -> Option<&str> {
    let headers = req.headers();
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// Middleware: 401 without a valid key, 429 past the key's rate; otherwise puts
/// the [`Caller`] into request extensions and logs the access for audit.
pub async fn authenticate(State(keys): State<Arc<ApiKeys>>, mut req: Request, next: Next) -> Response {
    let Some(key) = presented_key(&req) else {
        return unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'");
    };
    let caller = match keys.lookup(key).await {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorized("unknown, revoked or expired API key"),
        Err(e) => {
            tracing::error!(error = %e, "api key lookup failed");
            return ApiError::unavailable("key store unavailable").into_response();
        }
    };
    match keys.admit(&caller).await {
        Ok(Admission::Accepted) => {}
        Ok(Admission::Invalid) => {
            keys.forget(caller.key_id);
            return unauthorized("unknown, revoked or expired API key");
        }
        Ok(Admission::Limited(wait)) => {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            let mut err =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded for this API key")
                    .with_details(serde_json::json!({ "retry_after_secs": secs }));
            err.retry_after_secs = Some(secs);
            return err.into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "api key admission failed");
            return ApiError::unavailable("key store unavailable").into_response();
        }
    }
    tracing::info!(target: "audit", key = %caller.name, role = caller.role.as_str(), method = %req.method(), path = req.uri().path(), "api access");
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_spec_says() {
        assert!(Role::Admin.allows(Access::Admin));
        assert!(Role::Operator.allows(Access::Write) && !Role::Operator.allows(Access::Admin));
        assert!(Role::Analyst.allows(Access::Read) && !Role::Analyst.allows(Access::Write));
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
