//! User profiles: the state the profile stage keeps per user, the pure update
//! `(profile, event) -> transition`, the engagement score and CLV formulas, and
//! the lifecycle stage rules, and the byte-bounded cache the stage keeps them in.

mod cache;
mod lifecycle;
mod model;
mod score;
mod update;

pub use cache::ProfileCache;
pub use lifecycle::{LifecycleRules, Stage, Transition};
pub use model::{AccountStatus, Behavioral, Demographic, Profile, RECENT_EVENTS, Transactional};
pub use score::{ScoreParams, customer_lifetime_value, engagement_score};
