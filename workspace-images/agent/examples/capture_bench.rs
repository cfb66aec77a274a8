//! Compares the per-frame cost of the capture loop for an unchanged screen and for a
//! changing one, on a private Xvfb.
//!
//! Run: `cargo run --release -p strongroom-agent --example capture_bench [WIDTH HEIGHT FRAMES]`

use std::time::{Duration, Instant};

use strongroom_agent::capture::Capturer;
use strongroom_agent::encoder::{EncoderConfig, Vp8Encoder};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ChangeGCAux, ConnectionExt as _, CreateGCAux, Rectangle};
use x11rb::wrapper::ConnectionExt as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>());
    let width = args.next().transpose()?.unwrap_or(1280);
    let height = args.next().transpose()?.unwrap_or(720);
    let frames = args.next().transpose()?.unwrap_or(150);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut xvfb = runtime.block_on(strongroom_agent::processes::start_xvfb(
        "/usr/bin/Xvfb".as_ref(),
        width,
        height,
    ))?;

    let (conn, screen_num) = x11rb::connect(Some(&xvfb.display))?;
    let root = conn.setup().roots[screen_num].root;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, root, &CreateGCAux::new().foreground(0x336699))?;
    conn.poly_fill_rectangle(
        root,
        gc,
        &[Rectangle {
            x: 0,
            y: 0,
            width: width as u16,
            height: height as u16,
        }],
    )?;
    conn.flush()?;

    let mut capturer = Capturer::connect(&xvfb.display)?;
    let mut encoder = Vp8Encoder::new(EncoderConfig {
        width,
        height,
        bitrate: 2_000_000,
        keyframe_interval: 45,
    })?;
    let mut previous = capturer.capture()?.to_vec();

    // Unchanged screen: capture and compare, as the agent's loop does on an idle screen.
    let started = Instant::now();
    let mut unchanged_encodes = 0;
    for _ in 0..frames {
        let pixels = capturer.capture()?;
        if pixels != previous.as_slice() {
            unchanged_encodes += 1;
        }
    }
    let idle = started.elapsed() / frames;

    // Changing screen: a moving block each frame, then capture, compare, copy and encode.
    let started = Instant::now();
    let mut bytes = 0usize;
    for frame in 0..frames {
        let colour = 0x101010 * (frame % 15) + 0x0000ff;
        conn.change_gc(gc, &ChangeGCAux::new().foreground(colour))?;
        let x = ((frame * 37) % width.saturating_sub(200).max(1)) as i16;
        let y = ((frame * 23) % height.saturating_sub(200).max(1)) as i16;
        conn.poly_fill_rectangle(
            root,
            gc,
            &[Rectangle {
                x,
                y,
                width: 200,
                height: 200,
            }],
        )?;
        conn.sync()?;
        let pixels = capturer.capture()?;
        if pixels != previous.as_slice() {
            previous.clear();
            previous.extend_from_slice(pixels);
            for packet in encoder.encode(&previous, u64::from(frame) * 66_666, false)? {
                bytes += packet.data.len();
            }
        }
    }
    let busy = started.elapsed() / frames;

    runtime.block_on(strongroom_agent::processes::stop_child(
        &mut xvfb.child,
        Duration::from_secs(2),
    ));
    println!(
        "screen {width}x{height}, {frames} frames, MIT-SHM {}",
        capturer.uses_shm()
    );
    println!(
        "unchanged: {:>8.3} ms/frame (encodes: {unchanged_encodes})",
        idle.as_secs_f64() * 1000.0
    );
    println!(
        "changing:  {:>8.3} ms/frame ({} bytes/frame)",
        busy.as_secs_f64() * 1000.0,
        bytes / frames as usize
    );
    println!(
        "ratio changing/unchanged: {:.1}",
        busy.as_secs_f64() / idle.as_secs_f64()
    );
    Ok(())
}
