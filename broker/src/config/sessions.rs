//! The `[sessions]` section: quotas, host capacity, idle and lifetime limits, the
//! launcher socket, the egress proxy port and the recording directories checked
//! before each launch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigProblem;
use super::raw::{Lenient, take};

const DEFAULT_QUOTA: u32 = 5;
const DEFAULT_HOST_MAX_SESSIONS: u32 = 8;
const DEFAULT_IDLE_TIMEOUT_MINUTES: u64 = 15;
const DEFAULT_IDLE_WARNING_MINUTES: u64 = 2;
const DEFAULT_MAX_LIFETIME_MINUTES: u64 = 240;
const DEFAULT_REAPER_INTERVAL_SECONDS: u64 = 5;
const DEFAULT_RECONCILE_INTERVAL_SECONDS: u64 = 30;
const DEFAULT_EGRESS_PROXY_PORT: u16 = 3128;
/// Chromium opens at most 32 connections per proxy unless its `MaxConnectionsPerProxy`
/// policy sets another value, so 64 leaves room for that and for connections closing.
const DEFAULT_EGRESS_MAX_CONNECTIONS: u32 = 64;
const DEFAULT_EGRESS_IDLE_TIMEOUT_SECONDS: u64 = 300;
/// Lowest per-session egress rate accepted: 16 KiB per second.
const MIN_EGRESS_BYTES_PER_SECOND: u64 = 16 * 1024;
/// Largest delivered download by default: 64 MiB, enough for statements and exports.
const DEFAULT_DOWNLOAD_MAX_FILE_BYTES: u64 = 64 << 20;
/// `nobody` and `nogroup` on Debian.
const DEFAULT_EXPORT_MUX_ID: u32 = 65534;
/// Muxing copies packets without decoding them, so even a recording of the maximum
/// lifetime finishes far within ten minutes. A child still running then is hung.
const DEFAULT_EXPORT_MUX_TIMEOUT_SECONDS: u64 = 600;

