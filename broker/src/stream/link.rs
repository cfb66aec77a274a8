//! The task that owns one agent connection and one recording.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use protocol::{AgentControl, AgentMessage, BrokerMessage, SessionSecret};
use recorder::{Marker, Packet, SegmentStored, StreamConfig};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::recording::{RecordingFailure, RecordingHandle};
use super::{LiveStream, StreamHub, ViewerEvent};
use crate::audit::{Action, Actor, EventBuilder, Outcome};
use crate::recordings::catalogue;

type AgentSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Delay between connection attempts to a starting agent.
const CONNECT_RETRY: Duration = Duration::from_millis(250);

pub(super) struct Link {
    pub hub: StreamHub,
    pub stream: Arc<LiveStream>,
    pub recording: RecordingHandle,
    pub from_broker: mpsc::Receiver<BrokerMessage>,
    pub agent_addr: SocketAddr,
    pub secret: SessionSecret,
    pub last_pts_us: u64,
    /// Files the agent is sending.
    pub downloads: crate::downloads::DownloadReceiver,
}

/// Cause of the link's end.
enum LinkEnd {
    /// The lifecycle stopped the stream; it ends the session itself.
    Stopped,
    /// The stream cannot continue; the session must end with this reason.
    Failed(String),
}

impl Link {
    #[tracing::instrument(name = "stream", skip_all, fields(session.id = %self.stream.session_id, recording.id = %self.recording.id()))]
    pub async fn run(mut self) {
        self.audit_recording(Action::RecordingStarted, Outcome::Success, |event| event)
            .await;

        let end = match self.connect().await {
            Ok(socket) => self.relay(socket).await,
            Err(error) => LinkEnd::Failed(format!("workspace agent unreachable: {error:#}")),
        };
        self.downloads.abort_open().await;
        // A session that the lifecycle is already ending loses its workspace next. The
        // agent's closed connection follows from that, so viewers get the lifecycle's reason.
        let already_ending = self
            .stream
            .snapshot
            .lock()
            .expect("snapshot lock")
            .ended
            .is_some();
        let end = match end {
            LinkEnd::Failed(_) if already_ending => LinkEnd::Stopped,
            end => end,
        };

        let reason = match &end {
            LinkEnd::Stopped => self
                .stream
                .snapshot
                .lock()
                .expect("snapshot lock")
                .ended
                .clone()
                .unwrap_or_else(|| "ended".to_owned()),
            LinkEnd::Failed(reason) => reason.clone(),
        };
        self.seal().await;
        self.stream.update(|snapshot| {
            snapshot.ended.get_or_insert_with(|| reason.clone());
        });
        self.hub.remove(self.stream.session_id);

        if let LinkEnd::Failed(reason) = end {
            tracing::warn!(reason = reason.as_str(), "Stream ended by failure");
            if let Some(hooks) = self.hub.hooks() {
                hooks.end_session(self.stream.session_id, reason);
            }
        }
        self.stream.publish(ViewerEvent::Ended { reason });
    }

