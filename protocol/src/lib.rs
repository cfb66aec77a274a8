//! Wire protocol between the Strongroom broker and the in-container agent.
//!
//! The broker dials the agent over TCP and speaks WebSocket. Every WebSocket **binary**
//! message carries exactly one protocol frame; text, ping and pong messages carry none.
//! A frame starts with a one-byte tag:
//!
//! | tag | direction | body |
//! | --- | --- | --- |
//! | `0x01` | agent → broker | video packet: `flags: u8` (bit 0 = keyframe, other bits zero), `pts_us: u64` little-endian (presentation time in microseconds since the stream started), then the encoded VP8 frame to the end of the message |
//! | `0x02` | both | control message: one UTF-8 JSON object, `{"type": "...", ...}` ([`AgentControl`] or [`BrokerMessage`]) |
//! | `0x03` | agent → broker | download chunk: `download_id: u64`, `offset: u64`, both little-endian, then 1 to [`limits::MAX_DOWNLOAD_CHUNK_LEN`] bytes of the file ([`DownloadChunk`]) |
//!
//! Sizes are bounded before anything is parsed: an agent frame is at most
//! [`MAX_AGENT_FRAME_LEN`] bytes and a broker frame at most [`MAX_BROKER_FRAME_LEN`].
//! Every decoder treats its input as hostile: it returns a [`DecodeError`] for any byte
//! string it does not accept and never panics (a proptest in this crate feeds it random
//! and mutated input). Decoded values are also checked for semantic bounds (dimensions,
//! string lengths, list lengths), see [`limits`].
//!
//! The session starts with authentication. The container receives only the lower-case
//! hex SHA-256 of the per-session secret ([`SessionSecret::sha256_hex`]); the broker's
//! first frame must be [`BrokerMessage::Auth`] with the secret itself, which the agent
//! checks with [`SessionSecret::matches_sha256`] in constant time. The agent then sends
//! [`AgentControl::StreamConfig`] followed by a keyframe.
//!
//! Credentials travel only inside [`BrokerMessage::AutoLogin`] as [`Credentials`], whose
//! values are [`SecretString`]s: zeroized on drop and redacted in `Debug`.
//!
//! NOTE: serde_json's parser copies escaped strings through a scratch buffer that is not
//! zeroized, and the WebSocket layer owns the received bytes. Callers should zeroize the
//! frame buffer after decoding an `AutoLogin`, but intermediate copies can remain in freed
//! heap memory until reused.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Size and count bounds enforced by the decoders.
pub mod limits {
    /// Maximum agent → broker frame length in bytes. A VP8 keyframe of a busy 1920x1080
    /// screen at the agent's bitrate is a few hundred kilobytes.
    pub const MAX_AGENT_FRAME_LEN: usize = 4 * 1024 * 1024;
    /// Maximum broker → agent frame length in bytes.
    pub const MAX_BROKER_FRAME_LEN: usize = 64 * 1024;
    /// Maximum screen width or height in pixels.
    pub const MAX_DIMENSION: u32 = 4096;
    /// Minimum screen width or height in pixels.
    pub const MIN_DIMENSION: u32 = 64;
    /// Maximum length in bytes of a URL, selector, key name or other short string.
    pub const MAX_STRING_LEN: usize = 4096;
    /// Maximum length in bytes of a text or error message.
    pub const MAX_MESSAGE_LEN: usize = 8192;
    /// Maximum length in bytes of one credential value.
    pub const MAX_CREDENTIAL_LEN: usize = 1024;
    /// Maximum number of steps in a login recipe.
    pub const MAX_LOGIN_STEPS: usize = 32;
    /// Maximum number of allowed origins per credential.
    pub const MAX_ORIGINS: usize = 16;
    /// Maximum timeout of one login step in milliseconds.
    pub const MAX_STEP_TIMEOUT_MS: u32 = 120_000;
    /// Maximum device pixel ratio accepted in a resize.
    pub const MAX_DEVICE_PIXEL_RATIO: f32 = 4.0;
    /// Maximum absolute wheel delta in CSS pixels per event.
    pub const MAX_WHEEL_DELTA: f32 = 10_000.0;
    /// Maximum length in bytes of clipboard text, in either direction. JSON escapes a
    /// control character as six bytes, so a paste of this size always fits in a
    /// broker frame.
    pub const MAX_CLIPBOARD_LEN: usize = 8192;
    /// Maximum data bytes in one download chunk frame.
    pub const MAX_DOWNLOAD_CHUNK_LEN: usize = 256 * 1024;
    /// Maximum size in bytes of one downloaded file that the protocol can carry. The
    /// broker's configured cap is at most this.
    pub const MAX_DOWNLOAD_SIZE: u64 = 1 << 30;
    /// Maximum length in bytes of a downloaded file's name.
    pub const MAX_FILE_NAME_LEN: usize = 255;
}

