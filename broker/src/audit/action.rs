//! The closed list of audited actions. Adding one is a code change reviewed like any
//! other; the stored name never changes once released.

macro_rules! actions {
    ($($variant:ident => $name:literal,)*) => {
        /// What happened. The stored name is `area.subject.verb`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($variant,)*
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &'static [Action] = &[$(Action::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$variant => $name,)*
                }
            }

            pub fn from_name(name: &str) -> Option<Action> {
                match name {
                    $($name => Some(Action::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    // Authentication and portal sessions.
    SignInSucceeded => "auth.sign_in.succeeded",
    SignInFailed => "auth.sign_in.failed",
    MfaChallenge => "auth.mfa.challenge",
    SignOut => "auth.sign_out",
    PortalSessionCreated => "auth.portal_session.created",
    PortalSessionEnded => "auth.portal_session.ended",
    AccountLocked => "auth.account.locked",
    AccountUnlocked => "auth.account.unlocked",
    PasswordChanged => "auth.password.changed",
    MfaEnrolled => "auth.mfa.enrolled",
    // Banking sessions.
    SessionLaunchRequested => "session.launch.requested",
    SessionLaunched => "session.launch.succeeded",
    SessionLaunchFailed => "session.launch.failed",
    SessionEnded => "session.ended",
    SessionIdleWarned => "session.idle.warned",
    SiteAccessed => "session.site.accessed",
    ViewerAttached => "session.viewer.attached",
    ClipboardTransferred => "session.clipboard.transferred",
    CredentialRetrieved => "credential.retrieved",
    AutoLoginAttempted => "credential.auto_login.attempted",
    AutoLoginFinished => "credential.auto_login.finished",
    CredentialLocked => "credential.locked",
    // Administration.
    ConfigurationChanged => "admin.configuration.changed",
    PersonChanged => "admin.person.changed",
    RoleChanged => "admin.role.changed",
    QuotaChanged => "admin.quota.changed",
    SiteChanged => "admin.site.changed",
    SecretAccessed => "admin.secret.accessed",
    SystemChanged => "system.changed",
    BrokerStarted => "system.broker.started",
    BrokerStopped => "system.broker.stopped",
    KeyRotated => "system.key.rotated",
    AuditPruned => "system.audit.pruned",
    AuditExported => "audit.exported",
    SessionTerminated => "admin.session.terminated",
    // Recordings.
    RecordingStarted => "recording.started",
    RecordingSegmentStored => "recording.segment.stored",
    RecordingSealed => "recording.sealed",
    RecordingFailed => "recording.failed",
    RecordingReplayed => "recording.replayed",
    RecordingExported => "recording.exported",
    RecordingExportFailed => "recording.export.failed",
    RecordingVerificationFailed => "recording.verification.failed",
    RecordingHoldChanged => "recording.hold.changed",
    RecordingDeleted => "recording.deleted",
    // Files downloaded in a workspace.
    DownloadDelivered => "download.delivered",
    DownloadRefused => "download.refused",
    DownloadFetched => "download.fetched",
    DownloadDeleted => "download.deleted",
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for action in Action::ALL {
            assert!(
                seen.insert(action.as_str()),
                "duplicate name {}",
                action.as_str()
            );
            assert_eq!(Action::from_name(action.as_str()), Some(*action));
        }
    }
}
