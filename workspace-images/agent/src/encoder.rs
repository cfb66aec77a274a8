//! VP8 encoding of captured BGRX screens with libvpx through ffmpeg-next.

use anyhow::{Context, anyhow};
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    pub width: u32,
    pub height: u32,
    /// Target bitrate in bits per second.
    pub bitrate: usize,
    /// Maximum distance between keyframes in frames.
    pub keyframe_interval: u32,
}

/// One encoded packet.
pub struct EncodedPacket {
    pub pts_us: u64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// BGRX → I420 conversion followed by VP8 realtime encoding.
pub struct Vp8Encoder {
    encoder: ffmpeg::encoder::Video,
    scaler: scaling::Context,
    source: ffmpeg::frame::Video,
    converted: ffmpeg::frame::Video,
    width: u32,
    height: u32,
}

// SAFETY: the FFmpeg contexts are owned exclusively by this value and used from one
// thread at a time; libavcodec and libswscale contexts have no thread affinity.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    pub fn new(config: EncoderConfig) -> anyhow::Result<Self> {
        ffmpeg::init().context("initialising FFmpeg")?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        let codec = ffmpeg::encoder::find_by_name("libvpx").ok_or_else(|| {
            anyhow!("FFmpeg has no libvpx encoder; install libavcodec with libvpx")
        })?;

        let mut video = ffmpeg::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .context("creating the VP8 encoder context")?;
        video.set_width(config.width);
        video.set_height(config.height);
        video.set_format(Pixel::YUV420P);
        // Timestamps are microseconds.
        video.set_time_base(ffmpeg::Rational(1, 1_000_000));
        video.set_bit_rate(config.bitrate);
        video.set_gop(config.keyframe_interval);
        video.set_max_b_frames(0);

        let mut options = ffmpeg::Dictionary::new();
        options.set("deadline", "realtime");
        options.set("cpu-used", "8");
        options.set("lag-in-frames", "0");
        options.set("auto-alt-ref", "0");
        options.set("error-resilient", "1");
        let encoder = video
            .open_with(options)
            .context("opening the libvpx encoder")?;

        let scaler = scaling::Context::get(
            Pixel::BGRZ,
            config.width,
            config.height,
            Pixel::YUV420P,
            config.width,
            config.height,
            scaling::Flags::POINT,
        )
        .context("creating the BGRX to I420 scaler")?;

        Ok(Self {
            encoder,
            scaler,
            source: ffmpeg::frame::Video::new(Pixel::BGRZ, config.width, config.height),
            converted: ffmpeg::frame::Video::new(Pixel::YUV420P, config.width, config.height),
            width: config.width,
            height: config.height,
        })
    }

    /// Returns the frame size in pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Encodes one BGRX screen (`width * 4` bytes per row) and returns the packets the
    /// encoder produced; with `lag-in-frames 0` that is one packet per frame.
    pub fn encode(
        &mut self,
        bgrx: &[u8],
        pts_us: u64,
        force_keyframe: bool,
    ) -> anyhow::Result<Vec<EncodedPacket>> {
        let row = self.width as usize * 4;
        anyhow::ensure!(
            bgrx.len() >= row * self.height as usize,
            "captured image is smaller than the screen"
        );

        let stride = self.source.stride(0);
        let plane = self.source.data_mut(0);
        for (y, line) in bgrx
            .chunks_exact(row)
            .take(self.height as usize)
            .enumerate()
        {
            plane[y * stride..y * stride + row].copy_from_slice(line);
        }
        self.scaler
            .run(&self.source, &mut self.converted)
            .context("converting BGRX to I420")?;

        let pts = i64::try_from(pts_us).context("timestamp overflow")?;
        self.converted.set_pts(Some(pts));
        // libvpx forces a keyframe when the frame's picture type is I.
        self.converted.set_kind(if force_keyframe {
            ffmpeg::picture::Type::I
        } else {
            ffmpeg::picture::Type::None
        });
        self.encoder
            .send_frame(&self.converted)
            .context("sending a frame to libvpx")?;

        let mut packets = Vec::new();
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            let data = packet.data().map(<[u8]>::to_vec).unwrap_or_default();
            if data.is_empty() {
                continue;
            }
            packets.push(EncodedPacket {
                pts_us: packet.pts().map(|p| p.max(0) as u64).unwrap_or(pts_us),
                keyframe: packet.is_key(),
                data,
            });
        }
        Ok(packets)
    }
}
