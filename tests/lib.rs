//! Support for Strongroom's cross-crate integration and end-to-end tests.

pub mod agent;
pub mod browser;
pub mod pages;
pub mod player;
pub mod stack;

use broker::db::Database;
use broker::sessions::store::{self, Reservation, ReserveOutcome};
use uuid::Uuid;

/// Reserves a session row for `owner`, as the portal does before a launch. A stream
/// needs the row: its recording's catalogue entry refers to the session.
pub async fn reserve_session_row(db: &Database, session_id: Uuid, owner: &str) {
    let reservation = Reservation {
        session_id,
        user_id: owner,
        site: "demo-bank",
        instance_id: "cross-crate-test",
        client_addr: None,
        now_ms: chrono::Utc::now().timestamp_millis(),
        default_quota: 100,
        site_limit: None,
        host_limit: 100,
    };
    let outcome = store::reserve(db, &reservation).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved, "session row reserved");
}