    /// Dials the agent until it accepts the connection or the connect timeout passes, then
    /// authenticates with the session secret.
    async fn connect(&mut self) -> anyhow::Result<AgentSocket> {
        let url = format!("ws://{}/", self.agent_addr);
        let config = WebSocketConfig::default()
            .max_message_size(Some(protocol::MAX_AGENT_FRAME_LEN))
            .max_frame_size(Some(protocol::MAX_AGENT_FRAME_LEN));
        let deadline = tokio::time::Instant::now() + self.hub.settings().agent_connect_timeout;

        let mut socket = loop {
            let attempt =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), false);
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok((socket, _))) => break socket,
                Ok(Err(error)) if tokio::time::Instant::now() >= deadline => {
                    return Err(error).with_context(|| format!("cannot connect to {url}"));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("connecting to {url} timed out")
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(CONNECT_RETRY) => {}
                _ = self.stream.stop.cancelled() => anyhow::bail!("stopped before the agent accepted the connection"),
            }
        };

        let auth = protocol::encode_broker_message(&BrokerMessage::Auth {
            secret: self.secret.clone(),
        });
        socket
            .send(Message::binary(auth.to_vec()))
            .await
            .context("cannot send the agent secret")?;
        tracing::info!(agent = %self.agent_addr, "Connected to the workspace agent");
        Ok(socket)
    }

    async fn relay(&mut self, mut socket: AgentSocket) -> LinkEnd {
        loop {
            tokio::select! {
                _ = self.stream.stop.cancelled() => {
                    let end = protocol::encode_broker_message(&BrokerMessage::End);
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(Message::binary(end.to_vec()))).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                    return LinkEnd::Stopped;
                }
                outgoing = self.from_broker.recv() => {
                    let Some(message) = outgoing else { return LinkEnd::Stopped };
                    let frame = protocol::encode_broker_message(&message);
                    if let Err(error) = socket.send(Message::binary(frame.to_vec())).await {
                        return LinkEnd::Failed(format!("workspace agent connection failed: {error}"));
                    }
                }
                incoming = socket.next() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => return LinkEnd::Failed(format!("workspace agent connection failed: {error}")),
                        None => return LinkEnd::Failed("workspace agent closed the connection".to_owned()),
                    };
                    if let Some(end) = self.handle_message(message).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn handle_message(&mut self, message: Message) -> Option<LinkEnd> {
        let frame = match message {
            Message::Binary(frame) => frame,
            Message::Close(_) => {
                return Some(LinkEnd::Failed(
                    "workspace agent closed the connection".to_owned(),
                ));
            }
            // The WebSocket layer replies to pings, and text frames carry nothing.
            _ => return None,
        };
        let decoded = match protocol::decode_agent_message(&frame) {
            Ok(decoded) => decoded,
            Err(error) => {
                // A workspace that sends garbage is compromised or broken; either way
                // the session ends.
                return Some(LinkEnd::Failed(format!(
                    "workspace agent sent an invalid frame: {error}"
                )));
            }
        };

        match decoded {
            AgentMessage::Video(packet) => self.video(packet).await,
            AgentMessage::Control(control) => self.control(control).await,
            AgentMessage::DownloadChunk(chunk) => {
                self.downloads.chunk(chunk).await;
                None
            }
        }
    }

    async fn video(&mut self, packet: protocol::VideoPacket) -> Option<LinkEnd> {
        if self.stream.is_frozen() {
            return None;
        }
        self.last_pts_us = self.last_pts_us.max(packet.pts_us);
        let data = Bytes::from(packet.data);
        let record = Packet {
            pts_us: packet.pts_us,
            keyframe: packet.keyframe,
            data: data.clone(),
        };
        match self.recording.push_packet(record).await {
            Ok(stored) => {
                if let Some(segment) = stored
                    && let Err(end) = self.audit_segment(&segment).await
                {
                    return Some(end);
                }
                self.stream.publish(ViewerEvent::Video {
                    keyframe: packet.keyframe,
                    pts_us: packet.pts_us,
                    data,
                });
                None
            }
            Err(error) => Some(self.freeze(error).await),
        }
    }

    async fn control(&mut self, control: AgentControl) -> Option<LinkEnd> {
        match control {
            AgentControl::StreamConfig {
                codec,
                width,
                height,
            } => {
                let config = StreamConfig {
                    codec: codec.clone(),
                    width,
                    height,
                };
                if let Err(error) = self.recording.push_config(config).await {
                    return Some(self.freeze(error).await);
                }
                self.stream
                    .update(|snapshot| snapshot.config = Some((codec.clone(), width, height)));
                self.stream.publish(ViewerEvent::Config {
                    codec,
                    width,
                    height,
                });
            }
            AgentControl::PlaceholderStart { .. } | AgentControl::PlaceholderEnd { .. } => {
                let active = matches!(control, AgentControl::PlaceholderStart { .. });
                let pts_us = self.stream_pts();
                let marker = if active {
                    Marker::PlaceholderStarted { pts_us }
                } else {
                    Marker::PlaceholderEnded { pts_us }
                };
                if let Err(error) = self.recording.push_marker(marker).await {
                    return Some(self.freeze(error).await);
                }
                self.stream.update(|snapshot| snapshot.placeholder = active);
                self.stream.publish(ViewerEvent::Placeholder { active });
            }
            AgentControl::UrlChanged { url } => {
                tracing::debug!(url.len = url.len(), "Workspace page navigated");
            }
            AgentControl::LoginStep {
                login_id,
                step,
                outcome,
            } => {
                tracing::info!(login.id = login_id, login.step = step, outcome = ?outcome, "Auto-login step finished");
            }
            AgentControl::LoginFinished {
                login_id,
                success,
                reason,
                failed_step,
                failure,
            } => {
                let outcome = if success {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                // `reason` is a code (`rejected`, `timed_out`); `detail` the agent's
                // sentence, which names the step and its selector.
                let mut event =
                    EventBuilder::new(Actor::System("agent"), Action::AutoLoginFinished)
                        .session(self.stream.session_id)
                        .outcome(outcome)
                        .detail("login_id", login_id)
                        .detail("detail", reason.clone().unwrap_or_default());
                if !success {
                    let code = failure.unwrap_or(protocol::LoginFailure::Failed).code();
                    event = event.detail("reason", code);
                }
                if let Some(step) = failed_step {
                    event = event.detail("failed_step", step);
                }
                let event = event.build();
                if let Err(error) = self.hub.audit().append(event).await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "Cannot record the auto-login result"
                    );
                }
                self.stream.login_result.send_replace(Some(super::LoginResult {
                    login_id,
                    success,
                    reason,
                    failure,
                }));
            }
            AgentControl::BrowserExited { code, signal } => {
                return Some(LinkEnd::Failed(browser_exit_reason(code, signal)));
            }
            AgentControl::ClipboardChanged { text } => {
                // INVARIANT: the workspace is untrusted, so its copies reach the
                // person only where the site allows copying out.
                if self.stream.clipboard.allows_copy_out() {
                    match self
                        .stream
                        .audit_clipboard(super::ClipboardDirection::CopyOut, &text)
                        .await
                    {
                        Ok(()) => self.stream.publish(ViewerEvent::Clipboard { text }),
                        Err(error) => tracing::error!(
                            error = format!("{error:#}"),
                            text.len = text.len(),
                            "Dropped workspace clipboard text: the audit trail could not record it"
                        ),
                    }
                } else {
                    tracing::debug!(
                        text.len = text.len(),
                        "Dropped workspace clipboard text: the site's policy does not allow copying out"
                    );
                }
            }
            AgentControl::DownloadStart {
                download_id,
                name,
                size,
                ..
            } => self.downloads.start(download_id, &name, size).await,
            AgentControl::DownloadEnd {
                download_id,
                sha256,
            } => self.downloads.end(download_id, &sha256).await,
            AgentControl::DownloadRefused { name, size, reason } => {
                self.downloads.refused_by_agent(&name, size, &reason).await
            }
            AgentControl::Error { message } => {
                tracing::warn!(
                    agent.message = message.as_str(),
                    "Workspace agent reported an error"
                );
            }
        }
        None
    }

    /// Returns a marker's timestamp. The agent sends none, so the marker takes the time
    /// of the last packet, which keeps the recording's timestamps monotonic.
    fn stream_pts(&self) -> u64 {
        self.last_pts_us
    }

    async fn freeze(&mut self, error: RecordingFailure) -> LinkEnd {
        self.stream.frozen.store(true, Ordering::SeqCst);
        let reason = format!("recording failed: {error}");
        self.stream.publish(ViewerEvent::RecordingFailed {
            reason: reason.clone(),
        });
        let detail = reason.clone();
        self.audit_recording(Action::RecordingFailed, Outcome::Failure, move |event| {
            event.detail("reason", detail)
        })
        .await;
        LinkEnd::Failed(reason)
    }

    async fn audit_segment(&self, segment: &SegmentStored) -> Result<(), LinkEnd> {
        let event = EventBuilder::new(Actor::System("recorder"), Action::RecordingSegmentStored)
            .session(self.stream.session_id)
            .target(format!("recording:{}", self.recording.id()))
            .detail("index", segment.index)
            .detail("sha256", hex::encode(segment.sha256))
            .detail("bytes", segment.bytes)
            .detail("start_pts_us", segment.start_pts_us)
            .detail("end_pts_us", segment.end_pts_us)
            .build();
        self.hub.audit().append(event).await.map_err(|error| {
            // A segment whose hash is not in the chain could be swapped unnoticed.
            LinkEnd::Failed(format!(
                "cannot record a segment hash in the audit trail: {error:#}"
            ))
        })?;
        // The counts are for the recordings list; the seal and the audit trail are
        // authoritative, so a failed update does not end the session.
        if let Err(error) = catalogue::add_segment(
            self.hub.audit().database(),
            self.recording.id(),
            segment.index,
            segment.bytes,
        )
        .await
        {
            tracing::warn!(error = format!("{error:#}"), "Cannot count a segment in the recordings catalogue");
        }
        Ok(())
    }

    async fn audit_recording(
        &self,
        action: Action,
        outcome: Outcome,
        extra: impl FnOnce(EventBuilder) -> EventBuilder,
    ) {
        let event = EventBuilder::new(Actor::System("recorder"), action)
            .session(self.stream.session_id)
            .target(format!("recording:{}", self.recording.id()))
            .outcome(outcome);
        if let Err(error) = self.hub.audit().append(extra(event).build()).await {
            tracing::error!(
                error = format!("{error:#}"),
                "Cannot record a recording event in the audit trail"
            );
        }
    }

    async fn seal(&mut self) {
        match self.recording.seal().await {
            Ok(summary) => {
                if let Some(segment) = &summary.final_segment
                    && let Err(LinkEnd::Failed(reason)) = self.audit_segment(segment).await
                {
                    tracing::error!(
                        reason = reason.as_str(),
                        "Final segment hash not recorded"
                    );
                }
                // A stream that ended before its first frame, such as one whose
                // workspace never answered, leaves a valid but empty recording. Its row
                // says so, and the recordings list shows it as nothing recorded.
                let detail =
                    (summary.segment_count == 0).then(|| catalogue::NOTHING_RECORDED.to_owned());
                let sealed = catalogue::SealedEntry {
                    ended_at: chrono::Utc::now(),
                    segment_count: summary.segment_count,
                    bytes: summary.stored_bytes,
                    seal_sha256: summary.seal_sha256,
                    detail,
                };
                if let Err(error) =
                    catalogue::mark_sealed(self.hub.audit().database(), self.recording.id(), &sealed)
                        .await
                {
                    tracing::error!(error = format!("{error:#}"), "Cannot mark the recording sealed in the catalogue");
                }
                let seal = hex::encode(summary.seal_sha256);
                self.audit_recording(Action::RecordingSealed, Outcome::Success, move |event| {
                    event
                        .detail("segment_count", summary.segment_count)
                        .detail("seal_sha256", seal)
                })
                .await;
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(
                    error = reason.as_str(),
                    "Cannot seal the recording; crash recovery will seal it"
                );
                if let Err(error) = catalogue::mark_failed(
                    self.hub.audit().database(),
                    self.recording.id(),
                    chrono::Utc::now(),
                    &reason,
                )
                .await
                {
                    tracing::error!(error = format!("{error:#}"), "Cannot mark the recording failed in the catalogue");
                }
                self.audit_recording(Action::RecordingFailed, Outcome::Failure, move |event| {
                    event.detail("reason", reason)
                })
                .await;
            }
        }
    }
}

/// Describes a Chromium exit for the person's end screen and the audit trail.
fn browser_exit_reason(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(signal)) => format!("the browser exited: it was killed by signal {signal}"),
        (Some(code), None) => format!("the browser exited with code {code}"),
        (None, None) => "the browser exited".to_owned(),
    }
}

#[cfg(test)]
mod browser_exit_tests {
    use super::browser_exit_reason;

    #[test]
    fn browser_exit_reason_names_signal_or_code() {
        assert_eq!(
            browser_exit_reason(None, Some(9)),
            "the browser exited: it was killed by signal 9"
        );
        assert_eq!(
            browser_exit_reason(Some(1), None),
            "the browser exited with code 1"
        );
        assert_eq!(browser_exit_reason(None, None), "the browser exited");
    }
}
