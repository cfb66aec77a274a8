//! Screen size changes through RandR, and top-level windows that follow them.
//!
//! Xvfb (xorg-server 21.1.7 in Debian 12) offers RandR 1.2 with one output and one
//! CRTC, and accepts any screen size from 1x1 up to the size it was started with. The
//! agent therefore starts Xvfb at its largest size ([`MaxSize`]) and sets the size the
//! viewer needs. It adds a mode of that size to the output, turns the CRTC off, sets
//! the screen size and turns the CRTC on with the new mode. Xvfb keeps the memory of
//! the largest framebuffer reserved, but only the part in use is ever written.
//!
//! Chromium runs without a window manager, so nothing resizes its window when the
//! screen changes: [`fit_top_level_windows`] configures every mapped top-level window
//! to cover the new screen, as a window manager would for a full-screen window.

use anyhow::{Context, bail};
use x11rb::connection::Connection;
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{ConfigureWindowAux, ConnectionExt as _, MapState, Window};

/// Screen density used to report the screen's size in millimetres (96 dots per inch).
const DOTS_PER_INCH: u32 = 96;

/// The largest screen Xvfb is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxSize {
    pub width: u32,
    pub height: u32,
}

/// Returns the screen size the agent uses for a requested size: both sides rounded
/// down to an even number (the encoder's I420 format halves them) and clamped to
/// `min..=max`.
pub fn fit_size(width: u32, height: u32, min: u32, max: MaxSize) -> (u32, u32) {
    let fit = |value: u32, max: u32| (value.clamp(min, max.max(min))) & !1;
    (fit(width, max.width), fit(height, max.height))
}

/// Largest device pixel ratio the screen follows. A screen at ratio `r` has `r²` times
/// the pixels to capture and encode, so a viewer at ratio 3 gets a ratio-2 picture.
pub const MAX_SCREEN_RATIO: f64 = 2.0;

/// The screen for a viewer: its size in pixels and the device scale factor Chromium
/// draws pages at, so that pages lay out at the viewer's size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScreenTarget {
    pub width: u32,
    pub height: u32,
    pub device_scale_factor: f64,
}

/// Returns the screen for a viewer's resize request of `width`x`height` CSS pixels at
/// `device_pixel_ratio`.
///
/// The ratio is clamped to 1..=[`MAX_SCREEN_RATIO`], and lowered further so that the
/// screen fits `max`. The screen gets the CSS size times that ratio, and Chromium draws
/// every page at that device scale factor ([`crate::scale`]). At ratio 2 a page has
/// `innerWidth` equal to the viewer's width and `devicePixelRatio` 2, text is drawn
/// with twice the pixels, and the viewer shows the picture without scaling it up. Such
/// a screen has 4 times the pixels of a ratio-1 screen to capture, encode and record.
pub fn resize_target(
    width: u32,
    height: u32,
    device_pixel_ratio: f32,
    min: u32,
    max: MaxSize,
) -> ScreenTarget {
    let (css_width, css_height) = fit_size(width, height, min, max);
    let requested = f64::from(device_pixel_ratio);
    let requested = if requested.is_finite() {
        requested
    } else {
        1.0
    };
    let ratio = requested
        .min(MAX_SCREEN_RATIO)
        .min(f64::from(max.width) / f64::from(css_width))
        .min(f64::from(max.height) / f64::from(css_height))
        .max(1.0);
    let scaled = |side: u32| (f64::from(side) * ratio).round() as u32;
    let (width, height) = fit_size(scaled(css_width), scaled(css_height), min, max);
    ScreenTarget {
        width,
        height,
        device_scale_factor: ratio,
    }
}

