//! The single path from the agent to the connected broker.
//!
//! Video frames and control messages go through one bounded channel, under one lock that
//! also holds the placeholder state. A frame is sent only while no placeholder is active,
//! and the lock makes "set placeholder, send marker" atomic with respect to the capture
//! thread, so no screen frame follows a `PlaceholderStart` until its `PlaceholderEnd`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use protocol::{AgentControl, VideoPacket};
use tokio::sync::mpsc;

/// Capacity of the channel to the broker connection, in frames.
pub const OUTBOUND_CAPACITY: usize = 256;

pub type Outbound = mpsc::Sender<Vec<u8>>;

#[derive(Default)]
struct State {
    /// The current connection's id and channel.
    sink: Option<(u64, Outbound)>,
    next_connection: u64,
    placeholder: Option<u64>,
    stream: Option<(u32, u32)>,
    /// The latest screen size requested by the broker and not applied yet.
    pending_resize: Option<(u32, u32)>,
}

/// Shared state between the capture thread, the login driver and the connection.
#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    keyframe_requested: AtomicBool,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `sink` the current broker connection, replacing any previous one, and sends
    /// it the stream configuration and any active placeholder.
    pub fn attach(&self, sink: Outbound) -> u64 {
        let mut state = self.lock();
        if let Some((width, height)) = state.stream {
            let _ = sink.try_send(protocol::encode_agent_control(
                &AgentControl::StreamConfig {
                    codec: "vp8".into(),
                    width,
                    height,
                },
            ));
        }
        if let Some(login_id) = state.placeholder {
            let _ = sink.try_send(protocol::encode_agent_control(
                &AgentControl::PlaceholderStart { login_id },
            ));
        }
        state.next_connection += 1;
        let id = state.next_connection;
        state.sink = Some((id, sink));
        drop(state);
        self.request_keyframe();
        id
    }

    /// Detaches connection `id` if it is still the current one.
    pub fn detach(&self, id: u64) {
        let mut state = self.lock();
        if state
            .sink
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            state.sink = None;
        }
    }

    /// Drops the current connection's channel: its writer sends what is queued, then
    /// closes the WebSocket.
    pub fn close(&self) {
        self.lock().sink = None;
    }

    /// Records the stream size and sends it to the current connection, if any.
    pub fn set_stream(&self, width: u32, height: u32) {
        let mut state = self.lock();
        state.stream = Some((width, height));
        let config = AgentControl::StreamConfig {
            codec: "vp8".into(),
            width,
            height,
        };
        Self::send_locked(&mut state, protocol::encode_agent_control(&config));
    }

    /// Asks the capture thread to change the screen size. A later request replaces
    /// one that was not applied yet, so a burst of resizes costs one change.
    pub fn request_resize(&self, width: u32, height: u32) {
        self.lock().pending_resize = Some((width, height));
    }

    pub fn take_resize_request(&self) -> Option<(u32, u32)> {
        self.lock().pending_resize.take()
    }

    pub fn request_keyframe(&self) {
        self.keyframe_requested.store(true, Ordering::SeqCst);
    }

    pub fn take_keyframe_request(&self) -> bool {
        self.keyframe_requested.swap(false, Ordering::SeqCst)
    }

    pub fn placeholder_active(&self) -> bool {
        self.lock().placeholder.is_some()
    }

    /// Returns the current connection's channel, for a sender that queues a sequence
    /// of frames which must all reach the same connection.
    pub fn sink(&self) -> Option<Outbound> {
        self.lock().sink.as_ref().map(|(_, sink)| sink.clone())
    }

    pub fn is_attached(&self) -> bool {
        self.lock().sink.is_some()
    }

    /// Sends a control message to the current connection, if any. A connection whose
    /// channel is full is dropped: it has stopped reading.
    pub fn send_control(&self, message: &AgentControl) {
        let mut state = self.lock();
        Self::send_locked(&mut state, protocol::encode_agent_control(message));
    }

    fn send_locked(state: &mut State, frame: Vec<u8>) -> bool {
        let Some((_, sink)) = &state.sink else {
            return false;
        };
        match sink.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("Broker connection is not reading; dropping it");
                state.sink = None;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.sink = None;
                false
            }
        }
    }

    /// Sends a video packet unless a placeholder is active. Returns false when the packet
    /// was not delivered, so the next frame must be a keyframe.
    pub fn send_video(&self, packet: &VideoPacket) -> bool {
        let mut state = self.lock();
        if state.placeholder.is_some() {
            return false;
        }
        let Some((_, sink)) = &state.sink else {
            return false;
        };
        // Keep room for control messages: a video frame never fills the last slots.
        if sink.capacity() < 16 {
            return false;
        }
        Self::send_locked(&mut state, protocol::encode_video(packet))
    }

    /// Starts a placeholder: from now on no screen frame is sent.
    pub fn start_placeholder(&self, login_id: u64) {
        let mut state = self.lock();
        state.placeholder = Some(login_id);
        Self::send_locked(
            &mut state,
            protocol::encode_agent_control(&AgentControl::PlaceholderStart { login_id }),
        );
    }

    /// Ends the placeholder and requests a keyframe from the capture thread.
    pub fn end_placeholder(&self, login_id: u64) {
        let mut state = self.lock();
        state.placeholder = None;
        Self::send_locked(
            &mut state,
            protocol::encode_agent_control(&AgentControl::PlaceholderEnd { login_id }),
        );
        drop(state);
        self.request_keyframe();
    }
}
