//! The local encrypted credential store, on SQLite and on PostgreSQL.

use std::sync::Arc;

use broker::both_backends;
use broker::clock::SystemClock;
use broker::secrets::{
    BankCredentials, CredentialError, CredentialField, CredentialKey, CredentialRef,
    CredentialSource, LocalStore,
};
use broker::testing::TestDatabase;
use protocol::SecretString;

fn store(database: &TestDatabase) -> LocalStore {
    let key = CredentialKey::load_or_create(database.dir.path()).expect("credential key");
    LocalStore::new(database.db.clone(), Arc::new(key), Arc::new(SystemClock))
}

fn credentials(
    reference: &CredentialRef,
    username: &str,
    password: &str,
    seed: Option<&str>,
) -> BankCredentials {
    BankCredentials::new(
        reference,
        username.into(),
        password.into(),
        seed.map(SecretString::from),
    )
    .expect("valid credentials")
}

both_backends!(
    typeable_passwords_round_trip_exactly,
    typeable_passwords_body
);
async fn typeable_passwords_body(database: TestDatabase) {
    let store = store(&database);
    let reference = CredentialRef::shared("demo-bank").unwrap();

    for password in ["<p&ss>'\"$", "`$(id)`%20", "pässwörd€", "trailing space "] {
        store
            .save(
                &reference,
                &credentials(&reference, "alice", password, None),
                "system:test",
            )
            .await
            .unwrap();

        let fetched = store.fetch(&reference).await.unwrap();

        assert_eq!(fetched.username.expose(), "alice");
        assert_eq!(fetched.password.expose(), password);
        assert!(fetched.totp_seed.is_none());
    }
}

both_backends!(
    two_line_password_is_rejected_before_saving,
    two_line_password_body
);
async fn two_line_password_body(database: TestDatabase) {
    let store = store(&database);
    let reference = CredentialRef::shared("demo-bank").unwrap();

    let error =
        BankCredentials::new(&reference, "alice".into(), "first\nsecond".into(), None).unwrap_err();

    assert!(
        matches!(
            error,
            CredentialError::Invalid {
                field: CredentialField::Password,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("contains a line break"),
        "{error}"
    );
    assert!(store.list().await.unwrap().is_empty());
}

both_backends!(shared_and_personal_are_separate, shared_and_personal_body);
async fn shared_and_personal_body(database: TestDatabase) {
    let store = store(&database);
    let shared = CredentialRef::shared("demo-bank").unwrap();
    let alice = CredentialRef::personal("demo-bank", "alice-id").unwrap();
    let seed = "JBSWY3DPEHPK3PXP";
    store
        .save(
            &shared,
            &credentials(&shared, "team", "team-pass", None),
            "system:test",
        )
        .await
        .unwrap();
    store
        .save(
            &alice,
            &credentials(&alice, "alice", "alice-pass", Some(seed)),
            "user:admin-1",
        )
        .await
        .unwrap();

    let fetched_shared = store.fetch(&shared).await.unwrap();
    let fetched_alice = store.fetch(&alice).await.unwrap();
    let entries = store.list().await.unwrap();

    assert_eq!(fetched_shared.username.expose(), "team");
    assert_eq!(fetched_alice.username.expose(), "alice");
    assert_eq!(
        fetched_alice.totp_seed.as_ref().unwrap().as_text().expose(),
        seed
    );
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].reference, shared);
    assert!(!entries[0].has_totp_seed);
    assert_eq!(entries[1].reference, alice);
    assert!(entries[1].has_totp_seed);
    assert_eq!(entries[1].updated_by, "user:admin-1");
}

both_backends!(saving_again_replaces_the_values, replace_body);
async fn replace_body(database: TestDatabase) {
    let store = store(&database);
    let reference = CredentialRef::shared("demo-bank").unwrap();
    store
        .save(
            &reference,
            &credentials(&reference, "alice", "old", Some("JBSWY3DPEHPK3PXP")),
            "system:test",
        )
        .await
        .unwrap();

    store
        .save(
            &reference,
            &credentials(&reference, "alice", "new", None),
            "system:test",
        )
        .await
        .unwrap();
    let fetched = store.fetch(&reference).await.unwrap();

    assert_eq!(fetched.password.expose(), "new");
    assert!(fetched.totp_seed.is_none());
    assert_eq!(store.list().await.unwrap().len(), 1);
}