/// Raw mirror of `[sessions]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSessions {
    /// `sessions.default_quota`: live sessions a person may hold when no per-person
    /// quota is set (`strongroom quota set` sets one). Default 5.
    pub default_quota: Option<Lenient<u32>>,
    /// `sessions.host_max_sessions`: live sessions this broker runs at once on its
    /// Docker host, all people and sites together. Default 8. Keep it at or below the
    /// launcher's `max_sessions`.
    pub host_max_sessions: Option<Lenient<u32>>,
    /// `sessions.idle_timeout_minutes`: a session with no keyboard, mouse or wheel
    /// input from a viewer for this long is ended. Default 15.
    pub idle_timeout_minutes: Option<Lenient<u64>>,
    /// `sessions.idle_warning_minutes`: how long before the idle timeout the person is
    /// warned. Default 2; 0 turns the warning off.
    pub idle_warning_minutes: Option<Lenient<u64>>,
    /// `sessions.max_lifetime_minutes`: a session is ended this long after it started,
    /// input or not. Default 240.
    pub max_lifetime_minutes: Option<Lenient<u64>>,
    /// `sessions.reaper_interval_seconds`: how often idle and lifetime limits are
    /// checked. Default 5.
    pub reaper_interval_seconds: Option<Lenient<u64>>,
    /// `sessions.reconcile_interval_seconds`: how often the launcher is asked which
    /// workspaces died and which objects are orphans. Default 30.
    pub reconcile_interval_seconds: Option<Lenient<u64>>,
    /// `sessions.launcher_socket`: Unix socket of `strongroom launcher`, an absolute
    /// path. Default `DATA_DIR/launcher.sock`; `launcher.socket_path` follows it when
    /// unset.
    pub launcher_socket: Option<Lenient<PathBuf>>,
    /// `sessions.egress_proxy_port`: port of the egress proxy on each session network's
    /// gateway address. Default 3128.
    pub egress_proxy_port: Option<Lenient<u16>>,
    /// `sessions.egress_max_connections`: connections one session may keep open through
    /// the egress proxy at once; more are denied. Default 64.
    pub egress_max_connections: Option<Lenient<u32>>,
    /// `sessions.egress_idle_timeout_seconds`: a proxied connection in which neither side
    /// sends a byte for this long is closed. Default 300.
    pub egress_idle_timeout_seconds: Option<Lenient<u64>>,
    /// `sessions.egress_bytes_per_second`: bytes per second all of one session's proxied
    /// connections may move together, both directions counted; 0 means no limit.
    /// Default 0.
    pub egress_bytes_per_second: Option<Lenient<u64>>,
    /// `sessions.recordings_dir`: directory of local recordings, checked before every
    /// launch. Default `DATA_DIR/recordings`.
    pub recordings_dir: Option<Lenient<PathBuf>>,
    /// `sessions.recording_keys_dir`: directory of the local recording key store.
    /// Default `DATA_DIR/recording-keys`.
    pub recording_keys_dir: Option<Lenient<PathBuf>>,
    /// `sessions.recording_keys`: where the recording key-encryption keys are kept:
    /// `"local"` (key files in `recording_keys_dir`, the default) or `"infisical"`
    /// (Infisical KMS keys that never leave Infisical, reached with the connection and
    /// machine identity of `[secrets.infisical]`).
    pub recording_keys: Option<Lenient<String>>,
    /// `sessions.recording_keys_project_id`: id of the Infisical KMS project that
    /// contains the keys. Required when `recording_keys = "infisical"`.
    pub recording_keys_project_id: Option<Lenient<String>>,
    /// `[sessions.recordings_s3]`: stores recordings in an S3-compatible bucket in place
    /// of `recordings_dir`.
    pub recordings_s3: Option<super::recordings_s3::RawRecordingsS3>,
    /// `sessions.export_mux_program`: the `strongroom` binary that runs the unprivileged
    /// WebM muxing process of `strongroom recording export`, an absolute path. Default:
    /// the running binary. It must be executable by `export_mux_uid`.
    pub export_mux_program: Option<Lenient<PathBuf>>,
    /// `sessions.export_mux_uid`: user id the muxing process runs as when the exporting
    /// process is root. Default 65534 (`nobody`); 0 is rejected.
    pub export_mux_uid: Option<Lenient<u32>>,
    /// `sessions.export_mux_gid`: group id the muxing process runs as when the
    /// exporting process is root. Default 65534 (`nogroup`); 0 is rejected.
    pub export_mux_gid: Option<Lenient<u32>>,
    /// `sessions.export_mux_timeout_seconds`: an export whose muxing process runs longer
    /// than this is stopped and fails, from 1 to 86400. Default 600.
    pub export_mux_timeout_seconds: Option<Lenient<u64>>,
    /// `sessions.download_max_file_bytes`: largest file a session of a site with
    /// `policy.downloads = "deliver"` delivers to the person, in bytes; a larger one is
    /// refused and audited. 1 to 1073741824; the launcher refuses to launch such a
    /// session when it is above its `downloads_size_bytes`. Default 67108864 (64 MiB).
    pub download_max_file_bytes: Option<Lenient<u64>>,
}

/// Validated `[sessions]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsConfig {
    pub default_quota: u32,
    pub host_max_sessions: u32,
    pub idle_timeout: Duration,
    /// Zero when no warning is sent.
    pub idle_warning: Duration,
    pub max_lifetime: Duration,
    pub reaper_interval: Duration,
    pub reconcile_interval: Duration,
    pub launcher_socket: PathBuf,
    pub egress_proxy_port: u16,
    pub egress_max_connections: u32,
    pub egress_idle_timeout: Duration,
    /// `None` when unlimited.
    pub egress_bytes_per_second: Option<std::num::NonZeroU64>,
    pub recordings_dir: PathBuf,
    pub recording_keys_dir: PathBuf,
    pub recording_keys: RecordingKeysBackend,
    /// Set when recordings go to an S3-compatible bucket.
    pub recordings_s3: Option<super::recordings_s3::RecordingsS3Config>,
    /// `None` runs the current executable.
    pub export_mux_program: Option<PathBuf>,
    pub export_mux_uid: u32,
    pub export_mux_gid: u32,
    pub export_mux_timeout: Duration,
    /// Largest delivered download in bytes.
    pub download_max_file_bytes: u64,
}

