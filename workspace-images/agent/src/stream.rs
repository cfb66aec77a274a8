//! The capture and encode loop, run on its own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{AgentControl, VideoPacket};

use crate::capture::Capturer;
use crate::encoder::{EncoderConfig, Vp8Encoder};
use crate::hub::Hub;

#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    pub fps: u32,
    pub bitrate: usize,
    /// Keyframe interval; an unchanged screen is re-sent as a keyframe this often.
    pub keyframe_interval: Duration,
}

/// Counters for the idle-cost check and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamStats {
    pub captures: u64,
    pub encoded: u64,
}

/// Captures the screen at `fps`, encodes frames that changed (and a keyframe when one
/// is due or requested) and hands the packets to the hub, until `stop` is set.
pub fn run(
    display: &str,
    config: StreamConfig,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<StreamStats> {
    let mut capturer = Capturer::connect(display)?;
    let (width, height) = (capturer.width(), capturer.height());
    let interval = Duration::from_micros(1_000_000 / u64::from(config.fps.max(1)));
    let keyframe_frames = (config.keyframe_interval.as_secs_f64() * f64::from(config.fps))
        .ceil()
        .max(1.0) as u32;
    let encoder_config = |width, height| EncoderConfig {
        width,
        height,
        bitrate: config.bitrate,
        keyframe_interval: keyframe_frames,
    };
    let mut encoder = Vp8Encoder::new(encoder_config(width, height))?;
    hub.set_stream(width, height);
    tracing::info!(
        width,
        height,
        fps = config.fps,
        shm = capturer.uses_shm(),
        "Screen capture started"
    );

    let started = Instant::now();
    let mut previous: Vec<u8> = Vec::new();
    let mut last_keyframe: Option<Instant> = None;
    let mut stats = StreamStats::default();
    let mut next_tick = Instant::now();

    while !stop.load(Ordering::SeqCst) {
        next_tick += interval;
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else {
            next_tick = now;
        }

        // A resize waits while credentials are typed, because it would move the fields.
        if !hub.placeholder_active()
            && let Some((width, height)) = hub.take_resize_request()
            && (width, height) != (capturer.width(), capturer.height())
        {
            if let Err(error) = capturer.resize(width, height) {
                tracing::warn!(error = %format!("{error:#}"), width, height, "Resizing the screen failed");
                hub.send_control(&AgentControl::Error {
                    message: format!("resizing the screen to {width}x{height} failed: {error:#}"),
                });
            }
            let size = (capturer.width(), capturer.height());
            if size != encoder.size() {
                // The new encoder starts with a keyframe; the stream configuration goes
                // out first, so the broker and viewers expect the new size.
                encoder = Vp8Encoder::new(encoder_config(size.0, size.1))?;
                hub.set_stream(size.0, size.1);
                hub.request_keyframe();
                previous.clear();
                tracing::info!(width = size.0, height = size.1, "Screen resized");
            }
        }

        // Nothing is encoded while a placeholder is active or nobody is connected; the
        // first frame afterwards is a keyframe.
        if hub.placeholder_active() || !hub.is_attached() {
            previous.clear();
            continue;
        }

        let pixels = capturer.capture().context("capturing the screen")?;
        stats.captures += 1;
        let requested = hub.take_keyframe_request();
        let due = last_keyframe.is_none_or(|at| at.elapsed() >= config.keyframe_interval);
        let changed = previous.as_slice() != pixels;
        if !changed && !requested && !due {
            continue;
        }
        if changed {
            previous.clear();
            previous.extend_from_slice(pixels);
        }

        let pts_us = started.elapsed().as_micros() as u64;
        let force = requested || due;
        for packet in encoder.encode(&previous, pts_us, force)? {
            stats.encoded += 1;
            if packet.keyframe {
                last_keyframe = Some(Instant::now());
            }
            let delivered = hub.send_video(&VideoPacket {
                pts_us: packet.pts_us,
                keyframe: packet.keyframe,
                data: packet.data,
            });
            if !delivered {
                hub.request_keyframe();
            }
        }
    }
    Ok(stats)
}
