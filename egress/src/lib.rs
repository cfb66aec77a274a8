//! Egress for Strongroom workspaces: an allowlisting CONNECT proxy and the host firewall
//! that leaves it as a workspace's only way out.
//!
//! Each session's workspace sits on its own Docker `internal` network with its own
//! subnet. The proxy runs in the host's network namespace and identifies a session by
//! the source address of the connection ([`Registry`]). A workspace cannot forge that
//! address because it has no raw-socket capability, and the host firewall drops packets
//! from a session bridge that fail the reverse-path check. The proxy accepts only `CONNECT host:port` to a host and port that the
//! session's [`SitePolicy`] allows, resolves the name itself, and rejects private,
//! loopback, link-local, shared (CGNAT), multicast and other special-purpose addresses
//! unless the site's admin-approved private ranges contain them. It then connects to
//! exactly the address it checked. Every decision reaches an [`EventSink`].
//!
//! [`host_setup`] installs the iptables and ip6tables rules that drop everything from
//! the session range to the host except the proxy port, and everything between sessions.

pub mod address;
mod bandwidth;
pub mod events;
pub mod host_setup;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod resolver;
mod sni;
mod tunnel;

pub use address::{AddressClass, classify};
pub use events::{
    CloseCause, DENIAL_LOG_LINES_PER_WINDOW, DENIAL_LOG_WINDOW, DenyReason, EgressEvent, EventSink,
    Outcome,
};
pub use policy::{HostPattern, PolicyError, SitePolicy, TargetHost};
pub use proxy::{ConfigError, Proxy, ProxyConfig, bind};
pub use registry::{Registry, RegistryError, SessionEntry};
pub use resolver::{ResolveFuture, Resolver, StaticResolver, SystemResolver};
pub use sni::client_hello_for_tests;
