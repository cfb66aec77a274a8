//! Copying bytes both ways between the workspace and the upstream server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::bandwidth::Bandwidth;
use crate::events::CloseCause;

/// Size of each direction's copy buffer.
const COPY_BUFFER: usize = 16 * 1024;

/// Byte counts and last activity of one tunnel, readable while it runs.
#[derive(Debug)]
pub(crate) struct Traffic {
    started: Instant,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Milliseconds from `started` to the last read of at least one byte.
    last_activity_ms: AtomicU64,
}

impl Traffic {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.fetch_max(now, Ordering::AcqRel);
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Acquire))
    }
}

/// Copies `client` to `upstream` and back until both directions end, one fails, or
/// neither side sends a byte for `idle_timeout`. Each direction runs on its own, so a
/// side that stops reading never stalls the other direction. With `bandwidth`, each
/// chunk waits for its bytes in that bucket before it is written.
pub(crate) async fn pump<C, U>(
    client: C,
    upstream: U,
    idle_timeout: Duration,
    traffic: &Traffic,
    bandwidth: Option<&Bandwidth>,
) -> CloseCause
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let outbound = copy_direction(
        client_read,
        upstream_write,
        &traffic.sent,
        traffic,
        bandwidth,
    );
    let inbound = copy_direction(
        upstream_read,
        client_write,
        &traffic.received,
        traffic,
        bandwidth,
    );

    tokio::select! {
        result = async { tokio::try_join!(outbound, inbound) } => match result {
            Ok(_) => CloseCause::Finished,
            Err(error) => {
                tracing::debug!(error = %error, "Tunnel copy failed");
                CloseCause::Error
            }
        },
        () = idle_watchdog(idle_timeout, traffic) => CloseCause::IdleTimeout,
    }
}

async fn copy_direction<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &AtomicU64,
    traffic: &Traffic,
    bandwidth: Option<&Bandwidth>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; COPY_BUFFER];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            // Forward the half-close, so the other side reads end-of-stream in this direction.
            writer.shutdown().await?;
            return Ok(());
        }
        traffic.touch();
        if let Some(bandwidth) = bandwidth {
            bandwidth.consume(read).await;
        }
        writer.write_all(&buffer[..read]).await?;
        counter.fetch_add(read as u64, Ordering::Relaxed);
    }
}

/// Completes once no byte moved in either direction for `idle_timeout`.
async fn idle_watchdog(idle_timeout: Duration, traffic: &Traffic) {
    loop {
        let deadline = traffic.last_activity() + idle_timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
