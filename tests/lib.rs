//! Support for Strongroom's cross-crate integration and end-to-end tests.

pub mod agent;
pub mod browser;
pub mod pages;
