//! The viewer side of the live view: one WebSocket per watching browser.
//!
//! Broker to browser: binary messages are video packets. Each is `0x01`, a flags byte
//! with bit 0 set for a keyframe, the presentation time in microseconds as a
//! little-endian u64, then the VP8 frame. Text messages are JSON status objects with
//! a `type` of `config`, `placeholder`, `recording_failed`, `idle_warning`, `notice`,
//! `watchers`, `input_refused`, `resize_rejected`, `clipboard_policy`, `clipboard`
//! or `ended`.
//!
//! Browser to broker: text messages, each one JSON input event ([`ViewerInput`]).
//! Input is forwarded only from the session's owner, never while the auto-login
//! placeholder is up, and each accepted event counts as person activity for the idle
//! timer. Pings, pongs, resizes, invalid messages and reconnects do not. An admin's
//! watching socket gets an `input_refused` status for each message it sends, and while
//! any admin watches, every viewer gets a `watchers` status with the count.
//!
//! The site's clipboard policy is enforced here, and the owner's viewer learns it from
//! a `clipboard_policy` status. A `paste` is forwarded only where pasting in is
//! allowed, and gets `input_refused` otherwise. Text copied in the workspace reaches
//! only the owner's viewers, as a `clipboard` status, and only where copying out is
//! allowed.
//!
//! A viewer that falls behind loses buffered events, skips to the next keyframe and
//! asks the agent for one, so memory per viewer stays bounded by the broadcast buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use protocol::{BrokerMessage, KeyEvent, MouseButton};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{LiveStream, SessionHooks, ViewerEvent};

/// Largest input message accepted from a viewer, in bytes: a paste of
/// [`protocol::limits::MAX_CLIPBOARD_LEN`] bytes of text with every character escaped
/// as six bytes of JSON, and room for the rest of the message.
pub const MAX_VIEWER_MESSAGE: usize = 6 * protocol::limits::MAX_CLIPBOARD_LEN + 1024;

/// How long a viewer ticket stays valid.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// How often an open viewer re-checks that its portal session is still valid.
const AUTHORISATION_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewerMode {
    /// The owner, who views the screen and controls it.
    Control,
    /// An admin who views the screen and sends no input.
    Watch,
}

/// Rights granted by one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketGrant {
    pub session_id: Uuid,
    pub user_id: String,
    /// Hash of the portal session that asked for the ticket; the viewer closes when
    /// that portal session ends.
    pub portal_session: String,
    pub mode: ViewerMode,
}

/// One-time tickets for the viewer WebSocket, issued to a signed-in portal session.
#[derive(Clone, Default)]
pub struct Tickets {
    issued: Arc<Mutex<HashMap<String, (TicketGrant, Instant)>>>,
}

impl Tickets {
    pub fn issue(&self, grant: TicketGrant) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let ticket = hex::encode(bytes);
        let mut issued = self.issued.lock().expect("tickets lock");
        let now = Instant::now();
        issued.retain(|_, (_, at)| now.duration_since(*at) < TICKET_LIFETIME);
        issued.insert(ticket.clone(), (grant, now));
        ticket
    }

    /// Takes a ticket: valid once, within its lifetime.
    pub fn redeem(&self, ticket: &str) -> Option<TicketGrant> {
        let (grant, at) = self.issued.lock().expect("tickets lock").remove(ticket)?;
        (at.elapsed() < TICKET_LIFETIME).then_some(grant)
    }
}

/// Input events a viewer may send.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ViewerInput {
    Key {
        code: String,
        key: String,
        pressed: bool,
    },
    MouseMove {
        x: u32,
        y: u32,
    },
    MouseButton {
        button: MouseButton,
        pressed: bool,
        x: u32,
        y: u32,
    },
    Wheel {
        x: u32,
        y: u32,
        delta_x: f32,
        delta_y: f32,
    },
    Resize {
        width: u32,
        height: u32,
        device_pixel_ratio: f32,
    },
    /// Text from the person's clipboard, pasted into the workspace.
    Paste {
        text: String,
    },
}

