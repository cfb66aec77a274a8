//! Helpers shared by the integration tests: network namespaces that the tests create
//! and always delete, and sockets opened inside them.

#![allow(dead_code)]

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Runs `program args` and panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("running {program} failed: {error}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Returns a short name unique to this process and call, for namespaces and links.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{count:x}", std::process::id() % 0xfff)
}

/// A network namespace created by a test and deleted on drop, together with every
/// interface inside it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "network namespace tests need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN); run them as root"
        );
        let name = unique_name(&format!("srt-{prefix}"));
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program args` inside the namespace through `ip netns exec`.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created by `f` stay
    /// in the namespace wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file =
                File::open(&path).unwrap_or_else(|error| panic!("opening {path} failed: {error}"));
            setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("deleting network namespace {} failed", self.name);
        }
    }
}

/// Connects `outer` (host side, named `link`) to `inner` with a veth pair and assigns
/// `outer_address` and `inner_address` (CIDR notation). The inner end is called `eth0`.
pub fn veth(outer: &Netns, link: &str, outer_address: &str, inner: &Netns, inner_address: &str) {
    outer.ip(&[
        "link",
        "add",
        link,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &inner.name,
    ]);
    outer.ip(&["addr", "add", outer_address, "dev", link]);
    inner.ip(&["addr", "add", inner_address, "dev", "eth0"]);
    outer.ip(&["link", "set", link, "up"]);
    inner.ip(&["link", "set", "eth0", "up"]);
}
