//! API keys: SHA-256 hashed at rest in PostgreSQL, each mapped to a role, checked
//! on every request together with the per-key rate limit.
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
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::ApiError;
use super::rate_limit::RateLimiter;

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

/// Key store with a short-lived cache and the rate limiter.
#[derive(Debug)]
pub struct ApiKeys {
    pool: PgPool,
    cache: RwLock<HashMap<String, (Option<Caller>, Instant)>>,
    cache_ttl: Duration,
    limiter: RateLimiter,
}

impl ApiKeys {
    /// Keys from `pool`; `requests_per_minute` per key.
    pub fn new(pool: PgPool, requests_per_minute: u32) -> Arc<Self> {
        Arc::new(Self {
            pool,
            cache: RwLock::new(HashMap::new()),
            cache_ttl: Duration::from_secs(10),
            limiter: RateLimiter::new(requests_per_minute, Duration::from_secs(60)),
        })
    }

    /// Creates a key and returns `(id, plaintext)`; the plaintext is not stored.
    pub async fn create(pool: &PgPool, name: &str, role: Role) -> Result<(Uuid, String), sqlx::Error> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = format!("lck_{}", hex::encode(bytes));
        let id: Uuid =
            sqlx::query_scalar("INSERT INTO api_keys (name, key_hash, role) VALUES ($1, $2, $3) RETURNING id")
                .bind(name)
                .bind(hash_key(&key))
                .bind(role.as_str())
                .fetch_one(pool)
                .await?;
        Ok((id, key))
    }

    /// Revokes a key by id; true when a key was revoked.
    pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Resolves a presented key to its caller (`None`: unknown or revoked).
    pub async fn lookup(&self, key: &str) -> Result<Option<Caller>, sqlx::Error> {
        let hash = hash_key(key);
        let now = Instant::now();
        if let Some((caller, at)) = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hash)
            && now.duration_since(*at) < self.cache_ttl
        {
            return Ok(caller.clone());
        }
        let row: Option<(Uuid, String, String)> =
            sqlx::query_as("SELECT id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
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
        Ok(None) => return unauthorized("unknown or revoked API key"),
        Err(e) => {
            tracing::error!(error = %e, "api key lookup failed");
            return ApiError::unavailable("key store unavailable").into_response();
        }
    };
    if let Err(wait) = keys.limiter.check(&caller.key_id.to_string(), Instant::now()) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut err =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "rate limit exceeded for this API key")
                .with_details(serde_json::json!({ "retry_after_secs": secs }));
        err.retry_after_secs = Some(secs.max(1));
        return err.into_response();
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
