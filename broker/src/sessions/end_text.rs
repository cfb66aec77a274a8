//! Sentences that tell a person why their session ended. The stored, audited and
//! streamed value stays the reason code ([`EndReason::code`]); every page and the
//! viewer script show the sentence from [`EndReasonTexts`] in its place.

use std::collections::BTreeMap;
use std::time::Duration;

use super::EndReason;
use crate::config::SessionsConfig;

/// The sentences for the end reasons, with the configured idle timeout and maximum
/// lifetime filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndReasonTexts {
    idle_timeout: Duration,
    max_lifetime: Duration,
}

impl EndReasonTexts {
    pub fn new(config: &SessionsConfig) -> EndReasonTexts {
        EndReasonTexts {
            idle_timeout: config.idle_timeout,
            max_lifetime: config.max_lifetime,
        }
    }

    /// Returns the sentence for a reason code, or `None` for a code that no
    /// [`EndReason`] has.
    pub fn sentence(&self, code: &str) -> Option<String> {
        EndReason::every()
            .into_iter()
            .find(|reason| reason.code() == code)
            .map(|reason| reason.sentence(self))
    }

    /// Builds the text shown for a stored end: the sentence, or the raw code when it is
    /// unknown, followed by the stored detail when there is one. Two details are left
    /// out because they are for the operator, who finds them in the log and the audit
    /// trail: a failed launch's (a missing image, an engine error) and an unwritable
    /// recording store's (its paths and the file system's error).
    pub fn describe(&self, code: &str, detail: Option<&str>) -> String {
        let text = self.sentence(code).unwrap_or_else(|| code.to_owned());
        let operator_only = [
            EndReason::LaunchFailed {
                detail: String::new(),
            },
            EndReason::RecorderUnavailable {
                detail: String::new(),
            },
        ]
        .iter()
        .any(|reason| reason.code() == code);
        match detail.filter(|detail| !detail.is_empty() && !operator_only) {
            Some(detail) => format!("{text}: {detail}"),
            None => text,
        }
    }

    /// Maps every reason code to its sentence, for the viewer script, which receives
    /// the code over its socket.
    pub fn table(&self) -> BTreeMap<&'static str, String> {
        EndReason::every()
            .into_iter()
            .map(|reason| (reason.code(), reason.sentence(self)))
            .collect()
    }
}

impl EndReason {
    /// Lists one value of every reason, with empty details.
    // NOTE: a new variant must be added here too, or its code shows raw on the portal.
    fn every() -> [EndReason; 14] {
        let detail = String::new;
        [
            EndReason::Logout,
            EndReason::PersonEnded,
            EndReason::AdminTerminated,
            EndReason::IdleTimeout,
            EndReason::MaxLifetime,
            EndReason::WorkspaceExited { detail: detail() },
            EndReason::RecorderFailed { detail: detail() },
            EndReason::RecorderUnavailable { detail: detail() },
            EndReason::LaunchFailed { detail: detail() },
            EndReason::StreamFailed { detail: detail() },
            EndReason::LostAfterRestart,
            EndReason::BrokerRestarted,
            EndReason::BrokerStopped,
            EndReason::InterruptedByRestart,
        ]
    }

    /// Words the reason for the person whose session ended, without a final full stop
    /// so that a detail can follow.
    fn sentence(&self, texts: &EndReasonTexts) -> String {
        match self {
            EndReason::Logout => "You signed out, which ended the session".to_owned(),
            EndReason::PersonEnded => "You ended the session".to_owned(),
            EndReason::AdminTerminated => "An administrator ended the session".to_owned(),
            EndReason::IdleTimeout => format!(
                "Ended after {} without input",
                minutes_text(texts.idle_timeout)
            ),
            EndReason::MaxLifetime => format!(
                "Ended after {}, the longest a session may run",
                minutes_text(texts.max_lifetime)
            ),
            EndReason::WorkspaceExited { .. } => {
                "The browser workspace stopped unexpectedly".to_owned()
            }
            EndReason::RecorderFailed { .. } => {
                "Ended because the session could not be recorded".to_owned()
            }
            EndReason::RecorderUnavailable { .. } => {
                "Not started because recordings cannot be written".to_owned()
            }
            EndReason::LaunchFailed { .. } => {
                "The workspace could not start; the administrator has been told".to_owned()
            }
            EndReason::StreamFailed { .. } => {
                "The connection to the browser workspace failed".to_owned()
            }
            EndReason::LostAfterRestart
            | EndReason::InterruptedByRestart
            | EndReason::BrokerRestarted => "Ended when the service restarted".to_owned(),
            EndReason::BrokerStopped => "Ended because the service was stopped".to_owned(),
        }
    }
}

/// Formats whole minutes as text, in hours when they divide evenly:
/// "1 minute", "15 minutes", "8 hours".
fn minutes_text(duration: Duration) -> String {
    let minutes = duration.as_secs() / 60;
    let (count, unit) = if minutes >= 60 && minutes.is_multiple_of(60) {
        (minutes / 60, "hour")
    } else {
        (minutes, "minute")
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> EndReasonTexts {
        EndReasonTexts {
            idle_timeout: Duration::from_secs(15 * 60),
            max_lifetime: Duration::from_secs(8 * 3600),
        }
    }

    #[test]
    fn every_code_has_one_sentence() {
        let table = texts().table();
        assert_eq!(table.len(), EndReason::every().len(), "codes are unique");
        for (code, sentence) in &table {
            assert_ne!(sentence, code, "{code} shows raw");
            assert!(!sentence.contains('_'), "{code}: {sentence}");
        }
    }

    #[test]
    fn limits_appear_in_sentences() {
        let texts = texts();
        assert_eq!(
            texts.describe("idle_timeout", None),
            "Ended after 15 minutes without input"
        );
        assert_eq!(
            texts.describe("max_lifetime", None),
            "Ended after 8 hours, the longest a session may run"
        );
        assert_eq!(minutes_text(Duration::from_secs(60)), "1 minute");
        assert_eq!(minutes_text(Duration::from_secs(90 * 60)), "90 minutes");
    }

    #[test]
    fn detail_follows_and_unknown_code_stays_raw() {
        let texts = texts();
        assert_eq!(
            texts.describe("ended_by_person", None),
            "You ended the session"
        );
        assert_eq!(
            texts.describe("stream_failed", Some("the browser exited")),
            "The connection to the browser workspace failed: the browser exited"
        );
        assert_eq!(texts.describe("moved_to_mars", None), "moved_to_mars");
        assert_eq!(
            texts.describe("moved_to_mars", Some("far away")),
            "moved_to_mars: far away"
        );
    }

    #[test]
    fn launch_failure_detail_is_left_out() {
        let texts = texts();

        let text = texts.describe(
            "launch_failed",
            Some("workspace image `strongroom/workspace:x` is not present"),
        );

        assert_eq!(
            text,
            "The workspace could not start; the administrator has been told"
        );
    }

    #[test]
    fn unwritable_recorder_detail_is_left_out() {
        let texts = texts();

        let text = texts.describe(
            "recorder_unavailable",
            Some("cannot write /srv/recordings/.preflight: Read-only file system"),
        );

        assert_eq!(text, "Not started because recordings cannot be written");
    }
}
