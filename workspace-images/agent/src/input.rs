//! Keyboard and mouse input through XTEST.
//!
//! Printable characters are typed by keysym: the agent looks the character up in the X
//! server's keymap and, when no keycode produces it, binds it to a spare keycode (as
//! xdotool does). So the viewer's layout decides the character, and `é` or `€` arrive
//! whatever the server's layout is. Keys without a character (Enter, arrows, modifiers)
//! and shortcuts (a character while Control, Alt or Meta is held) are sent by
//! `KeyboardEvent.code`, mapped to the keysym of that key on a US keyboard and then to
//! a keycode through the server's keymap.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::{KeyEvent, MouseButton};
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::xproto::{ConnectionExt as _, Keycode, Keysym, Window};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use crate::clipboard::ClipboardCommand;

const KEY_PRESS: u8 = 2;
const KEY_RELEASE: u8 = 3;
const BUTTON_PRESS: u8 = 4;
const BUTTON_RELEASE: u8 = 5;
const MOTION_NOTIFY: u8 = 6;

/// Wheel distance in CSS pixels that makes one wheel click (X buttons 4 to 7).
const WHEEL_PIXELS_PER_CLICK: f32 = 100.0;
/// Maximum wheel clicks sent for one event.
const MAX_WHEEL_CLICKS: i32 = 20;

const XK_SHIFT_L: Keysym = 0xffe1;
const XK_SHIFT_R: Keysym = 0xffe2;
const XK_CONTROL_L: Keysym = 0xffe3;
const XK_CONTROL_R: Keysym = 0xffe4;
const XK_ALT_L: Keysym = 0xffe9;
const XK_SUPER_L: Keysym = 0xffeb;
const XK_SUPER_R: Keysym = 0xffec;

/// An input command for the input thread.
#[derive(Debug)]
pub enum InputCommand {
    Key(KeyEvent),
    MouseMove {
        x: u32,
        y: u32,
    },
    MouseButton {
        button: MouseButton,
        pressed: bool,
        x: u32,
        y: u32,
    },
    Wheel {
        x: u32,
        y: u32,
        delta_x: f32,
        delta_y: f32,
    },
    /// Puts text on the clipboard and presses Control+V.
    Paste { text: String },
    /// Releases every key and button the viewer holds down.
    ReleaseAll,
}

pub struct Injector {
    conn: RustConnection,
    root: Window,
    min_keycode: Keycode,
    keysyms_per_keycode: u8,
    /// keysym → (keycode, column) for columns 0 (plain) and 1 (shifted).
    keymap: HashMap<Keysym, (Keycode, usize)>,
    spare: Vec<Keycode>,
    next_spare: usize,
    bound: HashMap<Keysym, Keycode>,
    held_keys: HashSet<Keycode>,
    /// Codes whose press was typed as a character, so their release sends nothing.
    typed_codes: HashSet<String>,
    held_buttons: HashSet<u8>,
    wheel_x: f32,
    wheel_y: f32,
}

impl Injector {
    pub fn connect(display: &str) -> anyhow::Result<Self> {
        let (conn, screen_num) = x11rb::connect(Some(display))
            .with_context(|| format!("connecting to X display {display}"))?;
        if conn
            .extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)?
            .is_none()
        {
            bail!("the X server has no XTEST extension");
        }
        let root = conn.setup().roots[screen_num].root;
        let min_keycode = conn.setup().min_keycode;
        let max_keycode = conn.setup().max_keycode;

        let count = max_keycode - min_keycode + 1;
        let mapping = conn.get_keyboard_mapping(min_keycode, count)?.reply()?;
        let per = usize::from(mapping.keysyms_per_keycode);
        let mut keymap = HashMap::new();
        let mut spare = Vec::new();
        for (index, syms) in mapping.keysyms.chunks(per.max(1)).enumerate() {
            let keycode = min_keycode + index as u8;
            if syms.iter().all(|&sym| sym == 0) {
                spare.push(keycode);
                continue;
            }
            for (column, &sym) in syms.iter().take(2).enumerate() {
                if sym != 0 {
                    keymap.entry(sym).or_insert((keycode, column));
                }
            }
        }
        if spare.is_empty() {
            bail!("the X keymap has no unused keycode for characters outside the layout");
        }

