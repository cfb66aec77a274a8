//! Input types the recorder accepts. The broker converts the agent's wire messages into these.

use bytes::Bytes;

/// One encoded video packet, stored exactly as received (no re-encoding).
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    /// Presentation timestamp in microseconds on the stream's own clock.
    pub pts_us: u64,
    /// Whether the packet is a keyframe that a decoder can start from.
    pub keyframe: bool,
    /// Encoded bytes (one VP8 frame for a VP8 stream).
    pub data: Bytes,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("pts_us", &self.pts_us)
            .field("keyframe", &self.keyframe)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// An event in the stream that is not a video packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The agent started sending a placeholder instead of the screen because a credential
    /// is being filled in. The video from here until [`Marker::PlaceholderEnded`] is the
    /// placeholder, and the gap is marked in the recording.
    PlaceholderStarted { pts_us: u64 },
    /// The credential fill finished and the agent sends the real screen again.
    PlaceholderEnded { pts_us: u64 },
}

impl Marker {
    /// Presentation timestamp of the marker in microseconds.
    pub fn pts_us(&self) -> u64 {
        match *self {
            Marker::PlaceholderStarted { pts_us } | Marker::PlaceholderEnded { pts_us } => pts_us,
        }
    }
}

/// Codec and picture size of the stream, as announced by the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamConfig {
    /// Codec name, for example `vp8`. At most 255 bytes.
    pub codec: String,
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
}

/// One record read back from a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The stream configuration in force from here on. Every segment starts with one.
    Config(StreamConfig),
    /// A video packet.
    Packet(Packet),
    /// A placeholder gap marker.
    Marker(Marker),
}
