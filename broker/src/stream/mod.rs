//! Stream hub: the broker's link to each workspace agent, fanned out to the recorder
//! and to viewers.
//!
//! The broker dials the agent. Every video packet goes to the recorder first and is
//! broadcast to viewers only once the recorder accepted it, so no viewer gets a frame
//! that is not being recorded. When the recorder fails, the stream freezes at once,
//! viewers are told why, and the session is ended.
//!
//! Everything the agent sends is untrusted: frames are size-bounded and decoded by
//! the `protocol` crate, which rejects anything it does not expect.

mod link;
pub mod recording;
pub mod viewer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use protocol::{BrokerMessage, SessionSecret};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog, EventBuilder};
use crate::sites::ClipboardPolicy;
use crate::tasks::TaskRegistry;
pub use recording::RecordingSettings;

/// Events a viewer receives, in order.
#[derive(Debug, Clone)]
pub enum ViewerEvent {
    Config {
        codec: String,
        width: u32,
        height: u32,
    },
    Video {
        keyframe: bool,
        pts_us: u64,
        data: Bytes,
    },
    /// Credentials are being typed; the screen is hidden until `active` is false.
    Placeholder {
        active: bool,
    },
    /// The recording stopped; the stream is frozen and the session is ending.
    RecordingFailed {
        reason: String,
    },
    /// No person input for a while: the session ends in `seconds` unless the person acts.
    IdleWarning {
        seconds: u64,
    },
    /// A message for the person, such as the result of the auto-login.
    Notice {
        message: String,
    },
    /// The stream ended. `reason` is the session's end reason code (such as
    /// `idle_timeout`) when the lifecycle stopped the stream, or a sentence when the
    /// stream failed by itself. The viewer script shows a known code's sentence.
    Ended {
        reason: String,
    },
    /// Number of admins watching the session read-only. The person's viewer shows a
    /// banner while it is above zero.
    Watchers {
        count: usize,
    },
    /// Text copied in the workspace, sent only where the site's clipboard policy allows
    /// copying out, and only to the owner's viewer.
    Clipboard {
        text: String,
    },
}

/// Callbacks into the session lifecycle.
pub trait SessionHooks: Send + Sync + 'static {
    /// Ends the session with this reason because the stream cannot go on.
    fn end_session(&self, session_id: Uuid, reason: String);
    /// Records that a person's real keyboard, mouse or wheel input arrived.
    fn person_input(&self, session_id: Uuid);
}

/// Timing and sizes of the hub.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Port the agent listens on inside the workspace.
    pub agent_port: u16,
    /// How long the broker keeps trying to reach a starting agent.
    pub agent_connect_timeout: Duration,
    /// Events buffered per viewer before it skips to the next keyframe.
    pub viewer_buffer: usize,
    /// Interval of WebSocket pings to viewers.
    pub viewer_ping_interval: Duration,
}

impl Default for StreamSettings {
    fn default() -> StreamSettings {
        StreamSettings {
            agent_port: 7000,
            // Longer than the agent's own wait for Chromium's first page, so that the
            // agent, not the broker, reports a browser that never starts.
            agent_connect_timeout: Duration::from_secs(120),
            viewer_buffer: 64,
            viewer_ping_interval: Duration::from_secs(20),
        }
    }
}

/// Parameters for starting the stream of one session.
pub struct StreamStart {
    pub session_id: Uuid,
    pub owner: String,
    pub agent_addr: SocketAddr,
    pub secret: SessionSecret,
    pub recording_id: Uuid,
    pub recording_expires_at: DateTime<Utc>,
    /// The site's clipboard policy, enforced on pastes and copies of this stream.
    pub clipboard: ClipboardPolicy,
}

/// The latest state a joining viewer needs.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    config: Option<(String, u32, u32)>,
    placeholder: bool,
    notice: Option<String>,
    ended: Option<String>,
    watchers: usize,
    /// Idle cut-off time while a warning is active. Input from the person clears it.
    idle_deadline: Option<std::time::Instant>,
}

/// One session's live stream.
pub struct LiveStream {
    pub session_id: Uuid,
    pub owner: String,
    /// The session's site, which clipboard audit events name.
    pub site: String,
    pub recording_id: Uuid,
    pub clipboard: ClipboardPolicy,
    audit: AuditLog,
    to_agent: mpsc::Sender<BrokerMessage>,
    events: broadcast::Sender<ViewerEvent>,
    snapshot: Mutex<Snapshot>,
    frozen: AtomicBool,
    stop: CancellationToken,
    login_result: tokio::sync::watch::Sender<Option<LoginResult>>,
}