        Ok(Self {
            conn,
            root,
            min_keycode,
            keysyms_per_keycode: mapping.keysyms_per_keycode,
            keymap,
            spare,
            next_spare: 0,
            bound: HashMap::new(),
            held_keys: HashSet::new(),
            typed_codes: HashSet::new(),
            held_buttons: HashSet::new(),
            wheel_x: 0.0,
            wheel_y: 0.0,
        })
    }

    pub fn apply(&mut self, command: InputCommand) -> anyhow::Result<()> {
        match command {
            InputCommand::Key(event) => self.key(&event)?,
            InputCommand::MouseMove { x, y } => self.motion(x, y)?,
            InputCommand::MouseButton {
                button,
                pressed,
                x,
                y,
            } => {
                self.motion(x, y)?;
                let detail = match button {
                    MouseButton::Left => 1,
                    MouseButton::Middle => 2,
                    MouseButton::Right => 3,
                };
                if pressed {
                    self.held_buttons.insert(detail);
                } else {
                    self.held_buttons.remove(&detail);
                }
                self.fake(
                    if pressed {
                        BUTTON_PRESS
                    } else {
                        BUTTON_RELEASE
                    },
                    detail,
                )?;
            }
            InputCommand::Wheel {
                x,
                y,
                delta_x,
                delta_y,
            } => {
                self.motion(x, y)?;
                self.wheel_y += delta_y;
                self.wheel_x += delta_x;
                let clicks_y = (self.wheel_y / WHEEL_PIXELS_PER_CLICK).trunc() as i32;
                let clicks_x = (self.wheel_x / WHEEL_PIXELS_PER_CLICK).trunc() as i32;
                self.wheel_y -= clicks_y as f32 * WHEEL_PIXELS_PER_CLICK;
                self.wheel_x -= clicks_x as f32 * WHEEL_PIXELS_PER_CLICK;
                self.wheel_clicks(clicks_y, 4, 5)?;
                self.wheel_clicks(clicks_x, 6, 7)?;
            }
            InputCommand::ReleaseAll => {
                for keycode in std::mem::take(&mut self.held_keys) {
                    self.fake(KEY_RELEASE, keycode)?;
                }
                for button in std::mem::take(&mut self.held_buttons) {
                    self.fake(BUTTON_RELEASE, button)?;
                }
                self.typed_codes.clear();
            }
            InputCommand::Paste { .. } => bail!("a paste needs the clipboard thread"),
        }
        self.conn.flush()?;
        Ok(())
    }

    /// Presses Control+V, or only V when the viewer's Control key is down already.
    fn press_paste_shortcut(&mut self) -> anyhow::Result<()> {
        let (v, _) = *self
            .keymap
            .get(&Keysym::from(b'v'))
            .context("the X keymap has no V key")?;
        let control_held = self.modifier_held(&[XK_CONTROL_L, XK_CONTROL_R]);
        let control = match control_held {
            true => None,
            false => Some(
                self.keymap
                    .get(&XK_CONTROL_L)
                    .context("the X keymap has no Control key")?
                    .0,
            ),
        };
        if let Some(control) = control {
            self.fake(KEY_PRESS, control)?;
        }
        self.fake(KEY_PRESS, v)?;
        self.fake(KEY_RELEASE, v)?;
        if let Some(control) = control {
            self.fake(KEY_RELEASE, control)?;
        }
        self.conn.flush()?;
        Ok(())
    }

    fn wheel_clicks(&mut self, clicks: i32, negative: u8, positive: u8) -> anyhow::Result<()> {
        let button = if clicks < 0 { negative } else { positive };
        for _ in 0..clicks.abs().min(MAX_WHEEL_CLICKS) {
            self.fake(BUTTON_PRESS, button)?;
            self.fake(BUTTON_RELEASE, button)?;
        }
        Ok(())
    }

    fn fake(&self, kind: u8, detail: u8) -> anyhow::Result<()> {
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, 0, 0, 0)?;
        Ok(())
    }

    /// Moves the pointer. The screen size changes with resizes, so the X server clamps
    /// the position to the screen.
    fn motion(&self, x: u32, y: u32) -> anyhow::Result<()> {
        let x = x.min(protocol::limits::MAX_DIMENSION) as i16;
        let y = y.min(protocol::limits::MAX_DIMENSION) as i16;
        self.conn
            .xtest_fake_input(MOTION_NOTIFY, 0, x11rb::CURRENT_TIME, self.root, x, y, 0)?;
        Ok(())
    }

    fn shortcut_modifier_held(&self) -> bool {
        [XK_CONTROL_L, XK_CONTROL_R, XK_ALT_L, XK_SUPER_L, XK_SUPER_R]
            .iter()
            .filter_map(|sym| self.keymap.get(sym))
            .any(|(keycode, _)| self.held_keys.contains(keycode))
    }

    fn modifier_held(&self, keysyms: &[Keysym]) -> bool {
        keysyms
            .iter()
            .filter_map(|sym| self.keymap.get(sym))
            .any(|(keycode, _)| self.held_keys.contains(keycode))
    }

    fn key(&mut self, event: &KeyEvent) -> anyhow::Result<()> {
        let control = self.modifier_held(&[XK_CONTROL_L, XK_CONTROL_R]);
        let shift = self.modifier_held(&[XK_SHIFT_L, XK_SHIFT_R]);
        if event.pressed && is_blocked_shortcut(&event.code, control, shift) {
            tracing::info!(code = %event.code, control, shift, "Dropped a blocked browser shortcut");
            self.typed_codes.insert(event.code.clone());
            return Ok(());
        }
        let character = single_printable_char(&event.key);
        if event.pressed
            && let Some(character) = character
            && !self.shortcut_modifier_held()
        {
            self.typed_codes.insert(event.code.clone());
            return self.type_char(character);
        }
        if !event.pressed && self.typed_codes.remove(&event.code) {
            return Ok(());
        }

        let keysym = code_to_keysym(&event.code).or_else(|| character.map(char_to_keysym));
        let Some(keysym) = keysym else {
            tracing::debug!(code = %event.code, "Ignoring a key with no X equivalent");
            return Ok(());
        };
        let Some(&(keycode, _)) = self.keymap.get(&keysym) else {
            tracing::debug!(code = %event.code, keysym, "Ignoring a key missing from the X keymap");
            return Ok(());
        };
        if event.pressed {
            self.held_keys.insert(keycode);
            self.fake(KEY_PRESS, keycode)
        } else if self.held_keys.remove(&keycode) {
            self.fake(KEY_RELEASE, keycode)
        } else {
            Ok(())
        }
    }

    /// Types one character with the modifiers its keycode needs, leaving the viewer's
    /// held keys as they were.
    fn type_char(&mut self, character: char) -> anyhow::Result<()> {
        let keysym = char_to_keysym(character);
        let (keycode, column) = match self.keymap.get(&keysym) {
            Some(&found) => found,
            None => (self.bind_spare(keysym)?, 0),
        };

        let shift_codes: Vec<Keycode> = [XK_SHIFT_L, XK_SHIFT_R]
            .iter()
            .filter_map(|sym| self.keymap.get(sym).map(|(k, _)| *k))
            .collect();
        let shift_held: Vec<Keycode> = self
            .held_keys
            .iter()
            .copied()
            .filter(|k| shift_codes.contains(k))
            .collect();
        let other_held: Vec<Keycode> = self
            .held_keys
            .iter()
            .copied()
            .filter(|k| !shift_codes.contains(k))
            .collect();
        let need_shift = column == 1;

        for &held in &other_held {
            self.fake(KEY_RELEASE, held)?;
        }
        if need_shift && shift_held.is_empty() {
            self.fake(
                KEY_PRESS,
                *shift_codes
                    .first()
                    .context("the X keymap has no Shift key")?,
            )?;
        }
        if !need_shift {
            for &held in &shift_held {
                self.fake(KEY_RELEASE, held)?;
            }
        }

        self.fake(KEY_PRESS, keycode)?;
        self.fake(KEY_RELEASE, keycode)?;

        if need_shift && shift_held.is_empty() {
            self.fake(KEY_RELEASE, shift_codes[0])?;
        }
        if !need_shift {
            for &held in &shift_held {
                self.fake(KEY_PRESS, held)?;
            }
        }
        for &held in &other_held {
            self.fake(KEY_PRESS, held)?;
        }
        Ok(())
    }

    /// Binds `keysym` to a spare keycode, reusing spare keycodes round-robin.
    fn bind_spare(&mut self, keysym: Keysym) -> anyhow::Result<Keycode> {
        if let Some(&keycode) = self.bound.get(&keysym) {
            return Ok(keycode);
        }
        let keycode = self.spare[self.next_spare % self.spare.len()];
        self.next_spare += 1;
        self.bound.retain(|_, bound| *bound != keycode);
        let syms = vec![keysym; usize::from(self.keysyms_per_keycode)];
        self.conn
            .change_keyboard_mapping(1, keycode, self.keysyms_per_keycode, &syms)?;
        // A round trip makes the server apply the mapping (and send MappingNotify to
        // clients) before the key event that uses it.
        self.conn.get_input_focus()?.reply()?;
        debug_assert!(keycode >= self.min_keycode);
        self.bound.insert(keysym, keycode);
        Ok(keycode)
    }
}

