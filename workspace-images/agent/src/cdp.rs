//! Chrome DevTools Protocol client over `--remote-debugging-pipe`.
//!
//! Chromium reads commands from its fd 3 and writes responses and events to its fd 4,
//! one JSON object per message, each terminated by a NUL byte. No TCP port is opened.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, broadcast, oneshot};
use zeroize::Zeroizing;

/// Maximum size of one message from Chromium; Chromium is as untrusted as the page.
const MAX_MESSAGE_LEN: usize = 32 * 1024 * 1024;
/// Time limit for one command's response.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("CDP command {method} failed: {message}")]
    Command { method: String, message: String },
    #[error("CDP command {0} timed out")]
    Timeout(String),
    #[error("the CDP pipe is closed")]
    Closed,
    #[error("writing to the CDP pipe failed: {0}")]
    Io(#[from] std::io::Error),
}

/// An event from Chromium.
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;

pub struct Cdp {
    writer: Mutex<pipe::Sender>,
    pending: Arc<std::sync::Mutex<Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
}

#[derive(Serialize)]
struct Command<'a, P: Serialize> {
    id: u64,
    method: &'a str,
    params: P,
    #[serde(rename = "sessionId", skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
}

impl Cdp {
    /// Starts the reader task on `from_browser`. The task ends when Chromium closes the
    /// pipe, which fails every pending command.
    pub fn start(
        to_browser: pipe::Sender,
        from_browser: pipe::Receiver,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (events, _) = broadcast::channel(1024);
        let cdp = Arc::new(Self {
            writer: Mutex::new(to_browser),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        });
        let pending = cdp.pending.clone();
        let reader = tokio::spawn(read_loop(from_browser, pending, events));
        (cdp, reader)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends a command and waits for its result. The serialized command is zeroized after
    /// writing because parameters may contain credentials.
    pub async fn call<P: Serialize>(
        &self,
        method: &str,
        params: P,
        session_id: Option<&str>,
    ) -> Result<Value, CdpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(
            &mut *bytes,
            &Command {
                id,
                method,
                params,
                session_id,
            },
        )
        .map_err(|error| CdpError::Command {
            method: method.into(),
            message: error.to_string(),
        })?;
        bytes.push(0);

        let (sender, receiver) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, sender);
        {
            let mut writer = self.writer.lock().await;
            writer.write_all(&bytes).await?;
            writer.flush().await?;
        }
        drop(bytes);

        let outcome = tokio::time::timeout(COMMAND_TIMEOUT, receiver).await;
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        match outcome {
            Err(_) => Err(CdpError::Timeout(method.into())),
            Ok(Err(_)) => Err(CdpError::Closed),
            Ok(Ok(Err(message))) => Err(CdpError::Command {
                method: method.into(),
                message,
            }),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }
}

async fn read_loop(
    mut from_browser: pipe::Receiver,
    pending: Arc<std::sync::Mutex<Pending>>,
    events: broadcast::Sender<Event>,
) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match from_browser.read(&mut chunk).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(error = %error, "Reading the CDP pipe failed");
                break;
            }
        };
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(end) = buffer.iter().position(|&byte| byte == 0) {
            let message: Vec<u8> = buffer.drain(..=end).collect();
            dispatch(&message[..end], &pending, &events);
        }
        if buffer.len() > MAX_MESSAGE_LEN {
            tracing::error!(
                len = buffer.len(),
                "CDP message exceeds the maximum size; closing the pipe"
            );
            break;
        }
    }
    // Dropping the senders fails every waiting command with `Closed`.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

fn dispatch(
    message: &[u8],
    pending: &std::sync::Mutex<Pending>,
    events: &broadcast::Sender<Event>,
) {
    let Ok(mut value) = serde_json::from_slice::<Value>(message) else {
        tracing::warn!(
            len = message.len(),
            "Ignoring a CDP message that is not JSON"
        );
        return;
    };
    if let Some(id) = value.get("id").and_then(Value::as_u64) {
        let sender = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(sender) = sender {
            let outcome = match value.get("error") {
                Some(error) => Err(error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned()),
                None => Ok(value
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or(Value::Null)),
            };
            let _ = sender.send(outcome);
        }
        return;
    }
    if let Some(method) = value.get("method").and_then(Value::as_str) {
        let _ = events.send(Event {
            method: method.to_owned(),
            session_id: value
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            params: value
                .get_mut("params")
                .map(Value::take)
                .unwrap_or(Value::Null),
        });
    }
}
