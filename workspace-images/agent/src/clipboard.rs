//! The workspace's X clipboard (the `CLIPBOARD` selection), on its own thread.
//!
//! Pasting in: the thread takes ownership of `CLIPBOARD` with the viewer's text and
//! serves it to every program that requests it, as `UTF8_STRING` (or `TEXT`), until another
//! program takes the selection.
//!
//! Copying out: XFixes reports every change of the selection's owner. When a program
//! in the workspace (Chromium) takes it, the thread asks for the text as
//! `UTF8_STRING` and hands it to the broker as [`AgentControl::ClipboardChanged`]. The
//! broker decides by the site's policy whether the viewer gets it.
//!
//! Text longer than [`protocol::limits::MAX_CLIPBOARD_LEN`] bytes is neither set nor
//! sent. The thread does not use the `INCR` protocol, which X clients use only for
//! values larger than a request (256 KiB on Xvfb), far above that limit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::AgentControl;
use protocol::limits::MAX_CLIPBOARD_LEN;
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::xfixes::{self, ConnectionExt as _, SelectionEventMask};
use x11rb::protocol::xproto::{
    self, AtomEnum, ConnectionExt as _, CreateWindowAux, EventMask, PropMode, SelectionNotifyEvent,
    SelectionRequestEvent, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::hub::Hub;

/// How long the thread waits for a command before it looks at X events again. Other
/// programs' requests for the clipboard wait at most this long.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

x11rb::atom_manager! {
    Atoms: AtomsCookie {
        CLIPBOARD,
        UTF8_STRING,
        TEXT,
        TARGETS,
        INCR,
        STRONGROOM_CLIPBOARD,
    }
}

/// A request for the clipboard thread.
pub enum ClipboardCommand {
    /// Own the clipboard with this text; `done` is signalled once other programs get it.
    Set {
        text: String,
        done: SyncSender<anyhow::Result<()>>,
    },
}

struct Clipboard {
    conn: RustConnection,
    window: Window,
    atoms: Atoms,
    /// The text served while this thread owns the selection.
    owned: Option<String>,
    hub: Arc<Hub>,
}

/// Runs the clipboard thread until the command channel closes.
pub fn run(display: &str, hub: Arc<Hub>, commands: Receiver<ClipboardCommand>) -> anyhow::Result<()> {
    let mut clipboard = Clipboard::connect(display, hub)?;
    loop {
        while let Some(event) = clipboard.conn.poll_for_event()? {
            if let Err(error) = clipboard.handle_event(event) {
                tracing::warn!(error = %format!("{error:#}"), "Handling a clipboard event failed");
            }
        }
        match commands.recv_timeout(POLL_INTERVAL) {
            Ok(ClipboardCommand::Set { text, done }) => {
                let _ = done.send(clipboard.set(text));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

impl Clipboard {
    fn connect(display: &str, hub: Arc<Hub>) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connecting to X display {display}"))?;
        if conn
            .extension_information(xfixes::X11_EXTENSION_NAME)?
            .is_none()
        {
            bail!("the X server has no XFIXES extension");
        }
        conn.xfixes_query_version(5, 0)?.reply()?;
        let root = conn.setup().roots[screen_num].root;
        let atoms = Atoms::new(&conn)?.reply()?;

        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?
        .check()
        .context("creating the clipboard window")?;
        conn.xfixes_select_selection_input(
            window,
            atoms.CLIPBOARD,
            SelectionEventMask::SET_SELECTION_OWNER,
        )?
        .check()
        .context("watching the clipboard owner")?;
        Ok(Self {
            conn,
            window,
            atoms,
            owned: None,
            hub,
        })
    }

    fn set(&mut self, text: String) -> anyhow::Result<()> {
        if text.len() > MAX_CLIPBOARD_LEN {
            bail!("clipboard text of {} bytes exceeds {MAX_CLIPBOARD_LEN}", text.len());
        }
        self.conn
            .set_selection_owner(self.window, self.atoms.CLIPBOARD, x11rb::CURRENT_TIME)?;
        let owner = self
            .conn
            .get_selection_owner(self.atoms.CLIPBOARD)?
            .reply()?
            .owner;
        if owner != self.window {
            bail!("another X client kept the clipboard");
        }
        self.owned = Some(text);
        Ok(())
    }

    fn handle_event(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::SelectionRequest(request) => self.serve(&request),
            Event::SelectionClear(clear) if clear.selection == self.atoms.CLIPBOARD => {
                self.owned = None;
                Ok(())
            }
            Event::XfixesSelectionNotify(change)
                if change.selection == self.atoms.CLIPBOARD
                    && change.owner != self.window
                    && change.owner != x11rb::NONE =>
            {
                // Request the new owner's text, which arrives as a SelectionNotify event.
                self.conn.convert_selection(
                    self.window,
                    self.atoms.CLIPBOARD,
                    self.atoms.UTF8_STRING,
                    self.atoms.STRONGROOM_CLIPBOARD,
                    change.selection_timestamp,
                )?;
                self.conn.flush()?;
                Ok(())
            }
            Event::SelectionNotify(notify) if notify.selection == self.atoms.CLIPBOARD => {
                self.receive(&notify)
            }
            _ => Ok(()),
        }
    }

    /// Serves another program's request for the text this thread owns.
    fn serve(&self, request: &SelectionRequestEvent) -> anyhow::Result<()> {
        // Clients older than ICCCM 2.0 send no property; the target names one then.
        let property = if request.property == x11rb::NONE {
            request.target
        } else {
            request.property
        };
        let served = match &self.owned {
            Some(text) if request.selection == self.atoms.CLIPBOARD => {
                if request.target == self.atoms.TARGETS {
                    let targets = [
                        self.atoms.TARGETS,
                        self.atoms.UTF8_STRING,
                        self.atoms.TEXT,
                    ];
                    self.conn.change_property32(
                        PropMode::REPLACE,
                        request.requestor,
                        property,
                        AtomEnum::ATOM,
                        &targets,
                    )?;
                    true
                } else if request.target == self.atoms.UTF8_STRING
                    || request.target == self.atoms.TEXT
                {
                    self.conn.change_property8(
                        PropMode::REPLACE,
                        request.requestor,
                        property,
                        self.atoms.UTF8_STRING,
                        text.as_bytes(),
                    )?;
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        let reply = SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: request.time,
            requestor: request.requestor,
            selection: request.selection,
            target: request.target,
            property: if served { property } else { x11rb::NONE },
        };
        self.conn
            .send_event(false, request.requestor, EventMask::NO_EVENT, reply)?;
        self.conn.flush()?;
        Ok(())
    }

    /// Reads the text another program converted for this thread and sends it to the
    /// broker.
    fn receive(&self, notify: &SelectionNotifyEvent) -> anyhow::Result<()> {
        if notify.property == x11rb::NONE {
            tracing::debug!("The clipboard owner offered no UTF-8 text");
            return Ok(());
        }
        // One more 4-byte unit than the limit shows whether the value is longer.
        let units = (MAX_CLIPBOARD_LEN / 4 + 1) as u32;
        let value = self
            .conn
            .get_property(
                true,
                self.window,
                notify.property,
                AtomEnum::ANY,
                0,
                units,
            )?
            .reply()?;
        if value.type_ == self.atoms.INCR
            || value.bytes_after > 0
            || value.value.len() > MAX_CLIPBOARD_LEN
        {
            tracing::info!(
                limit = MAX_CLIPBOARD_LEN,
                "Clipboard text above the size limit was not copied out"
            );
            return Ok(());
        }
        let Ok(text) = String::from_utf8(value.value) else {
            tracing::info!("Clipboard text that is not UTF-8 was not copied out");
            return Ok(());
        };
        if !text.is_empty() {
            self.hub
                .send_control(&AgentControl::ClipboardChanged { text });
        }
        Ok(())
    }
}