/// Browser shortcuts the viewer may not use: developer tools, page source, new windows,
/// opening and saving files. The image's managed policies block the same features; this
/// filter keeps the key events from reaching Chromium at all.
fn is_blocked_shortcut(code: &str, control: bool, shift: bool) -> bool {
    match code {
        "F12" => true,
        // Developer tools, console and element picker.
        "KeyI" | "KeyJ" | "KeyC" if control && shift => true,
        // Incognito window.
        "KeyN" if control && shift => true,
        // View source, new window, new tab, open file, save page, print, history, downloads.
        "KeyU" | "KeyN" | "KeyT" | "KeyO" | "KeyS" | "KeyP" | "KeyH" | "KeyJ" if control => true,
        _ => false,
    }
}

fn single_printable_char(key: &str) -> Option<char> {
    let mut chars = key.chars();
    let first = chars.next()?;
    if chars.next().is_some() || first.is_control() {
        return None;
    }
    Some(first)
}

/// Converts a character to its X keysym: Latin-1 characters map to themselves, others
/// to `0x01000000 + code point` (X11 keysym encoding for Unicode).
fn char_to_keysym(character: char) -> Keysym {
    let code = u32::from(character);
    if (0x20..=0x7e).contains(&code) || (0xa0..=0xff).contains(&code) {
        code
    } else {
        0x0100_0000 + code
    }
}