/// Store of the recording key-encryption keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingKeysBackend {
    /// Key files in `recording_keys_dir`.
    Local,
    /// Keys of an Infisical KMS project, reached through `[secrets.infisical]`.
    Infisical { project_id: String },
}

impl SessionsConfig {
    /// The defaults, with the recording directories under `data_dir`.
    pub fn defaults(data_dir: &Path) -> SessionsConfig {
        SessionsConfig {
            default_quota: DEFAULT_QUOTA,
            host_max_sessions: DEFAULT_HOST_MAX_SESSIONS,
            idle_timeout: minutes(DEFAULT_IDLE_TIMEOUT_MINUTES),
            idle_warning: minutes(DEFAULT_IDLE_WARNING_MINUTES),
            max_lifetime: minutes(DEFAULT_MAX_LIFETIME_MINUTES),
            reaper_interval: Duration::from_secs(DEFAULT_REAPER_INTERVAL_SECONDS),
            reconcile_interval: Duration::from_secs(DEFAULT_RECONCILE_INTERVAL_SECONDS),
            // The socket path is resolved against the working directory now, so that the
            // broker and its launcher agree on it whatever directory each one runs in.
            launcher_socket: std::path::absolute(data_dir.join("launcher.sock"))
                .unwrap_or_else(|_| data_dir.join("launcher.sock")),
            egress_proxy_port: DEFAULT_EGRESS_PROXY_PORT,
            egress_max_connections: DEFAULT_EGRESS_MAX_CONNECTIONS,
            egress_idle_timeout: Duration::from_secs(DEFAULT_EGRESS_IDLE_TIMEOUT_SECONDS),
            egress_bytes_per_second: None,
            recordings_dir: data_dir.join("recordings"),
            recording_keys_dir: data_dir.join("recording-keys"),
            recording_keys: RecordingKeysBackend::Local,
            recordings_s3: None,
            export_mux_program: None,
            export_mux_uid: DEFAULT_EXPORT_MUX_ID,
            export_mux_gid: DEFAULT_EXPORT_MUX_ID,
            export_mux_timeout: Duration::from_secs(DEFAULT_EXPORT_MUX_TIMEOUT_SECONDS),
            download_max_file_bytes: DEFAULT_DOWNLOAD_MAX_FILE_BYTES,
        }
    }
}

fn minutes(count: u64) -> Duration {
    Duration::from_secs(count * 60)
}

fn problem(problems: &mut Vec<ConfigProblem>, key: &str, message: String) {
    problems.push(ConfigProblem {
        key: key.to_owned(),
        message,
    });
}

/// Checks that `value` lies in `min..=max`, recording a problem naming `key` if not.
fn in_range(
    value: u64,
    min: u64,
    max: u64,
    key: &str,
    unit: &str,
    problems: &mut Vec<ConfigProblem>,
) -> bool {
    if (min..=max).contains(&value) {
        return true;
    }
    problem(
        problems,
        key,
        format!("{value} is out of range; use {min} to {max} {unit}"),
    );
    false
}