pub use limits::{MAX_AGENT_FRAME_LEN, MAX_BROKER_FRAME_LEN};

/// Frame tag of a video packet.
pub const TAG_VIDEO: u8 = 0x01;
/// Frame tag of a JSON control message.
pub const TAG_CONTROL: u8 = 0x02;
/// Frame tag of a download chunk.
pub const TAG_DOWNLOAD_CHUNK: u8 = 0x03;

/// Version of the download messages (`download_start` and the chunk frame layout). A
/// `download_start` with another version is a decoding error.
pub const DOWNLOAD_PROTOCOL_VERSION: u32 = 1;

const DOWNLOAD_CHUNK_HEADER_LEN: usize = 1 + 8 + 8;

const VIDEO_HEADER_LEN: usize = 1 + 1 + 8;
const FLAG_KEYFRAME: u8 = 0x01;

/// Error returned by every decoder in this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("frame tag {0:#04x} is not valid in this direction")]
    WrongDirection(u8),
    #[error("video frame header is truncated ({0} bytes)")]
    TruncatedVideoHeader(usize),
    #[error("video frame has unknown flag bits {0:#04x}")]
    UnknownVideoFlags(u8),
    #[error("video frame has no payload")]
    EmptyVideoPayload,
    #[error("download chunk header is truncated ({0} bytes)")]
    TruncatedChunkHeader(usize),
    #[error("download chunk has no data")]
    EmptyChunk,
    #[error("invalid control message: {0}")]
    InvalidJson(String),
    #[error("invalid value in control message: {0}")]
    InvalidValue(String),
}

/// A secret string: zeroized on drop, redacted in `Debug`, never `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(transparent)]
#[zeroize(drop)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Returns the secret value. Callers must not log or persist it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// The per-session secret with which the broker authenticates to the agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(transparent)]
#[zeroize(drop)]
pub struct SessionSecret(SecretString);

impl SessionSecret {
    /// Minimum secret length in bytes. The broker should generate 32 random bytes and
    /// hex-encode them (64 characters).
    pub const MIN_LEN: usize = 32;

    pub fn new(value: String) -> Self {
        Self(SecretString(value))
    }

    /// Returns the lower-case hex SHA-256 of the secret: the only form the container gets.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.expose().as_bytes()))
    }

    /// Checks the secret against an expected SHA-256 (32 raw bytes) in constant time.
    pub fn matches_sha256(&self, expected: &[u8; 32]) -> bool {
        let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(self.0.expose().as_bytes())));
        digest.ct_eq(expected).into()
    }

    /// Returns the secret value. Callers must not log or persist it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

/// Parses a 64-character hex SHA-256 as passed to the agent on its command line.
pub fn parse_sha256_hex(value: &str) -> Result<[u8; 32], DecodeError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value.trim(), &mut out).map_err(|error| {
        DecodeError::InvalidValue(format!("secret hash must be 64 hex characters: {error}"))
    })?;
    Ok(out)
}

/// One encoded video packet.
#[derive(Clone, PartialEq, Eq)]
pub struct VideoPacket {
    /// Presentation time in microseconds since the stream started.
    pub pts_us: u64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

impl fmt::Debug for VideoPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VideoPacket")
            .field("pts_us", &self.pts_us)
            .field("keyframe", &self.keyframe)
            .field("len", &self.data.len())
            .finish()
    }
}

/// One piece of a downloaded file, sent between its `download_start` and `download_end`.
#[derive(Clone, PartialEq, Eq)]
pub struct DownloadChunk {
    pub download_id: u64,
    /// Position of the first byte of `data` in the file.
    pub offset: u64,
    pub data: Vec<u8>,
}