/// Maps `KeyboardEvent.code` to the keysym of that key on a US keyboard.
fn code_to_keysym(code: &str) -> Option<Keysym> {
    if let Some(letter) = code.strip_prefix("Key")
        && letter.len() == 1
        && letter.as_bytes()[0].is_ascii_uppercase()
    {
        return Some(Keysym::from(letter.as_bytes()[0].to_ascii_lowercase()));
    }
    if let Some(digit) = code.strip_prefix("Digit")
        && digit.len() == 1
        && digit.as_bytes()[0].is_ascii_digit()
    {
        return Some(Keysym::from(digit.as_bytes()[0]));
    }
    if let Some(number) = code.strip_prefix('F')
        && let Ok(n) = number.parse::<u32>()
        && (1..=24).contains(&n)
    {
        return Some(0xffbe + n - 1);
    }
    if let Some(digit) = code.strip_prefix("Numpad")
        && digit.len() == 1
        && digit.as_bytes()[0].is_ascii_digit()
    {
        return Some(0xffb0 + u32::from(digit.as_bytes()[0] - b'0'));
    }
    let keysym = match code {
        "Enter" => 0xff0d,
        "NumpadEnter" => 0xff8d,
        "Tab" => 0xff09,
        "Backspace" => 0xff08,
        "Escape" => 0xff1b,
        "Delete" => 0xffff,
        "Insert" => 0xff63,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "ArrowLeft" => 0xff51,
        "ArrowUp" => 0xff52,
        "ArrowRight" => 0xff53,
        "ArrowDown" => 0xff54,
        "ShiftLeft" => XK_SHIFT_L,
        "ShiftRight" => XK_SHIFT_R,
        "ControlLeft" => XK_CONTROL_L,
        "ControlRight" => XK_CONTROL_R,
        "AltLeft" => XK_ALT_L,
        "AltRight" => 0xffea,
        "MetaLeft" => XK_SUPER_L,
        "MetaRight" => XK_SUPER_R,
        "CapsLock" => 0xffe5,
        "Space" => 0x20,
        "Minus" => 0x2d,
        "Equal" => 0x3d,
        "BracketLeft" => 0x5b,
        "BracketRight" => 0x5d,
        "Backslash" => 0x5c,
        "Semicolon" => 0x3b,
        "Quote" => 0x27,
        "Backquote" => 0x60,
        "Comma" => 0x2c,
        "Period" => 0x2e,
        "Slash" => 0x2f,
        "NumpadAdd" => 0xffab,
        "NumpadSubtract" => 0xffad,
        "NumpadMultiply" => 0xffaa,
        "NumpadDivide" => 0xffaf,
        "NumpadDecimal" => 0xffae,
        "ContextMenu" => 0xff67,
        _ => return None,
    };
    Some(keysym)
}

