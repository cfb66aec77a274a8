//! Strongroom's broker: the web-facing service.
//!
//! The broker signs people in, starts and ends banking sessions through the launcher,
//! relays the live view, feeds the recorder and writes the audit trail. It never
//! holds the Docker socket; the launcher does.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
mod cli_quota;
pub mod clock;
pub mod config;
pub mod db;
pub mod downloads;
mod egress_audit_limit;
pub mod egress_hosts;
pub mod error;
pub mod http;
pub mod image_cli;
pub mod instance;
pub mod keyfile;
pub mod launcher_process;
pub mod lifecycle;
pub mod portal;
pub mod recordings;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod signals;
pub mod sites;
pub mod stream;
pub mod tasks;
pub mod telemetry;
pub mod terminal;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
