//! Session lifecycle metrics as `/metrics` renders them, after launches and endings
//! against the real launcher and Docker engine.

mod sessions_support;

use broker::sessions::LaunchError;
use sessions_support::{Harness, Options, SITE, person};

/// Returns the value of the sample line that starts with `series`, such as
/// `strongroom_sessions_live` or `name{label="value"}`.
fn sample(rendered: &str, series: &str) -> Option<f64> {
    rendered.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_and_endings_are_counted() {
    let metrics = broker::http::metrics_handle();
    let harness = Harness::new(Options {
        default_quota: 1,
        ..Options::default()
    })
    .await;
    harness.grant("alice").await;
    let alice = person("alice");

    let launched = harness.service.launch(&alice, SITE, None).await.unwrap();
    let rendered = metrics.render();
    assert_eq!(
        sample(&rendered, "strongroom_sessions_live"),
        Some(1.0),
        "{rendered}"
    );

    let refused = harness.service.launch(&alice, SITE, None).await;
    assert!(matches!(
        refused,
        Err(LaunchError::QuotaReached { limit: 1 })
    ));
    harness
        .service
        .end_by(&alice, launched.session.id)
        .await
        .unwrap();

    let rendered = metrics.render();
    assert_eq!(
        sample(
            &rendered,
            r#"strongroom_session_launches_total{result="ok"}"#
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(
            &rendered,
            r#"strongroom_session_launches_total{result="quota_reached"}"#
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(
            &rendered,
            r#"strongroom_session_launch_duration_seconds_count{result="ok"}"#
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(
            &rendered,
            r#"strongroom_session_launch_duration_seconds_bucket{result="ok",le="120"}"#
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(
            &rendered,
            r#"strongroom_sessions_ended_total{reason="ended_by_person"}"#
        ),
        Some(1.0),
        "{rendered}"
    );
    assert_eq!(
        sample(&rendered, "strongroom_sessions_live"),
        Some(0.0),
        "{rendered}"
    );
    harness.finish().await;
}