/// How long a paste waits for the clipboard thread to own the text.
const CLIPBOARD_SET_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the input thread until the channel closes. A paste goes through `clipboard`
/// and then presses Control+V, in order with the viewer's other input.
pub fn run(
    display: &str,
    commands: std::sync::mpsc::Receiver<InputCommand>,
    clipboard: std::sync::mpsc::Sender<ClipboardCommand>,
) -> anyhow::Result<()> {
    let mut injector = Injector::connect(display)?;
    while let Ok(command) = commands.recv() {
        let result = match command {
            InputCommand::Paste { text } => paste(&mut injector, &clipboard, text),
            command => injector.apply(command),
        };
        if let Err(error) = result {
            tracing::warn!(error = %format!("{error:#}"), "Applying input failed");
        }
    }
    Ok(())
}

fn paste(
    injector: &mut Injector,
    clipboard: &std::sync::mpsc::Sender<ClipboardCommand>,
    text: String,
) -> anyhow::Result<()> {
    let (done, set) = std::sync::mpsc::sync_channel(1);
    clipboard
        .send(ClipboardCommand::Set { text, done })
        .map_err(|_| anyhow::anyhow!("the clipboard thread has stopped"))?;
    set.recv_timeout(CLIPBOARD_SET_TIMEOUT)
        .context("the clipboard thread did not respond within 2 s")??;
    injector.press_paste_shortcut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devtools_shortcuts_blocked() {
        assert!(is_blocked_shortcut("F12", false, false));
        assert!(is_blocked_shortcut("KeyI", true, true));
        assert!(is_blocked_shortcut("KeyU", true, false));
        assert!(!is_blocked_shortcut("KeyI", true, false));
        assert!(
            !is_blocked_shortcut("KeyC", true, false),
            "copy stays allowed"
        );
        assert!(
            !is_blocked_shortcut("KeyV", true, false),
            "paste stays allowed"
        );
        assert!(!is_blocked_shortcut("KeyU", false, false));
    }

    #[test]
    fn keysyms_for_characters() {
        assert_eq!(char_to_keysym('a'), 0x61);
        assert_eq!(char_to_keysym('é'), 0xe9);
        assert_eq!(char_to_keysym('€'), 0x0100_20ac);
        assert_eq!(code_to_keysym("KeyQ"), Some(0x71));
        assert_eq!(code_to_keysym("Digit7"), Some(0x37));
        assert_eq!(code_to_keysym("F5"), Some(0xffc2));
        assert_eq!(code_to_keysym("Keyq"), None);
        assert_eq!(code_to_keysym("Unknown"), None);
        assert_eq!(single_printable_char("Enter"), None);
        assert_eq!(single_printable_char("€"), Some('€'));
        assert_eq!(single_printable_char("\u{7f}"), None);
    }
}
