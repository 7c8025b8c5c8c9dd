//! The users REST API: `GET/POST/PATCH/DELETE /users/{id}` and `POST /users/batch`.
//!
//! Ownership: the profile stage owns the `profile` document (counters, scores,
//! lifecycle stage); the API owns `email` and `attributes` (what a caller sets),
//! so neither overwrites the other. `{id}` is the users.id UUID or the event
//! `user_id`. Non-admin callers get PII (email, name, date of birth) masked.

mod handlers;

pub use handlers::{UsersState, router};