impl fmt::Debug for DownloadChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadChunk")
            .field("download_id", &self.download_id)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Control messages from the agent to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentControl {
    /// Parameters of the video stream; sent after authentication and whenever they change.
    StreamConfig {
        codec: String,
        width: u32,
        height: u32,
    },
    /// The agent has stopped sending screen frames because credentials are being typed.
    PlaceholderStart { login_id: u64 },
    /// Screen frames resume; a keyframe follows.
    PlaceholderEnd { login_id: u64 },
    /// The main frame of the page navigated.
    UrlChanged { url: String },
    /// Result of one auto-login step.
    LoginStep {
        login_id: u64,
        step: u32,
        outcome: StepOutcome,
    },
    /// Result of a whole auto-login. A failure names the step that failed and its
    /// kind; `reason` is the sentence for logs and the audit trail.
    LoginFinished {
        login_id: u64,
        success: bool,
        reason: Option<String>,
        /// Index of the step that failed; `None` on success or when no step ran.
        #[serde(default)]
        failed_step: Option<u32>,
        /// Kind of failure; `None` on success.
        #[serde(default)]
        failure: Option<LoginFailure>,
    },
    /// Chromium exited; the agent exits nonzero after sending this.
    BrowserExited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Text that a program in the workspace put on the X clipboard (`CLIPBOARD`
    /// selection). The broker passes it on only where the site's policy allows copying
    /// out of the session.
    ClipboardChanged { text: String },
    /// A finished download follows as chunk frames of `size` bytes in total, then
    /// [`AgentControl::DownloadEnd`]. `name` is the name Chromium suggested; the broker
    /// cleans it again.
    DownloadStart {
        version: u32,
        download_id: u64,
        name: String,
        size: u64,
    },
    /// Every chunk of the download was sent; `sha256` is the lower-case hex SHA-256 of
    /// the whole file.
    DownloadEnd { download_id: u64, sha256: String },
    /// The agent did not send a download, for example because it exceeds the size cap.
    /// `size` is the size known when it stopped (`None` when unknown).
    DownloadRefused {
        name: String,
        size: Option<u64>,
        reason: String,
    },
    /// An error the agent handled; the session may continue.
    Error { message: String },
}

/// Outcome of one auto-login step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepOutcome {
    Ok,
    TimedOut,
    Failed {
        reason: String,
    },
    /// The target frame's origin is not allowed for the credential; nothing was typed.
    OriginRejected {
        origin: String,
    },
    /// The site rejected the submitted sign-in details while this step waited.
    Rejected {
        reason: String,
    },
}

/// Kind of an auto-login failure, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    /// A step's element or condition did not appear within its timeout.
    TimedOut,
    /// A step could not be carried out, or the credential could not be typed.
    Failed,
    /// A field's frame had an origin the credential may not be typed into.
    OriginRejected,
    /// The site rejected the submitted sign-in details: it showed its login form
    /// again. Retrying with the same details would count toward the bank's lockout.
    Rejected,
}

impl LoginFailure {
    /// Returns the code that the audit trail stores, such as `rejected`.
    pub fn code(self) -> &'static str {
        match self {
            LoginFailure::TimedOut => "timed_out",
            LoginFailure::Failed => "failed",
            LoginFailure::OriginRejected => "origin_rejected",
            LoginFailure::Rejected => "rejected",
        }
    }
}

/// Everything the agent sends to the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    Video(VideoPacket),
    Control(AgentControl),
    DownloadChunk(DownloadChunk),
}

/// Messages from the broker to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerMessage {
    /// First message on every connection.
    Auth { secret: SessionSecret },
    /// A key went down or up in the viewer.
    Key(KeyEvent),
    /// Pointer moved to screen coordinates in pixels.
    MouseMove { x: u32, y: u32 },
    /// A mouse button went down or up at screen coordinates in pixels.
    MouseButton {
        button: MouseButton,
        pressed: bool,
        x: u32,
        y: u32,
    },
    /// Wheel deltas in CSS pixels (positive `delta_y` scrolls down).
    Wheel {
        x: u32,
        y: u32,
        delta_x: f32,
        delta_y: f32,
    },
    /// The viewer's canvas size in CSS pixels and its device pixel ratio.
    Resize {
        width: u32,
        height: u32,
        device_pixel_ratio: f32,
    },
    /// Put `text` on the workspace's clipboard and press Control+V, as the viewer's
    /// paste. The broker sends it only where the site's policy allows pasting in.
    Paste { text: String },
    /// Encode the next frame as a keyframe.
    RequestKeyframe,
    /// Fill the site's login form with credentials.
    AutoLogin(AutoLogin),
    /// End the session: the agent stops Chromium and exits with status 0.
    End,
}