/// Sets the size of the screen of `root` to `width`x`height` pixels. Returns early
/// when the screen has that size already.
pub fn set_screen_size(
    conn: &impl Connection,
    root: Window,
    width: u32,
    height: u32,
) -> anyhow::Result<()> {
    if conn
        .extension_information(randr::X11_EXTENSION_NAME)?
        .is_none()
    {
        bail!("the X server has no RandR extension; start Xvfb with +extension RANDR");
    }
    let version = conn.randr_query_version(1, 2)?.reply()?;
    if (version.major_version, version.minor_version) < (1, 2) {
        bail!(
            "RandR {}.{} cannot set the screen size; 1.2 is needed",
            version.major_version,
            version.minor_version
        );
    }
    let range = conn.randr_get_screen_size_range(root)?.reply()?;
    if width > u32::from(range.max_width) || height > u32::from(range.max_height) {
        bail!(
            "screen size {width}x{height} exceeds the X server's maximum {}x{}",
            range.max_width,
            range.max_height
        );
    }
    let (width16, height16) = (width as u16, height as u16);

    let resources = conn.randr_get_screen_resources(root)?.reply()?;
    let (&crtc, &output) = resources
        .crtcs
        .first()
        .zip(resources.outputs.first())
        .context("the X server's RandR has no CRTC or output")?;
    let crtc_info = conn
        .randr_get_crtc_info(crtc, resources.config_timestamp)?
        .reply()?;
    let current = resources
        .modes
        .iter()
        .find(|mode| mode.id == crtc_info.mode);
    let geometry = conn.get_geometry(root)?.reply()?;
    if current.is_some_and(|mode| (mode.width, mode.height) == (width16, height16))
        && (geometry.width, geometry.height) == (width16, height16)
    {
        return Ok(());
    }

    let mode = match resources
        .modes
        .iter()
        .find(|mode| (mode.width, mode.height) == (width16, height16))
    {
        Some(mode) => mode.id,
        None => {
            let name = format!("{width}x{height}");
            let info = randr::ModeInfo {
                id: 0,
                width: width16,
                height: height16,
                dot_clock: width * height * 60,
                hsync_start: width16,
                hsync_end: width16,
                htotal: width16,
                hskew: 0,
                vsync_start: height16,
                vsync_end: height16,
                vtotal: height16,
                name_len: name.len() as u16,
                mode_flags: randr::ModeFlag::default(),
            };
            let created = conn
                .randr_create_mode(root, info, name.as_bytes())?
                .reply()
                .with_context(|| format!("creating the RandR mode {name}"))?;
            conn.randr_add_output_mode(output, created.mode)?
                .check()
                .with_context(|| format!("adding the RandR mode {name} to the output"))?;
            created.mode
        }
    };

    // The screen cannot become smaller than the CRTC's mode, so the CRTC is off while
    // the size changes.
    let off = conn
        .randr_set_crtc_config(
            crtc,
            x11rb::CURRENT_TIME,
            resources.config_timestamp,
            0,
            0,
            0,
            randr::Rotation::ROTATE0,
            &[],
        )?
        .reply()
        .context("turning the RandR CRTC off")?;
    check_config_status(off.status, "turning the RandR CRTC off")?;
    let millimetres = |pixels: u32| pixels * 254 / (DOTS_PER_INCH * 10);
    conn.randr_set_screen_size(
        root,
        width16,
        height16,
        millimetres(width),
        millimetres(height),
    )?
    .check()
    .with_context(|| format!("setting the screen size to {width}x{height}"))?;
    let on = conn
        .randr_set_crtc_config(
            crtc,
            x11rb::CURRENT_TIME,
            resources.config_timestamp,
            0,
            0,
            mode,
            randr::Rotation::ROTATE0,
            &[output],
        )?
        .reply()
        .with_context(|| format!("switching the RandR CRTC to {width}x{height}"))?;
    check_config_status(on.status, "switching the RandR CRTC to the new mode")?;

    // Modes of earlier sizes that nothing uses any more are removed, so repeated
    // resizes do not grow the server's mode list.
    for old in &resources.modes {
        if old.id != mode && (old.width, old.height) != (width16, height16) {
            let _ = conn.randr_delete_output_mode(output, old.id)?.check();
            let _ = conn.randr_destroy_mode(old.id)?.check();
        }
    }
    Ok(())
}

fn check_config_status(status: randr::SetConfig, step: &str) -> anyhow::Result<()> {
    if status != randr::SetConfig::SUCCESS {
        bail!("{step} failed with RandR status {status:?}");
    }
    Ok(())
}

/// Moves every mapped top-level window to the screen's origin and sizes it to
/// `width`x`height`. Returns how many windows were configured.
pub fn fit_top_level_windows(
    conn: &impl Connection,
    root: Window,
    width: u32,
    height: u32,
) -> anyhow::Result<usize> {
    let tree = conn.query_tree(root)?.reply()?;
    let mut fitted = 0;
    for window in tree.children {
        let Ok(attributes) = conn.get_window_attributes(window)?.reply() else {
            // The window was destroyed meanwhile.
            continue;
        };
        if attributes.map_state != MapState::VIEWABLE || attributes.override_redirect {
            continue;
        }
        let aux = ConfigureWindowAux::new()
            .x(0)
            .y(0)
            .width(width)
            .height(height);
        conn.configure_window(window, &aux)?;
        fitted += 1;
    }
    conn.flush()?;
    Ok(fitted)
}

/// Connects to `display` and sets its screen size; used once before Chromium starts.
pub fn set_initial_size(display: &str, width: u32, height: u32) -> anyhow::Result<()> {
    let (conn, screen_num) = x11rb::connect(Some(display))
        .with_context(|| format!("connecting to X display {display}"))?;
    let root = conn.setup().roots[screen_num].root;
    set_screen_size(&conn, root, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: MaxSize = MaxSize {
        width: 1920,
        height: 1080,
    };

    #[test]
    fn fit_size_rounds_down_to_even() {
        assert_eq!(fit_size(801, 601, 64, MAX), (800, 600));
    }

    #[test]
    fn resize_target_keeps_css_pixels_at_ratio_one_or_less() {
        for ratio in [0.5, 1.0, f32::NAN] {
            let target = resize_target(1200, 800, ratio, 64, MAX);
            assert_eq!((target.width, target.height), (1200, 800), "{ratio}");
            assert_eq!(target.device_scale_factor, 1.0, "{ratio}");
        }
    }

    #[test]
    fn resize_target_scales_the_screen_by_the_ratio() {
        let target = resize_target(800, 500, 1.5, 64, MAX);
        assert_eq!((target.width, target.height), (1200, 750));
        assert_eq!(target.device_scale_factor, 1.5);
    }

    #[test]
    fn resize_target_caps_the_ratio() {
        let capped = resize_target(800, 500, 3.0, 64, MAX);
        assert_eq!((capped.width, capped.height), (1600, 1000));
        assert_eq!(capped.device_scale_factor, MAX_SCREEN_RATIO);

        // 1200x800 at ratio 2 would exceed 1920x1080: the ratio drops to 1.35.
        let fitted = resize_target(1200, 800, 2.0, 64, MAX);
        assert_eq!((fitted.width, fitted.height), (1620, 1080));
        assert_eq!(fitted.device_scale_factor, 1.35);
    }

    #[test]
    fn fit_size_clamps_to_bounds() {
        assert_eq!(fit_size(10, 5000, 64, MAX), (64, 1080));
        assert_eq!(fit_size(4000, 30, 64, MAX), (1920, 64));
    }
}