impl ViewerInput {
    /// Parses and bounds one message; `None` for anything else.
    pub fn parse(text: &str) -> Option<ViewerInput> {
        if text.len() > MAX_VIEWER_MESSAGE {
            return None;
        }
        let input: ViewerInput = serde_json::from_str(text).ok()?;
        let valid = match &input {
            ViewerInput::Key { code, key, .. } => code.len() <= 64 && key.chars().count() <= 32,
            ViewerInput::MouseMove { x, y } | ViewerInput::MouseButton { x, y, .. } => {
                *x <= 16384 && *y <= 16384
            }
            ViewerInput::Wheel {
                delta_x, delta_y, ..
            } => delta_x.is_finite() && delta_y.is_finite(),
            ViewerInput::Resize {
                width,
                height,
                device_pixel_ratio,
            } => *width <= 16384 && *height <= 16384 && device_pixel_ratio.is_finite(),
            ViewerInput::Paste { text } => {
                !text.is_empty() && text.len() <= protocol::limits::MAX_CLIPBOARD_LEN
            }
        };
        valid.then_some(input)
    }

    /// Returns whether this input is a person acting; resizing a window is not.
    pub fn is_person_activity(&self) -> bool {
        !matches!(self, ViewerInput::Resize { .. })
    }

    fn into_broker_message(self) -> BrokerMessage {
        match self {
            ViewerInput::Key { code, key, pressed } => {
                BrokerMessage::Key(KeyEvent { code, key, pressed })
            }
            ViewerInput::MouseMove { x, y } => BrokerMessage::MouseMove { x, y },
            ViewerInput::MouseButton {
                button,
                pressed,
                x,
                y,
            } => BrokerMessage::MouseButton {
                button,
                pressed,
                x,
                y,
            },
            ViewerInput::Wheel {
                x,
                y,
                delta_x,
                delta_y,
            } => BrokerMessage::Wheel {
                x,
                y,
                delta_x,
                delta_y,
            },
            ViewerInput::Resize {
                width,
                height,
                device_pixel_ratio,
            } => BrokerMessage::Resize {
                width,
                height,
                device_pixel_ratio,
            },
            ViewerInput::Paste { text } => BrokerMessage::Paste { text },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StatusMessage<'a> {
    Config {
        codec: &'a str,
        width: u32,
        height: u32,
    },
    Placeholder {
        active: bool,
    },
    RecordingFailed {
        reason: &'a str,
    },
    IdleWarning {
        seconds: u64,
    },
    Notice {
        message: &'a str,
    },
    Ended {
        reason: &'a str,
    },
    Watchers {
        count: usize,
    },
    InputRefused {
        reason: &'a str,
    },
    /// A resize outside the protocol's bounds; `reason` names the value and the bound.
    ResizeRejected {
        reason: &'a str,
    },
    /// The directions of the site's clipboard policy, for the owner's viewer.
    ClipboardPolicy {
        paste_in: bool,
        copy_out: bool,
    },
    Clipboard {
        text: &'a str,
    },
}

/// Counts a watching admin out when its socket ends, however it ends.
struct WatcherGuard(Arc<LiveStream>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watcher_changed(false);
    }
}

/// Returns whether the viewer's portal session still allows viewing.
pub type Authorisation = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Serves one viewer until the session ends, the socket closes or the portal session
/// loses its right to view.
pub async fn serve(
    socket: WebSocket,
    stream: Arc<LiveStream>,
    mode: ViewerMode,
    hooks: Option<Arc<dyn SessionHooks>>,
    authorised: Authorisation,
    ping_interval: Duration,
) {
    let (mut sender, mut receiver) = socket.split();
    let (initial, mut events) = stream.subscribe();
    let _watcher = (mode == ViewerMode::Watch).then(|| {
        stream.watcher_changed(true);
        WatcherGuard(stream.clone())
    });
    let mut waiting_for_keyframe = true;
    stream.send_to_agent(BrokerMessage::RequestKeyframe);

    if mode == ViewerMode::Control {
        let policy = status(&StatusMessage::ClipboardPolicy {
            paste_in: stream.clipboard.allows_paste_in(),
            copy_out: stream.clipboard.allows_copy_out(),
        });
        if sender.send(policy).await.is_err() {
            return;
        }
    }

    for event in initial {
        if send_event(&mut sender, &event, &mut waiting_for_keyframe)
            .await
            .is_err()
        {
            return;
        }
    }

    let mut ping = tokio::time::interval(ping_interval);
    let mut recheck = tokio::time::interval(AUTHORISATION_RECHECK);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                // Copied text is for the person only, never for a watching admin.
                Ok(ViewerEvent::Clipboard { .. }) if mode == ViewerMode::Watch => {}
                Ok(event) => {
                    let ended = matches!(event, ViewerEvent::Ended { .. });
                    if send_event(&mut sender, &event, &mut waiting_for_keyframe).await.is_err() || ended {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(session.id = %stream.session_id, skipped, "Viewer fell behind; skipping to the next keyframe");
                    waiting_for_keyframe = true;
                    stream.send_to_agent(BrokerMessage::RequestKeyframe);
                }
                Err(RecvError::Closed) => break,
            },
            incoming = receiver.next() => match incoming {
                Some(Ok(Message::Text(text))) => match mode {
                    ViewerMode::Control => {
                        if let Some(reply) = forward_input(&stream, hooks.as_deref(), text.as_str()).await
                            && sender.send(reply).await.is_err()
                        {
                            break;
                        }
                    }
                    ViewerMode::Watch => {
                        let refused = status(&StatusMessage::InputRefused {
                            reason: "an administrator's view is read-only",
                        });
                        if sender.send(refused).await.is_err() {
                            break;
                        }
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                // Pongs and binary messages carry nothing; pongs do not count as activity.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sender.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            _ = recheck.tick() => {
                if !authorised().await {
                    let ended = ViewerEvent::Ended { reason: "your portal session ended".to_owned() };
                    let _ = send_event(&mut sender, &ended, &mut waiting_for_keyframe).await;
                    break;
                }
            }
        }
    }
    let _ = sender.close().await;
}

/// Forwards one viewer message to the agent, after auditing a paste. Returns a status
/// for the viewer when the message is refused for a reason the person can act on.
async fn forward_input(
    stream: &LiveStream,
    hooks: Option<&dyn SessionHooks>,
    text: &str,
) -> Option<Message> {
    let Some(input) = ViewerInput::parse(text) else {
        tracing::debug!(session.id = %stream.session_id, "Ignored an invalid viewer message");
        return None;
    };
    // INVARIANT: while credentials are typed, person input could disturb the fill or
    // reveal the field, so it is dropped here and again in the agent.
    if stream.placeholder_active() {
        return None;
    }
    if matches!(input, ViewerInput::Paste { .. }) && !stream.clipboard.allows_paste_in() {
        tracing::info!(session.id = %stream.session_id, "Refused a paste: the site's policy does not allow pasting in");
        return Some(status(&StatusMessage::InputRefused {
            reason: "this bank's policy does not allow pasting into the session",
        }));
    }
    let resize = matches!(input, ViewerInput::Resize { .. });
    let activity = input.is_person_activity();
    let message = input.into_broker_message();
    if let Err(error) = agent_accepts(&message) {
        tracing::debug!(session.id = %stream.session_id, error = %error, "Ignored viewer input outside the protocol's limits");
        return resize.then(|| {
            status(&StatusMessage::ResizeRejected {
                reason: &error.to_string(),
            })
        });
    }
    if let BrokerMessage::Paste { text } = &message
        && let Err(error) = stream
            .audit_clipboard(super::ClipboardDirection::PasteIn, text)
            .await
    {
        tracing::error!(session.id = %stream.session_id, error = format!("{error:#}"), "Refused a paste: the audit trail could not record it");
        return Some(status(&StatusMessage::InputRefused {
            reason: "the paste could not be recorded in the audit trail",
        }));
    }
    if stream.send_to_agent(message) && activity {
        stream.clear_idle_warning();
        if let Some(hooks) = hooks {
            hooks.person_input(stream.session_id);
        }
    }
    None
}

/// Checks that the agent's decoder accepts this message. Input it would reject, such
/// as a coordinate beyond the largest screen, is neither sent nor counted as person
/// activity.
fn agent_accepts(message: &BrokerMessage) -> Result<(), protocol::DecodeError> {
    protocol::decode_broker_message(&protocol::encode_broker_message(message)).map(|_| ())
}

async fn send_event<S>(
    sender: &mut S,
    event: &ViewerEvent,
    waiting_for_keyframe: &mut bool,
) -> Result<(), axum::Error>
where
    S: futures::Sink<Message, Error = axum::Error> + Unpin,
{
    let message = match event {
        ViewerEvent::Video {
            keyframe,
            pts_us,
            data,
        } => {
            if *waiting_for_keyframe && !keyframe {
                return Ok(());
            }
            *waiting_for_keyframe = false;
            let mut frame = Vec::with_capacity(10 + data.len());
            frame.push(0x01);
            frame.push(u8::from(*keyframe));
            frame.extend_from_slice(&pts_us.to_le_bytes());
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
        ViewerEvent::Config {
            codec,
            width,
            height,
        } => {
            *waiting_for_keyframe = true;
            status(&StatusMessage::Config {
                codec,
                width: *width,
                height: *height,
            })
        }
        ViewerEvent::Placeholder { active } => {
            status(&StatusMessage::Placeholder { active: *active })
        }
        ViewerEvent::RecordingFailed { reason } => {
            status(&StatusMessage::RecordingFailed { reason })
        }
        ViewerEvent::IdleWarning { seconds } => {
            status(&StatusMessage::IdleWarning { seconds: *seconds })
        }
        ViewerEvent::Notice { message } => status(&StatusMessage::Notice { message }),
        ViewerEvent::Ended { reason } => status(&StatusMessage::Ended { reason }),
        ViewerEvent::Watchers { count } => status(&StatusMessage::Watchers { count: *count }),
        ViewerEvent::Clipboard { text } => status(&StatusMessage::Clipboard { text }),
    };
    sender.send(message).await
}

fn status(message: &StatusMessage<'_>) -> Message {
    Message::Text(
        serde_json::to_string(message)
            .expect("status serialises")
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_input_is_parsed() {
        let input = ViewerInput::parse(r#"{"type":"key","code":"KeyQ","key":"é","pressed":true}"#);

        assert_eq!(
            input,
            Some(ViewerInput::Key {
                code: "KeyQ".into(),
                key: "é".into(),
                pressed: true
            })
        );
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        assert_eq!(
            ViewerInput::parse(r#"{"type":"key","code":"KeyQ","key":"q","pressed":true,"x":1}"#),
            None
        );
        assert_eq!(ViewerInput::parse(r#"{"type":"auth","secret":"x"}"#), None);
        assert_eq!(ViewerInput::parse("not json"), None);
    }

    #[test]
    fn oversize_message_is_rejected() {
        let key = "a".repeat(MAX_VIEWER_MESSAGE);
        let text = format!(r#"{{"type":"key","code":"KeyA","key":"{key}","pressed":true}}"#);

        assert_eq!(ViewerInput::parse(&text), None);
    }

    #[test]
    fn non_finite_wheel_is_rejected() {
        assert_eq!(
            ViewerInput::parse(r#"{"type":"wheel","x":1,"y":1,"delta_x":1e999,"delta_y":0}"#),
            None
        );
    }

    #[test]
    fn resize_is_not_person_activity() {
        let resize = ViewerInput::parse(
            r#"{"type":"resize","width":800,"height":600,"device_pixel_ratio":2}"#,
        )
        .unwrap();
        let click = ViewerInput::parse(
            r#"{"type":"mouse_button","button":"left","pressed":true,"x":3,"y":4}"#,
        )
        .unwrap();

        assert!(!resize.is_person_activity());
        assert!(click.is_person_activity());
    }

    #[test]
    fn input_beyond_protocol_limits_is_not_forwarded() {
        let inside = ViewerInput::parse(r#"{"type":"mouse_move","x":100,"y":100}"#).unwrap();
        let outside = ViewerInput::parse(r#"{"type":"mouse_move","x":9000,"y":100}"#).unwrap();
        let tiny = ViewerInput::parse(
            r#"{"type":"resize","width":10,"height":600,"device_pixel_ratio":1}"#,
        )
        .unwrap();

        assert!(agent_accepts(&inside.into_broker_message()).is_ok());
        assert!(agent_accepts(&outside.into_broker_message()).is_err());
        let rejected = agent_accepts(&tiny.into_broker_message()).unwrap_err();
        assert!(rejected.to_string().contains("width 10"), "{rejected}");
    }

    #[test]
    fn ticket_is_valid_once() {
        let tickets = Tickets::default();
        let grant = TicketGrant {
            session_id: Uuid::new_v4(),
            user_id: "u".into(),
            portal_session: "p".into(),
            mode: ViewerMode::Control,
        };
        let ticket = tickets.issue(grant.clone());

        assert_eq!(tickets.redeem(&ticket), Some(grant));
        assert_eq!(tickets.redeem(&ticket), None);
        assert_eq!(tickets.redeem("unknown"), None);
    }
}

#[cfg(test)]
mod parser_properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn parser_never_panics_on_any_text(text in any::<String>()) {
            let _ = ViewerInput::parse(&text);
        }

        #[test]
        fn parser_never_panics_on_mutated_messages(
            index in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6),
        ) {
            let samples = [
                r#"{"type":"key","code":"KeyQ","key":"é","pressed":true}"#,
                r#"{"type":"mouse_move","x":10,"y":20}"#,
                r#"{"type":"mouse_button","button":"left","pressed":true,"x":3,"y":4}"#,
                r#"{"type":"wheel","x":1,"y":1,"delta_x":0,"delta_y":120}"#,
                r#"{"type":"resize","width":800,"height":600,"device_pixel_ratio":2}"#,
                r#"{"type":"paste","text":"pässwörd€ 日本 Ö{}"}"#,
            ];
            let mut chars: Vec<char> = samples[index].chars().collect();
            for (position, replacement) in edits {
                let at = position.index(chars.len());
                chars[at] = replacement;
            }
            let text: String = chars.into_iter().collect();
            if let Some(input) = ViewerInput::parse(&text) {
                // Whatever parses either reaches the agent's decoder intact or is
                // rejected there; it never panics on the way.
                let _ = agent_accepts(&input.into_broker_message());
            }
        }

        #[test]
        fn paste_text_reaches_agent_exactly(text in any::<String>()) {
            let message = serde_json::json!({ "type": "paste", "text": text }).to_string();
            let parsed = ViewerInput::parse(&message);
            let fits = !text.is_empty() && text.len() <= protocol::limits::MAX_CLIPBOARD_LEN;
            prop_assert_eq!(parsed.is_some(), fits);
            if let Some(input) = parsed {
                let forwarded = input.into_broker_message();
                prop_assert!(agent_accepts(&forwarded).is_ok());
                prop_assert_eq!(forwarded, BrokerMessage::Paste { text });
            }
        }
    }

    #[test]
    fn largest_escaped_paste_fits_a_viewer_message() {
        let text = "\u{1}".repeat(protocol::limits::MAX_CLIPBOARD_LEN);
        let message = serde_json::json!({ "type": "paste", "text": text }).to_string();

        assert!(message.len() <= MAX_VIEWER_MESSAGE, "{} bytes", message.len());
        assert!(ViewerInput::parse(&message).is_some());
    }

    #[test]
    fn oversize_paste_is_rejected() {
        let text = "x".repeat(protocol::limits::MAX_CLIPBOARD_LEN + 1);
        let message = serde_json::json!({ "type": "paste", "text": text }).to_string();

        assert_eq!(ViewerInput::parse(&message), None);
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn idle_warning_status_names_seconds_left() {
        let Message::Text(text) = status(&StatusMessage::IdleWarning { seconds: 90 }) else {
            panic!("status messages are text");
        };

        assert_eq!(text.as_str(), r#"{"type":"idle_warning","seconds":90}"#);
    }

    #[test]
    fn notice_status_carries_message() {
        let Message::Text(text) = status(&StatusMessage::Notice {
            message: "Signed in.",
        }) else {
            panic!("status messages are text");
        };

        assert_eq!(text.as_str(), r#"{"type":"notice","message":"Signed in."}"#);
    }
}