/// A keyboard event as the browser reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEvent {
    /// `KeyboardEvent.code`: the physical key, for example `KeyA`, `Enter`, `ShiftLeft`.
    pub code: String,
    /// `KeyboardEvent.key`: the character the viewer's layout produced (`é`, `€`) or the
    /// key's name (`Enter`).
    pub key: String,
    pub pressed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MouseButton {
    Left,
    Middle,
    Right,
}

/// An auto-login command: the recipe and the credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoLogin {
    /// Identifier echoed in every result message.
    pub login_id: u64,
    pub steps: Vec<LoginStep>,
    pub credentials: Credentials,
    /// Origins (`https://bank.example`) into whose frames each credential may be typed.
    pub allowed_origins: AllowedOrigins,
}

/// The secret values of a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: SecretString,
    pub password: SecretString,
    /// The current one-time code, computed by the broker.
    #[serde(default)]
    pub totp: Option<SecretString>,
}

/// Allowed frame origins per credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedOrigins {
    pub username: Vec<String>,
    pub password: Vec<String>,
    #[serde(default)]
    pub totp: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialField {
    Username,
    Password,
    Totp,
}

/// One step of a login recipe. Every step has its own timeout in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoginStep {
    /// Wait until `selector` matches an element in the main frame.
    WaitForSelector { selector: String, timeout_ms: u32 },
    /// Focus the element matching `selector` and type a credential into it.
    Fill {
        selector: String,
        field: CredentialField,
        timeout_ms: u32,
    },
    /// Click the element matching `selector`.
    Click { selector: String, timeout_ms: u32 },
    /// Wait until the main frame's URL starts with `url_prefix` or `selector` matches;
    /// at least one of them must be set.
    WaitForSuccess {
        url_prefix: Option<String>,
        selector: Option<String>,
        timeout_ms: u32,
    },
}

impl LoginStep {
    pub fn timeout_ms(&self) -> u32 {
        match self {
            LoginStep::WaitForSelector { timeout_ms, .. }
            | LoginStep::Fill { timeout_ms, .. }
            | LoginStep::Click { timeout_ms, .. }
            | LoginStep::WaitForSuccess { timeout_ms, .. } => *timeout_ms,
        }
    }
}

impl Credentials {
    pub fn get(&self, field: CredentialField) -> Option<&SecretString> {
        match field {
            CredentialField::Username => Some(&self.username),
            CredentialField::Password => Some(&self.password),
            CredentialField::Totp => self.totp.as_ref(),
        }
    }
}

impl AllowedOrigins {
    pub fn get(&self, field: CredentialField) -> &[String] {
        match field {
            CredentialField::Username => &self.username,
            CredentialField::Password => &self.password,
            CredentialField::Totp => &self.totp,
        }
    }
}

/// Encodes a video packet frame.
pub fn encode_video(packet: &VideoPacket) -> Vec<u8> {
    let mut out = Vec::with_capacity(VIDEO_HEADER_LEN + packet.data.len());
    out.push(TAG_VIDEO);
    out.push(if packet.keyframe { FLAG_KEYFRAME } else { 0 });
    out.extend_from_slice(&packet.pts_us.to_le_bytes());
    out.extend_from_slice(&packet.data);
    out
}

/// Encodes a download chunk frame.
pub fn encode_download_chunk(chunk: &DownloadChunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOWNLOAD_CHUNK_HEADER_LEN + chunk.data.len());
    out.push(TAG_DOWNLOAD_CHUNK);
    out.extend_from_slice(&chunk.download_id.to_le_bytes());
    out.extend_from_slice(&chunk.offset.to_le_bytes());
    out.extend_from_slice(&chunk.data);
    out
}

/// Encodes an agent control frame.
pub fn encode_agent_control(message: &AgentControl) -> Vec<u8> {
    encode_control(message)
}

/// Encodes any agent message.
pub fn encode_agent_message(message: &AgentMessage) -> Vec<u8> {
    match message {
        AgentMessage::Video(packet) => encode_video(packet),
        AgentMessage::Control(control) => encode_control(control),
        AgentMessage::DownloadChunk(chunk) => encode_download_chunk(chunk),
    }
}