both_backends!(
    missing_and_deleted_credentials_are_not_found,
    not_found_body
);
async fn not_found_body(database: TestDatabase) {
    let store = store(&database);
    let reference = CredentialRef::shared("demo-bank").unwrap();
    store
        .save(
            &reference,
            &credentials(&reference, "alice", "pw", None),
            "system:test",
        )
        .await
        .unwrap();

    assert!(store.delete(&reference).await.unwrap());
    assert!(!store.delete(&reference).await.unwrap());
    let error = store.fetch(&reference).await.unwrap_err();

    assert!(
        matches!(error, CredentialError::NotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("site demo-bank"), "{error}");
}

both_backends!(swapped_rows_fail_decryption, swapped_rows_body);
async fn swapped_rows_body(database: TestDatabase) {
    let store = store(&database);
    let demo = CredentialRef::shared("demo-bank").unwrap();
    let other = CredentialRef::shared("other-bank").unwrap();
    let alice = CredentialRef::personal("demo-bank", "alice-id").unwrap();
    store
        .save(
            &demo,
            &credentials(&demo, "demo-user", "demo-pass", None),
            "system:test",
        )
        .await
        .unwrap();
    store
        .save(
            &other,
            &credentials(&other, "other-user", "other-pass", None),
            "system:test",
        )
        .await
        .unwrap();
    store
        .save(
            &alice,
            &credentials(&alice, "alice", "alice-pass", None),
            "system:test",
        )
        .await
        .unwrap();
    let pool = database.db.pool();

    // The demo-bank password copied into other-bank's row.
    sqlx::query("UPDATE credentials SET password = (SELECT password FROM credentials WHERE site = 'demo-bank' AND user_id = '') WHERE site = 'other-bank'")
        .execute(pool)
        .await
        .unwrap();
    // The shared demo-bank row's values copied into alice's row.
    sqlx::query(
        "UPDATE credentials SET username = (SELECT username FROM credentials WHERE site = 'demo-bank' AND user_id = ''), \
         password = (SELECT password FROM credentials WHERE site = 'demo-bank' AND user_id = '') WHERE user_id = 'alice-id'",
    )
    .execute(pool)
    .await
    .unwrap();
    // Username and password swapped within the demo-bank row.
    sqlx::query("UPDATE credentials SET username = password, password = username WHERE site = 'demo-bank' AND user_id = ''")
        .execute(pool)
        .await
        .unwrap();

    for (reference, field) in [
        (&other, CredentialField::Password),
        (&alice, CredentialField::Username),
        (&demo, CredentialField::Username),
    ] {
        let error = store.fetch(reference).await.unwrap_err();

        let CredentialError::Decrypt { field: failed, .. } = &error else {
            panic!("expected a decryption failure for {reference}, got {error:?}");
        };
        assert_eq!(*failed, field, "{error}");
        assert!(!error.to_string().contains("-pass"), "{error}");
    }
}

both_backends!(another_key_file_cannot_decrypt, another_key_body);
async fn another_key_body(database: TestDatabase) {
    let store = store(&database);
    let reference = CredentialRef::shared("demo-bank").unwrap();
    store
        .save(
            &reference,
            &credentials(&reference, "alice", "pw", None),
            "system:test",
        )
        .await
        .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = CredentialKey::load_or_create(other_dir.path()).unwrap();
    let other_store = LocalStore::new(
        database.db.clone(),
        Arc::new(other_key),
        Arc::new(SystemClock),
    );

    let error = other_store.fetch(&reference).await.unwrap_err();

    assert!(
        matches!(error, CredentialError::Decrypt { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("credentials.key"), "{error}");
}

#[tokio::test]
async fn vault_from_config_uses_the_configured_source() {
    let database = TestDatabase::new(broker::testing::TestBackend::Sqlite).await;
    let data_dir = database.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let local = broker::config::load(
        None,
        [(
            "STRONGROOM_DATA_DIR".to_owned(),
            data_dir.display().to_string(),
        )],
    )
    .unwrap();
    let infisical = broker::config::load(
        None,
        [
            (
                "STRONGROOM_SECRETS__SOURCE".to_owned(),
                "infisical".to_owned(),
            ),
            (
                "STRONGROOM_SECRETS__INFISICAL__URL".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            ),
            (
                "STRONGROOM_SECRETS__INFISICAL__CLIENT_ID".to_owned(),
                "id".to_owned(),
            ),
            (
                "STRONGROOM_SECRETS__INFISICAL__CLIENT_SECRET".to_owned(),
                "env:UNUSED_CLIENT_SECRET".to_owned(),
            ),
            (
                "STRONGROOM_SECRETS__INFISICAL__PROJECT_ID".to_owned(),
                "p".to_owned(),
            ),
            (
                "STRONGROOM_SECRETS__INFISICAL__ENVIRONMENT".to_owned(),
                "prod".to_owned(),
            ),
        ],
    )
    .unwrap();

    let local_vault =
        broker::secrets::CredentialVault::from_config(&local, &database.db, Arc::new(SystemClock))
            .unwrap();
    let infisical_vault = broker::secrets::CredentialVault::from_config(
        &infisical,
        &database.db,
        Arc::new(SystemClock),
    )
    .unwrap();

    assert_eq!(local_vault.source().name(), "local");
    assert!(data_dir.join(broker::secrets::KEY_FILE_NAME).exists());
    assert_eq!(infisical_vault.source().name(), "infisical");
}
