//! The broker connection: WebSocket over TCP, authenticated by the session secret.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{AgentControl, BrokerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroize;

use crate::hub::{Hub, OUTBOUND_CAPACITY};
use crate::input::InputCommand;

/// Time a new connection has to complete the handshake and authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum connections that have not authenticated yet.
const MAX_PENDING_CONNECTIONS: usize = 4;

/// What the connection hands to the rest of the agent.
pub struct Handlers {
    pub hub: Arc<Hub>,
    pub secret_sha256: [u8; 32],
    pub input: std::sync::mpsc::Sender<InputCommand>,
    pub login: mpsc::Sender<protocol::AutoLogin>,
    /// The size Xvfb was started with: the largest screen a resize can make.
    pub max_screen: crate::screen::MaxSize,
    /// The device scale factor of every page, which [`crate::scale::run`] applies.
    pub device_scale_factor: tokio::sync::watch::Sender<f64>,
    /// Cancelled when the broker sends `End`.
    pub end: CancellationToken,
}

/// Accepts broker connections until `shutdown` is cancelled, then waits for open
/// connections, which end when the broker closes or [`Hub::close`] is called.
pub async fn serve(listener: TcpListener, handlers: Arc<Handlers>, shutdown: CancellationToken) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "Too many unauthenticated connections; closing");
            continue;
        };
        let handlers = handlers.clone();
        tracker.spawn(async move {
            if let Err(error) = handle(stream, handlers, permit).await {
                tracing::warn!(%peer, error = %format!("{error:#}"), "Broker connection ended with an error");
            } else {
                tracing::info!(%peer, "Broker connection closed");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn handle(
    stream: TcpStream,
    handlers: Arc<Handlers>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(protocol::MAX_BROKER_FRAME_LEN))
        .max_frame_size(Some(protocol::MAX_BROKER_FRAME_LEN));
    let authenticated = tokio::time::timeout(AUTH_TIMEOUT, async {
        let mut socket = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    let decoded = protocol::decode_broker_message(&bytes);
                    zeroize_bytes(bytes);
                    return match decoded {
                        Ok(BrokerMessage::Auth { secret })
                            if secret.matches_sha256(&handlers.secret_sha256) =>
                        {
                            Ok::<_, anyhow::Error>(socket)
                        }
                        Ok(BrokerMessage::Auth { .. }) => {
                            Err(anyhow::anyhow!("wrong session secret"))
                        }
                        Ok(_) => Err(anyhow::anyhow!("the first message was not auth")),
                        Err(error) => Err(anyhow::anyhow!("invalid first message: {error}")),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_)) => anyhow::bail!("the first message was not binary"),
                Some(Err(error)) => return Err(error.into()),
                None => anyhow::bail!("closed before authenticating"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no authentication within {AUTH_TIMEOUT:?}"))??;
    drop(permit);
    tracing::info!("Broker authenticated");

    let (mut sink, mut source) = authenticated.split();
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(OUTBOUND_CAPACITY);
    let connection = handlers.hub.attach(sender);

    let writer = async {
        while let Some(frame) = receiver.recv().await {
            sink.send(Message::Binary(frame.into())).await?;
        }
        let _ = sink.send(Message::Close(None)).await;
        Ok::<_, anyhow::Error>(())
    };
    let reader = async {
        while let Some(message) = source.next().await {
            match message? {
                Message::Binary(bytes) => {
                    let decoded = protocol::decode_broker_message(&bytes);
                    zeroize_bytes(bytes);
                    match decoded {
                        Ok(message) => dispatch(&handlers, message),
                        Err(error) => {
                            tracing::warn!(error = %error, "Rejected a broker message");
                            handlers.hub.send_control(&AgentControl::Error {
                                message: format!("rejected message: {error}"),
                            });
                        }
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    };

    // The writer ends when the hub drops this connection's sender (a newer broker
    // connection replaced it), the reader when the broker closes.
    let result = tokio::select! {
        result = writer => result,
        result = reader => result,
    };
    handlers.hub.detach(connection);
    result
}

/// Zeroizes a received frame when this connection holds its only reference, because
/// auth and auto-login frames contain secrets.
fn zeroize_bytes(bytes: tokio_tungstenite::tungstenite::Bytes) {
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.as_mut().zeroize();
    }
}

fn dispatch(handlers: &Handlers, message: BrokerMessage) {
    let person_input = matches!(
        message,
        BrokerMessage::Key(_)
            | BrokerMessage::MouseMove { .. }
            | BrokerMessage::MouseButton { .. }
            | BrokerMessage::Wheel { .. }
            | BrokerMessage::Paste { .. }
    );
    if person_input && handlers.hub.placeholder_active() {
        return;
    }
    let command = match message {
        BrokerMessage::Auth { .. } => {
            tracing::warn!("Ignoring a repeated auth message");
            return;
        }
        BrokerMessage::Key(event) => InputCommand::Key(event),
        BrokerMessage::MouseMove { x, y } => InputCommand::MouseMove { x, y },
        BrokerMessage::MouseButton {
            button,
            pressed,
            x,
            y,
        } => InputCommand::MouseButton {
            button,
            pressed,
            x,
            y,
        },
        BrokerMessage::Wheel {
            x,
            y,
            delta_x,
            delta_y,
        } => InputCommand::Wheel {
            x,
            y,
            delta_x,
            delta_y,
        },
        BrokerMessage::Resize {
            width,
            height,
            device_pixel_ratio,
        } => {
            let target = crate::screen::resize_target(
                width,
                height,
                device_pixel_ratio,
                protocol::limits::MIN_DIMENSION,
                handlers.max_screen,
            );
            tracing::info!(
                width,
                height,
                device_pixel_ratio,
                screen_width = target.width,
                screen_height = target.height,
                device_scale_factor = target.device_scale_factor,
                "Resize requested"
            );
            handlers.hub.request_resize(target.width, target.height);
            // Resizes at an unchanged ratio leave the pages alone.
            handlers.device_scale_factor.send_if_modified(|factor| {
                let changed = *factor != target.device_scale_factor;
                *factor = target.device_scale_factor;
                changed
            });
            return;
        }
        BrokerMessage::Paste { text } => InputCommand::Paste { text },
        BrokerMessage::RequestKeyframe => {
            handlers.hub.request_keyframe();
            return;
        }
        BrokerMessage::AutoLogin(login) => {
            let login_id = login.login_id;
            if handlers.login.try_send(login).is_err() {
                handlers.hub.send_control(&AgentControl::LoginFinished {
                    login_id,
                    success: false,
                    reason: Some("another auto-login is running and one is queued; retry when a login_finished arrives".into()),
                    failed_step: None,
                    failure: Some(protocol::LoginFailure::Failed),
                });
            }
            return;
        }
        BrokerMessage::End => {
            tracing::info!("Broker ended the session");
            handlers.end.cancel();
            return;
        }
    };
    let _ = handlers.input.send(command);
}