/// Validates `[sessions]`, appending every problem found.
pub fn validate_sessions(
    raw: &RawSessions,
    data_dir: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Option<SessionsConfig> {
    let defaults = SessionsConfig::defaults(data_dir);
    let before = problems.len();

    let default_quota = take(
        &raw.default_quota,
        "sessions.default_quota",
        "a whole number",
        problems,
    )
    .unwrap_or(DEFAULT_QUOTA);
    in_range(
        default_quota.into(),
        0,
        100,
        "sessions.default_quota",
        "sessions",
        problems,
    );

    let host_max_sessions = take(
        &raw.host_max_sessions,
        "sessions.host_max_sessions",
        "a whole number",
        problems,
    )
    .unwrap_or(DEFAULT_HOST_MAX_SESSIONS);
    in_range(
        host_max_sessions.into(),
        1,
        1000,
        "sessions.host_max_sessions",
        "sessions",
        problems,
    );

    let idle = take(
        &raw.idle_timeout_minutes,
        "sessions.idle_timeout_minutes",
        "a whole number of minutes",
        problems,
    )
    .unwrap_or(DEFAULT_IDLE_TIMEOUT_MINUTES);
    let idle_ok = in_range(
        idle,
        1,
        24 * 60,
        "sessions.idle_timeout_minutes",
        "minutes",
        problems,
    );

    let warning = take(
        &raw.idle_warning_minutes,
        "sessions.idle_warning_minutes",
        "a whole number of minutes",
        problems,
    )
    .unwrap_or(DEFAULT_IDLE_WARNING_MINUTES.min(idle.saturating_sub(1)));
    if idle_ok && warning >= idle {
        problem(
            problems,
            "sessions.idle_warning_minutes",
            format!(
                "{warning} must be less than sessions.idle_timeout_minutes ({idle}); lower it or set 0 to turn the warning off"
            ),
        );
    }

    let lifetime = take(
        &raw.max_lifetime_minutes,
        "sessions.max_lifetime_minutes",
        "a whole number of minutes",
        problems,
    )
    .unwrap_or(DEFAULT_MAX_LIFETIME_MINUTES);
    in_range(
        lifetime,
        1,
        7 * 24 * 60,
        "sessions.max_lifetime_minutes",
        "minutes",
        problems,
    );

    let reaper = take(
        &raw.reaper_interval_seconds,
        "sessions.reaper_interval_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_REAPER_INTERVAL_SECONDS);
    in_range(
        reaper,
        1,
        300,
        "sessions.reaper_interval_seconds",
        "seconds",
        problems,
    );

    let reconcile = take(
        &raw.reconcile_interval_seconds,
        "sessions.reconcile_interval_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_RECONCILE_INTERVAL_SECONDS);
    in_range(
        reconcile,
        1,
        3600,
        "sessions.reconcile_interval_seconds",
        "seconds",
        problems,
    );

    let launcher_socket = take(
        &raw.launcher_socket,
        "sessions.launcher_socket",
        "a file path",
        problems,
    )
    .unwrap_or(defaults.launcher_socket);
    if launcher_socket.is_relative() {
        problem(
            problems,
            "sessions.launcher_socket",
            format!(
                "{} is relative; write the absolute path of the launcher socket",
                launcher_socket.display()
            ),
        );
    }

    let egress_proxy_port = take(
        &raw.egress_proxy_port,
        "sessions.egress_proxy_port",
        "a port number",
        problems,
    )
    .unwrap_or(DEFAULT_EGRESS_PROXY_PORT);
    if egress_proxy_port == 0 {
        problem(
            problems,
            "sessions.egress_proxy_port",
            "0 is not a usable port; use the port the egress proxy listens on, such as 3128"
                .to_owned(),
        );
    }

    let egress_max_connections = take(
        &raw.egress_max_connections,
        "sessions.egress_max_connections",
        "a whole number of connections",
        problems,
    )
    .unwrap_or(DEFAULT_EGRESS_MAX_CONNECTIONS);
    in_range(
        egress_max_connections.into(),
        1,
        1024,
        "sessions.egress_max_connections",
        "connections",
        problems,
    );
    let egress_idle_timeout = take(
        &raw.egress_idle_timeout_seconds,
        "sessions.egress_idle_timeout_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_EGRESS_IDLE_TIMEOUT_SECONDS);
    in_range(
        egress_idle_timeout,
        10,
        3600,
        "sessions.egress_idle_timeout_seconds",
        "seconds",
        problems,
    );

    let egress_bytes_per_second = take(
        &raw.egress_bytes_per_second,
        "sessions.egress_bytes_per_second",
        "a whole number of bytes per second",
        problems,
    )
    .unwrap_or(0);
    if (1..MIN_EGRESS_BYTES_PER_SECOND).contains(&egress_bytes_per_second) {
        problem(
            problems,
            "sessions.egress_bytes_per_second",
            format!(
                "{egress_bytes_per_second} is below {MIN_EGRESS_BYTES_PER_SECOND}, too slow \
                 for a bank's pages; raise it, or use 0 for no limit"
            ),
        );
    }

    let recordings_dir = take(
        &raw.recordings_dir,
        "sessions.recordings_dir",
        "a directory path",
        problems,
    )
    .unwrap_or(defaults.recordings_dir);
    let recording_keys_dir = take(
        &raw.recording_keys_dir,
        "sessions.recording_keys_dir",
        "a directory path",
        problems,
    )
    .unwrap_or(defaults.recording_keys_dir);
    let recording_keys = validate_recording_keys(raw, problems);
    let recordings_s3 = raw
        .recordings_s3
        .as_ref()
        .and_then(|raw| super::recordings_s3::validate_recordings_s3(raw, problems));

    let export_mux_program = take(
        &raw.export_mux_program,
        "sessions.export_mux_program",
        "a file path",
        problems,
    );
    if let Some(program) = &export_mux_program
        && program.is_relative()
    {
        problem(
            problems,
            "sessions.export_mux_program",
            format!(
                "{} is relative; use an absolute path to the strongroom binary",
                program.display()
            ),
        );
    }
    let [export_mux_uid, export_mux_gid] = [
        (&raw.export_mux_uid, "sessions.export_mux_uid"),
        (&raw.export_mux_gid, "sessions.export_mux_gid"),
    ]
    .map(|(value, key)| {
        let id = take(value, key, "a numeric id", problems).unwrap_or(DEFAULT_EXPORT_MUX_ID);
        if id == 0 {
            problem(
                problems,
                key,
                "0 is root; use an unprivileged id such as 65534".to_owned(),
            );
        }
        id
    });
    let export_mux_timeout = take(
        &raw.export_mux_timeout_seconds,
        "sessions.export_mux_timeout_seconds",
        "a whole number of seconds",
        problems,
    )
    .unwrap_or(DEFAULT_EXPORT_MUX_TIMEOUT_SECONDS);
    in_range(
        export_mux_timeout,
        1,
        86_400,
        "sessions.export_mux_timeout_seconds",
        "seconds",
        problems,
    );

    let download_max_file_bytes = take(
        &raw.download_max_file_bytes,
        "sessions.download_max_file_bytes",
        "a whole number of bytes",
        problems,
    )
    .unwrap_or(DEFAULT_DOWNLOAD_MAX_FILE_BYTES);
    in_range(
        download_max_file_bytes,
        1,
        protocol::limits::MAX_DOWNLOAD_SIZE,
        "sessions.download_max_file_bytes",
        "bytes",
        problems,
    );

    if problems.len() > before {
        return None;
    }
    Some(SessionsConfig {
        default_quota,
        host_max_sessions,
        idle_timeout: minutes(idle),
        idle_warning: minutes(warning),
        max_lifetime: minutes(lifetime),
        reaper_interval: Duration::from_secs(reaper),
        reconcile_interval: Duration::from_secs(reconcile),
        launcher_socket,
        egress_proxy_port,
        egress_max_connections,
        egress_idle_timeout: Duration::from_secs(egress_idle_timeout),
        egress_bytes_per_second: std::num::NonZeroU64::new(egress_bytes_per_second),
        recordings_dir,
        recording_keys_dir,
        recording_keys: recording_keys?,
        recordings_s3,
        export_mux_program,
        export_mux_uid,
        export_mux_gid,
        export_mux_timeout: Duration::from_secs(export_mux_timeout),
        download_max_file_bytes,
    })
}

/// Validates `sessions.recording_keys` and `sessions.recording_keys_project_id`.
fn validate_recording_keys(
    raw: &RawSessions,
    problems: &mut Vec<ConfigProblem>,
) -> Option<RecordingKeysBackend> {
    let backend = take(
        &raw.recording_keys,
        "sessions.recording_keys",
        "one of \"local\", \"infisical\"",
        problems,
    );
    let project_id = take(
        &raw.recording_keys_project_id,
        "sessions.recording_keys_project_id",
        "an Infisical project id",
        problems,
    );
    match (backend.as_deref().unwrap_or("local"), project_id) {
        ("local", None) => Some(RecordingKeysBackend::Local),
        ("local", Some(_)) => {
            problem(
                problems,
                "sessions.recording_keys_project_id",
                "is set but sessions.recording_keys is \"local\"; set sessions.recording_keys = \"infisical\" or remove the project id".to_owned(),
            );
            None
        }
        ("infisical", Some(project_id)) if !project_id.trim().is_empty() => {
            Some(RecordingKeysBackend::Infisical {
                project_id: project_id.trim().to_owned(),
            })
        }
        ("infisical", _) => {
            problem(
                problems,
                "sessions.recording_keys_project_id",
                "missing; sessions.recording_keys is \"infisical\", so set it to the id of the Infisical KMS project that holds the recording keys".to_owned(),
            );
            None
        }
        (other, _) => {
            problem(
                problems,
                "sessions.recording_keys",
                format!("unknown key store {other:?}; use \"local\" or \"infisical\""),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_toml(text: &str) -> (Option<SessionsConfig>, Vec<ConfigProblem>) {
        let raw: RawSessions = toml::from_str(text).expect("valid TOML");
        let mut problems = Vec::new();
        let config = validate_sessions(&raw, Path::new("/var/lib/strongroom"), &mut problems);
        (config, problems)
    }

    #[test]
    fn empty_section_gives_defaults() {
        let (config, problems) = validate_toml("");

        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            config,
            Some(SessionsConfig::defaults(Path::new("/var/lib/strongroom")))
        );
    }

    #[test]
    fn recording_keys_store_is_validated() {
        let (config, problems) = validate_toml(
            "recording_keys = \"infisical\"\nrecording_keys_project_id = \"kms-project\"\nexport_mux_timeout_seconds = 30",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(
            config.recording_keys,
            RecordingKeysBackend::Infisical {
                project_id: "kms-project".to_owned()
            }
        );
        assert_eq!(config.export_mux_timeout, Duration::from_secs(30));

        let cases = [
            (
                "recording_keys = \"infisical\"",
                "sessions.recording_keys_project_id",
                "missing",
            ),
            (
                "recording_keys_project_id = \"p\"",
                "sessions.recording_keys_project_id",
                "is set but",
            ),
            (
                "recording_keys = \"vault\"",
                "sessions.recording_keys",
                "unknown key store \"vault\"",
            ),
            (
                "export_mux_timeout_seconds = 0",
                "sessions.export_mux_timeout_seconds",
                "out of range",
            ),
        ];
        for (text, key, message) in cases {
            let (config, problems) = validate_toml(text);
            assert!(config.is_none(), "{text}");
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].key, key, "{text}");
            assert!(
                problems[0].message.contains(message),
                "{text}: {problems:?}"
            );
        }
    }

    #[test]
    fn warning_must_come_before_timeout() {
        let (config, problems) =
            validate_toml("idle_timeout_minutes = 5\nidle_warning_minutes = 5");

        assert!(config.is_none());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "sessions.idle_warning_minutes");
    }

    #[test]
    fn every_bad_key_is_named() {
        let (config, problems) = validate_toml(
            "host_max_sessions = 0\nmax_lifetime_minutes = 0\nlauncher_socket = \"launcher.sock\"\negress_proxy_port = 0\ndefault_quota = \"two\"",
        );

        assert!(config.is_none());
        let keys: Vec<&str> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "sessions.default_quota",
                "sessions.host_max_sessions",
                "sessions.max_lifetime_minutes",
                "sessions.launcher_socket",
                "sessions.egress_proxy_port",
            ]
        );
    }

    #[test]
    fn egress_limits_are_read_and_bounded() {
        let (config, problems) =
            validate_toml("egress_max_connections = 16\negress_idle_timeout_seconds = 45");
        assert!(problems.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.egress_max_connections, 16);
        assert_eq!(config.egress_idle_timeout, Duration::from_secs(45));
        assert_eq!(config.egress_bytes_per_second, None);

        let (config, problems) = validate_toml("egress_bytes_per_second = 1000000");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            config.unwrap().egress_bytes_per_second,
            std::num::NonZeroU64::new(1_000_000)
        );
        let (config, problems) = validate_toml("egress_bytes_per_second = 100");
        assert!(config.is_none());
        assert_eq!(problems[0].key, "sessions.egress_bytes_per_second");
        assert!(problems[0].message.contains("100 is below 16384"), "{problems:?}");

        let (config, problems) =
            validate_toml("egress_max_connections = 0\negress_idle_timeout_seconds = 5");
        assert!(config.is_none());
        let keys: Vec<&str> = problems
            .iter()
            .map(|problem| problem.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "sessions.egress_max_connections",
                "sessions.egress_idle_timeout_seconds",
            ]
        );
    }
}