/// The agent's report of a whole auto-login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub login_id: u64,
    pub success: bool,
    /// The failed step and why; never a credential value.
    pub reason: Option<String>,
    /// Kind of failure; `None` on success.
    pub failure: Option<protocol::LoginFailure>,
}

impl LiveStream {
    /// Shows a message to the session's viewers, including those that join later.
    pub fn notify(&self, message: impl Into<String>) {
        let message = message.into();
        self.update(|snapshot| snapshot.notice = Some(message.clone()));
        self.publish(ViewerEvent::Notice { message });
    }

    /// Waits until the agent reports the end of auto-login `login_id`. Returns None
    /// when the stream ends first.
    pub async fn login_finished(&self, login_id: u64) -> Option<LoginResult> {
        let mut results = self.login_result.subscribe();
        let result = tokio::select! {
            result = results.wait_for(|result| result.as_ref().is_some_and(|result| result.login_id == login_id)) => result,
            _ = self.stop.cancelled() => return None,
        };
        result.ok().and_then(|result| result.clone())
    }

    /// Audits a clipboard transfer that the site's policy allowed: the owner, the
    /// session, the site, the direction and the text's length in UTF-8 bytes, never the
    /// text. The caller passes the text on only when this succeeds.
    pub async fn audit_clipboard(
        &self,
        direction: ClipboardDirection,
        text: &str,
    ) -> anyhow::Result<()> {
        let event = EventBuilder::new(
            Actor::Person(self.owner.clone()),
            Action::ClipboardTransferred,
        )
        .session(self.session_id)
        .target(crate::sites::audit_target(&self.site))
        .detail("direction", direction.as_str())
        .detail("bytes", text.len())
        .build();
        self.audit.append(event).await.map(|_| ())
    }

    /// Subscribes a viewer: the current state first, then every later event.
    pub fn subscribe(&self) -> (Vec<ViewerEvent>, broadcast::Receiver<ViewerEvent>) {
        let snapshot = self.snapshot.lock().expect("snapshot lock");
        let receiver = self.events.subscribe();
        let mut initial = Vec::new();
        if let Some((codec, width, height)) = snapshot.config.clone() {
            initial.push(ViewerEvent::Config {
                codec,
                width,
                height,
            });
        }
        if snapshot.placeholder {
            initial.push(ViewerEvent::Placeholder { active: true });
        }
        if let Some(message) = snapshot.notice.clone() {
            initial.push(ViewerEvent::Notice { message });
        }
        if let Some(deadline) = snapshot.idle_deadline {
            let seconds = deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_secs();
            initial.push(ViewerEvent::IdleWarning { seconds });
        }
        if snapshot.watchers > 0 {
            initial.push(ViewerEvent::Watchers {
                count: snapshot.watchers,
            });
        }
        if let Some(reason) = snapshot.ended.clone() {
            initial.push(ViewerEvent::Ended { reason });
        }
        (initial, receiver)
    }

    /// Sends a message to the agent. Returns false when the link is gone or its queue
    /// is full; input is then dropped rather than queued without bound.
    pub fn send_to_agent(&self, message: BrokerMessage) -> bool {
        self.to_agent.try_send(message).is_ok()
    }

    /// Counts a read-only watcher in or out and sends every viewer the new count.
    /// The count and the event change under one lock, so viewers see them in order.
    pub fn watcher_changed(&self, joined: bool) {
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        snapshot.watchers = if joined {
            snapshot.watchers + 1
        } else {
            snapshot.watchers.saturating_sub(1)
        };
        self.publish(ViewerEvent::Watchers {
            count: snapshot.watchers,
        });
    }

    /// Withdraws a standing idle warning because the person acted.
    pub fn clear_idle_warning(&self) {
        self.update(|snapshot| snapshot.idle_deadline = None);
    }

    pub fn placeholder_active(&self) -> bool {
        self.snapshot.lock().expect("snapshot lock").placeholder
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        change(&mut self.snapshot.lock().expect("snapshot lock"));
    }

    fn publish(&self, event: ViewerEvent) {
        // No subscriber is fine: the recorder has the packet either way.
        let _ = self.events.send(event);
    }
}

/// Direction of a clipboard transfer, named as in the site's clipboard policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipboardDirection {
    /// The person's paste into the workspace.
    PasteIn,
    /// Text copied in the workspace, sent to the owner's viewers.
    CopyOut,
}

impl ClipboardDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            ClipboardDirection::PasteIn => "paste_in",
            ClipboardDirection::CopyOut => "copy_out",
        }
    }
}