/// Encodes a broker message. The returned buffer contains credentials for
/// [`BrokerMessage::AutoLogin`] and [`BrokerMessage::Auth`], so it zeroizes on drop.
pub fn encode_broker_message(message: &BrokerMessage) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(encode_control(message))
}

fn encode_control<T: Serialize>(message: &T) -> Vec<u8> {
    let mut out = vec![TAG_CONTROL];
    // INVARIANT: serializing these types to JSON cannot fail: every map key is a string
    // and no custom Serialize implementation returns an error. Non-finite floats become
    // `null`, which the decoder then rejects.
    serde_json::to_writer(&mut out, message).expect("control messages serialize to JSON");
    out
}

/// Decodes one agent → broker frame.
pub fn decode_agent_message(frame: &[u8]) -> Result<AgentMessage, DecodeError> {
    check_len(frame, MAX_AGENT_FRAME_LEN)?;
    match frame[0] {
        TAG_VIDEO => decode_video(frame).map(AgentMessage::Video),
        TAG_CONTROL => {
            let control: AgentControl = decode_json(&frame[1..])?;
            validate_agent_control(&control)?;
            Ok(AgentMessage::Control(control))
        }
        TAG_DOWNLOAD_CHUNK => decode_download_chunk(frame).map(AgentMessage::DownloadChunk),
        tag => Err(DecodeError::UnknownTag(tag)),
    }
}

/// Decodes one broker → agent frame.
pub fn decode_broker_message(frame: &[u8]) -> Result<BrokerMessage, DecodeError> {
    check_len(frame, MAX_BROKER_FRAME_LEN)?;
    match frame[0] {
        TAG_CONTROL => {
            let message: BrokerMessage = decode_json(&frame[1..])?;
            validate_broker_message(&message)?;
            Ok(message)
        }
        TAG_VIDEO | TAG_DOWNLOAD_CHUNK => Err(DecodeError::WrongDirection(frame[0])),
        tag => Err(DecodeError::UnknownTag(tag)),
    }
}

fn check_len(frame: &[u8], max: usize) -> Result<(), DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    if frame.len() > max {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            max,
        });
    }
    Ok(())
}

fn decode_video(frame: &[u8]) -> Result<VideoPacket, DecodeError> {
    if frame.len() < VIDEO_HEADER_LEN {
        return Err(DecodeError::TruncatedVideoHeader(frame.len()));
    }
    let flags = frame[1];
    if flags & !FLAG_KEYFRAME != 0 {
        return Err(DecodeError::UnknownVideoFlags(flags));
    }
    let mut pts = [0u8; 8];
    pts.copy_from_slice(&frame[2..VIDEO_HEADER_LEN]);
    let data = &frame[VIDEO_HEADER_LEN..];
    if data.is_empty() {
        return Err(DecodeError::EmptyVideoPayload);
    }
    Ok(VideoPacket {
        pts_us: u64::from_le_bytes(pts),
        keyframe: flags & FLAG_KEYFRAME != 0,
        data: data.to_vec(),
    })
}

fn decode_download_chunk(frame: &[u8]) -> Result<DownloadChunk, DecodeError> {
    if frame.len() < DOWNLOAD_CHUNK_HEADER_LEN {
        return Err(DecodeError::TruncatedChunkHeader(frame.len()));
    }
    let data = &frame[DOWNLOAD_CHUNK_HEADER_LEN..];
    if data.is_empty() {
        return Err(DecodeError::EmptyChunk);
    }
    if data.len() > limits::MAX_DOWNLOAD_CHUNK_LEN {
        return Err(invalid(format!(
            "download chunk of {} bytes exceeds {}",
            data.len(),
            limits::MAX_DOWNLOAD_CHUNK_LEN
        )));
    }
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&frame[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    Ok(DownloadChunk {
        download_id: word(1),
        offset: word(9),
        data: data.to_vec(),
    })
}

fn decode_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, DecodeError> {
    // serde_json limits nesting to 128 levels, so hostile input cannot exhaust the stack.
    // The error text names a position and an expected token, never the input's content.
    serde_json::from_slice(body).map_err(|error| DecodeError::InvalidJson(error.to_string()))
}

fn invalid(message: impl Into<String>) -> DecodeError {
    DecodeError::InvalidValue(message.into())
}

fn check_string(name: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(invalid(format!(
            "{name} is {} bytes, maximum {max}",
            value.len()
        )));
    }
    Ok(())
}

