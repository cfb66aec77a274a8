//! Storage behind sign-in, on SQLite and on PostgreSQL: users, TOTP replay, throttle
//! counters and portal sessions.

use std::collections::BTreeSet;
use std::time::Duration;

use broker::auth::portal::{self, EndReason, Lookup, NewSession};
use broker::auth::{Role, throttle, users};
use broker::both_backends;
use broker::testing::TestDatabase;

const MINUTE_MS: i64 = 60_000;

async fn add_user(database: &TestDatabase, username: &str, roles: &[Role]) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let roles: BTreeSet<Role> = roles.iter().copied().collect();
    let new = users::NewLocalUser {
        id: &id,
        username,
        display_name: username,
        password_hash: "$argon2id$placeholder",
        sealed_totp: Some(&[1, 2, 3]),
        roles: &roles,
    };
    users::create_local(&database.db, new, 1_000).await.unwrap();
    id
}

both_backends!(users_round_trip_and_reject_duplicates, users_body);
async fn users_body(database: TestDatabase) {
    let id = add_user(&database, "alice", &[Role::Admin, Role::User]).await;

    let found = users::find_by_username(&database.db, "Alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, id);
    assert_eq!(found.roles, [Role::Admin, Role::User].into());
    assert_eq!(found.totp_secret.as_deref(), Some(&[1u8, 2, 3][..]));

    let roles: BTreeSet<Role> = BTreeSet::new();
    let duplicate = users::NewLocalUser {
        id: "other",
        username: "alice",
        display_name: "x",
        password_hash: "h",
        sealed_totp: Some(&[0]),
        roles: &roles,
    };
    let error = users::create_local(&database.db, duplicate, 2_000)
        .await
        .unwrap_err();
    assert!(
        matches!(error, users::CreateUserError::UsernameTaken(_)),
        "{error:?}"
    );

    assert!(
        users::set_roles(&database.db, &id, &[Role::Auditor].into(), 3_000)
            .await
            .unwrap()
    );
    assert_eq!(
        users::find_by_id(&database.db, &id)
            .await
            .unwrap()
            .unwrap()
            .roles,
        [Role::Auditor].into()
    );
}

both_backends!(totp_step_is_used_once, totp_body);
async fn totp_body(database: TestDatabase) {
    let id = add_user(&database, "bob", &[Role::User]).await;

    assert!(
        users::consume_totp_step(&database.db, &id, 100)
            .await
            .unwrap()
    );
    assert!(
        !users::consume_totp_step(&database.db, &id, 100)
            .await
            .unwrap(),
        "same step accepted twice"
    );
    assert!(
        !users::consume_totp_step(&database.db, &id, 99)
            .await
            .unwrap(),
        "earlier step accepted after a later one"
    );
    assert!(
        users::consume_totp_step(&database.db, &id, 101)
            .await
            .unwrap()
    );

    users::set_totp(&database.db, &id, &[9, 9], 5_000)
        .await
        .unwrap();
    assert!(
        users::consume_totp_step(&database.db, &id, 50)
            .await
            .unwrap(),
        "a reset secret starts with no used step"
    );
}

both_backends!(oidc_users_are_upserted, oidc_body);
async fn oidc_body(database: TestDatabase) {
    let first = users::upsert_oidc(
        &database.db,
        "https://idp",
        "sub-1",
        "Carol",
        &[Role::User].into(),
        1_000,
    )
    .await
    .unwrap();
    let second = users::upsert_oidc(
        &database.db,
        "https://idp",
        "sub-1",
        "Carol C",
        &BTreeSet::new(),
        2_000,
    )
    .await
    .unwrap();

    assert_eq!(first.id, second.id);
    assert_eq!(second.display_name, "Carol C");
    assert!(second.roles.is_empty());
    assert_eq!(second.username, None);
}

both_backends!(throttle_locks_after_limit, throttle_body);
async fn throttle_body(database: TestDatabase) {
    let lockout = Duration::from_secs(900);
    let scope = throttle::account_scope("Dave");

    for failure in 1..3 {
        assert!(
            !throttle::record_failure(&database.db, &scope, 3, lockout, failure * 1_000)
                .await
                .unwrap()
        );
    }
    assert!(
        throttle::record_failure(&database.db, &scope, 3, lockout, 3_000)
            .await
            .unwrap()
    );

    let remaining = throttle::locked_for(&database.db, &[&scope, "address:192.0.2.1"], 4_000)
        .await
        .unwrap();
    assert_eq!(remaining, Some(Duration::from_millis(899_000)));
    assert_eq!(
        throttle::locked_for(&database.db, &[&scope], 3_000 + 15 * MINUTE_MS)
            .await
            .unwrap(),
        None
    );

    // Failures outside the window start a new count.
    let other = throttle::address_scope("192.0.2.9".parse().unwrap());
    throttle::record_failure(&database.db, &other, 2, lockout, 0)
        .await
        .unwrap();
    assert!(
        !throttle::record_failure(&database.db, &other, 2, lockout, 16 * MINUTE_MS)
            .await
            .unwrap()
    );
}

both_backends!(portal_sessions_expire_and_end, portal_body);
async fn portal_body(database: TestDatabase) {
    let user = add_user(&database, "erin", &[Role::User]).await;
    let roles: BTreeSet<Role> = [Role::User].into();
    let new = |sid| NewSession {
        user_id: &user,
        roles: &roles,
        method: "oidc",
        oidc_sid: sid,
        client_addr: None,
        idle_ms: 30 * MINUTE_MS,
        max_ms: 120 * MINUTE_MS,
    };

    let (first, token) = portal::create(&database.db, new(Some("sid-1")), 0)
        .await
        .unwrap();
    let (second, _) = portal::create(&database.db, new(Some("sid-2")), 0)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM portal_sessions WHERE id = $1")
        .bind(&first)
        .fetch_one(database.db.pool())
        .await
        .unwrap();
    assert_ne!(
        stored,
        token.as_str(),
        "the cookie value must not be stored"
    );

    // Activity extends the idle expiry.
    assert!(matches!(
        portal::lookup(&database.db, token.as_str(), 30 * MINUTE_MS, 20 * MINUTE_MS)
            .await
            .unwrap(),
        Lookup::Active(_)
    ));
    assert!(matches!(
        portal::lookup(&database.db, token.as_str(), 30 * MINUTE_MS, 45 * MINUTE_MS)
            .await
            .unwrap(),
        Lookup::Active(_)
    ));
    match portal::lookup(&database.db, token.as_str(), 30 * MINUTE_MS, 80 * MINUTE_MS)
        .await
        .unwrap()
    {
        Lookup::JustEnded(ended) => assert_eq!(ended.reason, EndReason::IdleTimeout),
        other => panic!("expected an idle timeout, got {other:?}"),
    }
    assert!(matches!(
        portal::lookup(&database.db, token.as_str(), 30 * MINUTE_MS, 81 * MINUTE_MS)
            .await
            .unwrap(),
        Lookup::Unknown
    ));

    let ended = portal::end_for_user(
        &database.db,
        &user,
        Some("sid-2"),
        EndReason::BackChannelLogout,
        10,
    )
    .await
    .unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].session_id, second);
    assert!(
        portal::end(&database.db, &second, EndReason::Logout, 11)
            .await
            .unwrap()
            .is_none(),
        "a session ends once"
    );

    let (third, _) = portal::create(&database.db, new(None), 0).await.unwrap();
    let expired = portal::end_expired(&database.db, 200 * MINUTE_MS)
        .await
        .unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|event| event.session_id.clone())
            .collect::<Vec<_>>(),
        [third]
    );
    assert_eq!(expired[0].reason, EndReason::Expired);
}

