//! Screen capture from the X server: MIT-SHM when available, `GetImage` otherwise.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use anyhow::{Context, bail};
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, Window};
use x11rb::rust_connection::RustConnection;

/// Captures the root window as BGRX, 4 bytes per pixel, rows without padding.
pub struct Capturer {
    conn: RustConnection,
    root: Window,
    width: u16,
    height: u16,
    shm: Option<ShmSegment>,
    fallback: Vec<u8>,
}

struct ShmSegment {
    seg: shm::Seg,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only read through `&mut Capturer`.
unsafe impl Send for ShmSegment {}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` come from a successful mmap that nothing else unmaps.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Capturer {
    /// Connects to `display` (for example `:99`) and sets up a shared memory segment.
    pub fn connect(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connecting to X display {display}"))?;
        let screen = &conn.setup().roots[screen_num];
        let root = screen.root;
        if screen.root_depth != 24 {
            bail!(
                "X screen depth is {}, expected 24; start Xvfb with -screen 0 WxHx24",
                screen.root_depth
            );
        }
        // The size in the connection setup is the one Xvfb started with; RandR may have
        // changed it since.
        let geometry = conn.get_geometry(root)?.reply()?;
        let (width, height) = (geometry.width, geometry.height);

        let mut capturer = Self {
            conn,
            root,
            width,
            height,
            shm: None,
            fallback: Vec::new(),
        };
        match capturer.create_shm() {
            Ok(segment) => capturer.shm = Some(segment),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "MIT-SHM unavailable, capturing with GetImage")
            }
        }
        Ok(capturer)
    }

    pub fn width(&self) -> u32 {
        u32::from(self.width)
    }

    pub fn height(&self) -> u32 {
        u32::from(self.height)
    }

    pub fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    /// Sets the screen size through RandR, fits the top-level windows to it and
    /// replaces the shared memory segment with one of the new size. After an error the
    /// capturer still matches the screen, whatever size it has then.
    pub fn resize(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        let result = crate::screen::set_screen_size(&self.conn, self.root, width, height);
        let geometry = self.conn.get_geometry(self.root)?.reply()?;
        if (geometry.width, geometry.height) != (self.width, self.height) {
            if let Some(segment) = self.shm.take() {
                self.conn.shm_detach(segment.seg)?;
            }
            self.width = geometry.width;
            self.height = geometry.height;
            match self.create_shm() {
                Ok(segment) => self.shm = Some(segment),
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "MIT-SHM unavailable, capturing with GetImage")
                }
            }
        }
        result?;

        let windows = crate::screen::fit_top_level_windows(
            &self.conn,
            self.root,
            self.width(),
            self.height(),
        )?;
        tracing::debug!(width, height, windows, "Fitted top-level windows to the screen");
        Ok(())
    }

    fn create_shm(&self) -> anyhow::Result<ShmSegment> {
        if self
            .conn
            .extension_information(shm::X11_EXTENSION_NAME)?
            .is_none()
        {
            bail!("the X server has no MIT-SHM extension");
        }
        let version = self.conn.shm_query_version()?.reply()?;
        if (version.major_version, version.minor_version) < (1, 2) {
            bail!(
                "MIT-SHM {}.{} has no fd passing",
                version.major_version,
                version.minor_version
            );
        }

        let len = usize::from(self.width) * usize::from(self.height) * 4;
        let seg = self.conn.generate_id()?;
        let reply = self
            .conn
            .shm_create_segment(seg, len as u32, false)?
            .reply()?;
        // SAFETY: mapping a fresh shared memory fd of at least `len` bytes read-only.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                reply.shm_fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            self.conn.shm_detach(seg)?;
            bail!(
                "mmap of the MIT-SHM segment failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).context("mmap returned null")?;
        Ok(ShmSegment { seg, ptr, len })
    }

    /// Captures the whole screen and returns its pixels.
    pub fn capture(&mut self) -> anyhow::Result<&[u8]> {
        let expected = usize::from(self.width) * usize::from(self.height) * 4;
        if let Some(segment) = &self.shm {
            self.conn
                .shm_get_image(
                    self.root,
                    0,
                    0,
                    self.width,
                    self.height,
                    !0,
                    ImageFormat::Z_PIXMAP.into(),
                    segment.seg,
                    0,
                )?
                .reply()
                .context("MIT-SHM GetImage")?;
            // SAFETY: the X server has finished writing the segment when the reply arrives,
            // and the mapping is `len == expected` bytes long.
            return Ok(unsafe { std::slice::from_raw_parts(segment.ptr.as_ptr(), segment.len) });
        }

        let image = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                self.width,
                self.height,
                !0,
            )?
            .reply()
            .context("GetImage")?;
        if image.data.len() < expected {
            bail!(
                "GetImage returned {} bytes, expected {expected}",
                image.data.len()
            );
        }
        self.fallback = image.data;
        Ok(&self.fallback[..expected])
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        if let Some(segment) = &self.shm {
            let _ = self.conn.shm_detach(segment.seg);
            let _ = self.conn.flush();
        }
    }
}