fn check_dimension(name: &str, value: u32) -> Result<(), DecodeError> {
    if !(limits::MIN_DIMENSION..=limits::MAX_DIMENSION).contains(&value) {
        return Err(invalid(format!(
            "{name} {value} is outside {}..={}",
            limits::MIN_DIMENSION,
            limits::MAX_DIMENSION
        )));
    }
    Ok(())
}

fn check_coordinate(name: &str, value: u32) -> Result<(), DecodeError> {
    if value > limits::MAX_DIMENSION {
        return Err(invalid(format!(
            "{name} {value} exceeds {}",
            limits::MAX_DIMENSION
        )));
    }
    Ok(())
}

/// Checks clipboard text: at most [`limits::MAX_CLIPBOARD_LEN`] bytes and not empty.
pub fn check_clipboard_text(text: &str) -> Result<(), DecodeError> {
    if text.is_empty() {
        return Err(invalid("clipboard text is empty"));
    }
    check_string("clipboard text", text, limits::MAX_CLIPBOARD_LEN)
}

fn validate_agent_control(message: &AgentControl) -> Result<(), DecodeError> {
    match message {
        AgentControl::StreamConfig {
            codec,
            width,
            height,
        } => {
            if codec != "vp8" {
                return Err(invalid("codec must be \"vp8\""));
            }
            check_dimension("width", *width)?;
            check_dimension("height", *height)
        }
        AgentControl::PlaceholderStart { .. } | AgentControl::PlaceholderEnd { .. } => Ok(()),
        AgentControl::UrlChanged { url } => check_string("url", url, limits::MAX_STRING_LEN),
        AgentControl::LoginStep { step, outcome, .. } => {
            if *step as usize >= limits::MAX_LOGIN_STEPS {
                return Err(invalid(format!("step index {step} is out of range")));
            }
            match outcome {
                StepOutcome::Ok | StepOutcome::TimedOut => Ok(()),
                StepOutcome::Failed { reason } | StepOutcome::Rejected { reason } => {
                    check_string("reason", reason, limits::MAX_MESSAGE_LEN)
                }
                StepOutcome::OriginRejected { origin } => {
                    check_string("origin", origin, limits::MAX_STRING_LEN)
                }
            }
        }
        AgentControl::LoginFinished { reason, .. } => match reason {
            Some(reason) => check_string("reason", reason, limits::MAX_MESSAGE_LEN),
            None => Ok(()),
        },
        AgentControl::BrowserExited { .. } => Ok(()),
        AgentControl::ClipboardChanged { text } => check_clipboard_text(text),
        AgentControl::DownloadStart {
            version,
            name,
            size,
            ..
        } => {
            if *version != DOWNLOAD_PROTOCOL_VERSION {
                return Err(invalid(format!(
                    "download protocol version {version} is not supported; this build speaks {DOWNLOAD_PROTOCOL_VERSION}"
                )));
            }
            check_file_name(name)?;
            if *size > limits::MAX_DOWNLOAD_SIZE {
                return Err(invalid(format!(
                    "download size {size} exceeds {}",
                    limits::MAX_DOWNLOAD_SIZE
                )));
            }
            Ok(())
        }
        AgentControl::DownloadEnd { sha256, .. } => {
            if sha256.len() != 64
                || !sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid("sha256 must be 64 lower-case hex digits"));
            }
            Ok(())
        }
        AgentControl::DownloadRefused { name, reason, .. } => {
            check_string("name", name, limits::MAX_FILE_NAME_LEN)?;
            check_string("reason", reason, limits::MAX_MESSAGE_LEN)
        }
        AgentControl::Error { message } => {
            check_string("message", message, limits::MAX_MESSAGE_LEN)
        }
    }
}

/// Checks a file name as sent: 1 to [`limits::MAX_FILE_NAME_LEN`] bytes. The broker
/// strips paths and control characters itself, so this only bounds the size.
fn check_file_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(invalid("file name is empty"));
    }
    check_string("file name", name, limits::MAX_FILE_NAME_LEN)
}