/// All live streams of this broker.
#[derive(Clone)]
pub struct StreamHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    streams: Mutex<HashMap<Uuid, Arc<LiveStream>>>,
    settings: StreamSettings,
    recording: RecordingSettings,
    audit: AuditLog,
    hooks: Mutex<Option<Arc<dyn SessionHooks>>>,
    downloads: Mutex<Option<crate::downloads::Downloads>>,
    tasks: TaskRegistry,
}

impl StreamHub {
    pub fn new(
        settings: StreamSettings,
        recording: RecordingSettings,
        audit: AuditLog,
        tasks: TaskRegistry,
    ) -> StreamHub {
        StreamHub {
            inner: Arc::new(HubInner {
                streams: Mutex::new(HashMap::new()),
                settings,
                recording,
                audit,
                hooks: Mutex::new(None),
                downloads: Mutex::new(None),
                tasks,
            }),
        }
    }

    /// Connects the hub to the session lifecycle. Set once at start-up.
    pub fn set_hooks(&self, hooks: Arc<dyn SessionHooks>) {
        *self.inner.hooks.lock().expect("hooks lock") = Some(hooks);
    }

    /// Connects the hub to the download store. Set once at start-up; without it every
    /// download a workspace sends is refused.
    pub fn set_downloads(&self, downloads: crate::downloads::Downloads) {
        *self.inner.downloads.lock().expect("downloads lock") = Some(downloads);
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.inner.settings
    }

    /// The recording store, key store and segment settings of new recordings.
    pub fn recording_settings(&self) -> &RecordingSettings {
        &self.inner.recording
    }

    /// Starts the recording and the agent link of a session. The recording is created
    /// before anything connects, so a failing store refuses the stream at once.
    pub async fn start(&self, start: StreamStart) -> anyhow::Result<Arc<LiveStream>> {
        let site = crate::sessions::store::get(self.inner.audit.database(), start.session_id)
            .await?
            .map(|session| session.site)
            .unwrap_or_default();
        let recording = recording::start_catalogued(
            &self.inner.recording,
            self.inner.audit.database(),
            start.session_id,
            start.recording_id,
            start.recording_expires_at,
        )
        .await?;

        let (to_agent, from_broker) = mpsc::channel(256);
        let (events, _) = broadcast::channel(self.inner.settings.viewer_buffer.max(2));
        let stream = Arc::new(LiveStream {
            session_id: start.session_id,
            owner: start.owner.clone(),
            site,
            recording_id: start.recording_id,
            clipboard: start.clipboard,
            audit: self.inner.audit.clone(),
            to_agent,
            events,
            snapshot: Mutex::new(Snapshot::default()),
            frozen: AtomicBool::new(false),
            stop: self.inner.tasks.token().child_token(),
            login_result: tokio::sync::watch::Sender::new(None),
        });
        self.inner
            .streams
            .lock()
            .expect("streams lock")
            .insert(start.session_id, stream.clone());

        let link = link::Link {
            hub: self.clone(),
            stream: stream.clone(),
            recording,
            from_broker,
            agent_addr: start.agent_addr,
            secret: start.secret,
            last_pts_us: 0,
            downloads: crate::downloads::DownloadReceiver::new(
                self.inner.downloads.lock().expect("downloads lock").clone(),
                start.session_id,
            ),
        };
        self.inner.tasks.spawn("stream", link.run());
        Ok(stream)
    }

    pub fn get(&self, session_id: Uuid) -> Option<Arc<LiveStream>> {
        self.inner
            .streams
            .lock()
            .expect("streams lock")
            .get(&session_id)
            .cloned()
    }

    /// Ends a session's stream: the agent gets `End`, the recording is sealed and
    /// viewers get `reason`, an end reason code or a sentence. Does nothing for an
    /// unknown session.
    pub fn stop(&self, session_id: Uuid, reason: &str) {
        if let Some(stream) = self.get(session_id) {
            stream.update(|snapshot| {
                snapshot.ended.get_or_insert_with(|| reason.to_owned());
            });
            stream.stop.cancel();
        }
    }

    /// Tells a session's viewers that it ends in `seconds` without input.
    pub fn warn_idle(&self, session_id: Uuid, seconds: u64) {
        if let Some(stream) = self.get(session_id) {
            stream.update(|snapshot| {
                snapshot.idle_deadline =
                    Some(std::time::Instant::now() + Duration::from_secs(seconds));
            });
            stream.publish(ViewerEvent::IdleWarning { seconds });
        }
    }

    fn remove(&self, session_id: Uuid) {
        self.inner
            .streams
            .lock()
            .expect("streams lock")
            .remove(&session_id);
    }

    fn hooks(&self) -> Option<Arc<dyn SessionHooks>> {
        self.inner.hooks.lock().expect("hooks lock").clone()
    }

    fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }
}
