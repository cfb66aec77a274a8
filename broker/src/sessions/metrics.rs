//! Prometheus metrics of the session lifecycle, served on `/metrics`:
//!
//! - `strongroom_sessions_live`: running sessions of this broker instance (gauge);
//! - `strongroom_session_launches_total{result}`: launches by outcome, `ok` or the
//!   refusal's code such as `quota_reached`;
//! - `strongroom_session_launch_duration_seconds{result}`: from the launch request to a
//!   running workspace, or to the refusal;
//! - `strongroom_sessions_ended_total{reason}`: endings by reason code.

use std::time::Duration;

use super::launch::LaunchError;
use super::{LaunchedSession, SessionService, store};

pub(super) fn record_launch(result: &Result<LaunchedSession, LaunchError>, took: Duration) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    metrics::counter!("strongroom_session_launches_total", "result" => outcome).increment(1);
    metrics::histogram!("strongroom_session_launch_duration_seconds", "result" => outcome)
        .record(took.as_secs_f64());
}

pub(super) fn record_end(reason: &str) {
    metrics::counter!("strongroom_sessions_ended_total", "reason" => reason.to_owned())
        .increment(1);
}

impl SessionService {
    /// Sets the live-session gauge from the database. The reaper also calls it on each
    /// pass, which corrects the gauge after a failed read.
    pub(super) async fn record_live_sessions(&self) {
        match store::list_running(&self.deps().db, &self.deps().instance_id).await {
            Ok(running) => {
                metrics::gauge!("strongroom_sessions_live").set(running.len() as f64);
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Cannot count live sessions for the metrics"
                );
            }
        }
    }
}