both_backends!(password_history_keeps_latest_entries, password_history_body);
async fn password_history_body(database: TestDatabase) {
    let id = add_user(&database, "gina", &[Role::User]).await;
    let created = users::find_by_id(&database.db, &id).await.unwrap().unwrap();
    assert_eq!(created.password_changed_at_ms, Some(1_000));
    assert!(!created.password_change_required);

    for (index, hash) in ["h1", "h2", "h3"].into_iter().enumerate() {
        let changed =
            users::set_password(&database.db, &id, hash, index == 2, 3, 2_000 + index as i64)
                .await
                .unwrap();
        assert!(changed);
    }

    let recent = users::recent_password_hashes(&database.db, &id, 10)
        .await
        .unwrap();
    assert_eq!(recent, ["h3", "h2", "h1"], "history keeps the 3 newest");
    let user = users::find_by_id(&database.db, &id).await.unwrap().unwrap();
    assert_eq!(user.password_hash.as_deref(), Some("h3"));
    assert_eq!(user.password_changed_at_ms, Some(2_002));
    assert!(user.password_change_required);

    assert!(
        users::require_password_change(&database.db, &id, false, 3_000)
            .await
            .unwrap()
    );
    assert!(users::clear_totp(&database.db, &id, 3_000).await.unwrap());
    let user = users::find_by_id(&database.db, &id).await.unwrap().unwrap();
    assert!(!user.password_change_required);
    assert!(user.totp_secret.is_none());
    assert!(
        !users::set_password(&database.db, "no-such-user", "h", false, 3, 4_000)
            .await
            .unwrap()
    );
}

both_backends!(unlock_lifts_a_lock_once, unlock_body);
async fn unlock_body(database: TestDatabase) {
    let scope = throttle::account_scope("hank");
    let lockout = Duration::from_secs(900);
    for attempt in 0..2 {
        throttle::record_failure(&database.db, &scope, 2, lockout, 10 + attempt)
            .await
            .unwrap();
    }
    assert!(
        throttle::locked_for(&database.db, &[&scope], 20)
            .await
            .unwrap()
            .is_some()
    );

    assert!(throttle::unlock(&database.db, &scope, 20).await.unwrap());
    assert!(
        throttle::locked_for(&database.db, &[&scope], 20)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!throttle::unlock(&database.db, &scope, 20).await.unwrap());
}