fn validate_broker_message(message: &BrokerMessage) -> Result<(), DecodeError> {
    match message {
        BrokerMessage::Auth { secret } => {
            if secret.expose().len() < SessionSecret::MIN_LEN
                || secret.expose().len() > limits::MAX_STRING_LEN
            {
                return Err(invalid("session secret has an invalid length"));
            }
            Ok(())
        }
        BrokerMessage::Key(event) => {
            check_string("code", &event.code, 64)?;
            check_string("key", &event.key, 64)
        }
        BrokerMessage::MouseMove { x, y } | BrokerMessage::MouseButton { x, y, .. } => {
            check_coordinate("x", *x)?;
            check_coordinate("y", *y)
        }
        BrokerMessage::Wheel {
            x,
            y,
            delta_x,
            delta_y,
        } => {
            check_coordinate("x", *x)?;
            check_coordinate("y", *y)?;
            for (name, delta) in [("delta_x", delta_x), ("delta_y", delta_y)] {
                if !delta.is_finite() || delta.abs() > limits::MAX_WHEEL_DELTA {
                    return Err(invalid(format!(
                        "{name} must be finite and at most {}",
                        limits::MAX_WHEEL_DELTA
                    )));
                }
            }
            Ok(())
        }
        BrokerMessage::Resize {
            width,
            height,
            device_pixel_ratio,
        } => {
            check_dimension("width", *width)?;
            check_dimension("height", *height)?;
            if !device_pixel_ratio.is_finite()
                || *device_pixel_ratio <= 0.0
                || *device_pixel_ratio > limits::MAX_DEVICE_PIXEL_RATIO
            {
                return Err(invalid(format!(
                    "device_pixel_ratio must be in (0, {}]",
                    limits::MAX_DEVICE_PIXEL_RATIO
                )));
            }
            Ok(())
        }
        BrokerMessage::Paste { text } => check_clipboard_text(text),
        BrokerMessage::RequestKeyframe | BrokerMessage::End => Ok(()),
        BrokerMessage::AutoLogin(login) => validate_auto_login(login),
    }
}

fn validate_auto_login(login: &AutoLogin) -> Result<(), DecodeError> {
    if login.steps.is_empty() || login.steps.len() > limits::MAX_LOGIN_STEPS {
        return Err(invalid(format!(
            "a login needs 1..={} steps",
            limits::MAX_LOGIN_STEPS
        )));
    }
    for step in &login.steps {
        let timeout = step.timeout_ms();
        if timeout == 0 || timeout > limits::MAX_STEP_TIMEOUT_MS {
            return Err(invalid(format!(
                "step timeout must be in 1..={} ms",
                limits::MAX_STEP_TIMEOUT_MS
            )));
        }
        match step {
            LoginStep::WaitForSelector { selector, .. }
            | LoginStep::Click { selector, .. }
            | LoginStep::Fill { selector, .. } => {
                check_string("selector", selector, limits::MAX_STRING_LEN)?
            }
            LoginStep::WaitForSuccess {
                url_prefix,
                selector,
                ..
            } => {
                if url_prefix.is_none() && selector.is_none() {
                    return Err(invalid("wait_for_success needs url_prefix or selector"));
                }
                for value in [url_prefix, selector].into_iter().flatten() {
                    check_string("success condition", value, limits::MAX_STRING_LEN)?;
                }
            }
        }
        if let LoginStep::Fill { field, .. } = step
            && login.credentials.get(*field).is_none()
        {
            return Err(invalid(format!(
                "a fill step needs the {field:?} credential"
            )));
        }
    }
    for field in [
        CredentialField::Username,
        CredentialField::Password,
        CredentialField::Totp,
    ] {
        if let Some(value) = login.credentials.get(field)
            && value.len() > limits::MAX_CREDENTIAL_LEN
        {
            return Err(invalid(format!(
                "{field:?} exceeds {} bytes",
                limits::MAX_CREDENTIAL_LEN
            )));
        }
        let origins = login.allowed_origins.get(field);
        if origins.len() > limits::MAX_ORIGINS {
            return Err(invalid(format!(
                "more than {} origins for {field:?}",
                limits::MAX_ORIGINS
            )));
        }
        for origin in origins {
            check_string("origin", origin, limits::MAX_STRING_LEN)?;
        }
    }
    Ok(())
}

/// Checks that a credential value can be typed and returns the reason when it cannot.
/// The agent runs this check before typing anything.
///
/// A line break would submit a form early or split the value across fields. Other
/// control characters cannot be typed as text.
pub fn check_credential_typeable(value: &SecretString) -> Result<(), &'static str> {
    if value.expose().chars().any(|c| c == '\n' || c == '\r') {
        return Err("contains a line break");
    }
    if value.expose().chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
