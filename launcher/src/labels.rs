//! Labels on every container and network the launcher creates.

/// Session id (UUID).
pub const SESSION: &str = "io.strongroom.session";
/// Owner of the session.
pub const OWNER: &str = "io.strongroom.owner";
/// Site name from the broker's catalogue.
pub const SITE: &str = "io.strongroom.site";
/// Creation time, RFC 3339 in UTC.
pub const CREATED: &str = "io.strongroom.created";
/// The broker's persistent instance id; reconciliation touches only its own.
pub const INSTANCE: &str = "io.strongroom.instance";
/// `workspace` or `network`.
pub const ROLE: &str = "io.strongroom.role";
