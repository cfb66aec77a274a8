//! Strongroom workspace agent: runs Xvfb and Chromium inside the workspace container,
//! streams the screen as VP8 to the broker, applies the viewer's input and performs
//! auto-login over CDP.
//!
//! The broker dials the agent (`--listen`, WebSocket over TCP) and authenticates with the
//! session secret whose SHA-256 the agent got at launch. The wire format is in the
//! `protocol` crate.

pub mod browser;
pub mod capture;
pub mod cdp;
pub mod clipboard;
pub mod downloads;
pub mod encoder;
pub mod hub;
pub mod input;
pub mod login;
pub mod processes;
pub mod scale;
pub mod screen;
pub mod server;
pub mod stream;

mod run;

pub use run::{Args, run};
