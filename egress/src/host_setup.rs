//! Host firewall rules that confine session networks, installed with iptables and
//! ip6tables.
//!
//! The rules live in dedicated chains that [`apply`] replaces atomically with
//! `iptables-restore --noflush`, so running it again changes nothing and [`remove`]
//! deletes exactly what it added. Each chain is jumped to from the first position of its
//! hook chain:
//!
//! | family | table | chain | hook | rules |
//! | --- | --- | --- | --- | --- |
//! | IPv4 | raw | `STRONGROOM-PREROUTING` | `PREROUTING` | drop packets from a session bridge whose source fails the reverse-path check or lies outside the session range |
//! | IPv4 | filter | `STRONGROOM-INPUT` | `INPUT` | from the session range: drop link-local and metadata destinations, accept replies to connections the host opened, accept TCP to the proxy port on the address of the bridge the packet arrived on, drop everything else; drop the proxy port from any other source except loopback |
//! | IPv4 | filter | `STRONGROOM-FORWARD` | `DOCKER-USER` | drop every forwarded packet from or to the session range or a session bridge, which covers traffic between sessions and to link-local or metadata addresses |
//! | IPv6 | raw, filter | same names | same hooks | drop all IPv6 from and to session bridges (session networks are IPv4-only); drop the proxy port except on loopback |
//!
//! With [`FirewallConfig::chain_suffix`] set, every chain name ends in `-SUFFIX`
//! (`STRONGROOM-INPUT-T7`), so a second session range on the same host, with its own
//! bridge prefix, gets chains of its own that [`remove`] deletes without touching the
//! first range's chains.
//!
//! Session bridges are recognised by their interface name. The launcher must therefore
//! create every session network with a subnet inside [`FirewallConfig::session_range`]
//! and with the bridge driver option `com.docker.network.bridge.name` set to
//! [`FirewallConfig::bridge_prefix`] plus a short unique suffix. With the default `srs-`
//! prefix the suffix has at most 11 characters, because Linux interface names have at
//! most 15.
//!
//! Forwarded traffic is filtered in Docker's `DOCKER-USER` chain because Docker inserts
//! its own `FORWARD` rules ahead of anything else whenever it creates a network, but
//! always keeps the jump to `DOCKER-USER` first. [`apply`] creates `DOCKER-USER` and
//! its jump from `FORWARD` when Docker has not, as Docker itself would.
//! NOTE: the broker must reach agents from the host's network namespace. A broker
//! container on a bridge network reaches a session only through `FORWARD`, which these
//! rules drop.

use std::ffi::OsString;
use std::fmt;
use std::process::Output;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Chain holding the `raw` table rules.
pub const PREROUTING_CHAIN: &str = "STRONGROOM-PREROUTING";
/// Chain holding the `filter` table rules for traffic to the host.
pub const INPUT_CHAIN: &str = "STRONGROOM-INPUT";
/// Chain holding the `filter` table rules for forwarded traffic.
pub const FORWARD_CHAIN: &str = "STRONGROOM-FORWARD";
/// Docker's chain for user rules on forwarded traffic.
pub const DOCKER_USER_CHAIN: &str = "DOCKER-USER";
/// Link-local IPv4 range, which contains the cloud metadata address 169.254.169.254.
const LINK_LOCAL_V4: &str = "169.254.0.0/16";
/// Linux limit on interface name length, without the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;
/// Maximum chain suffix length: `STRONGROOM-PREROUTING-` plus six characters is 28,
/// the maximum chain name length of iptables.
const MAX_CHAIN_SUFFIX: usize = 6;

/// Host firewall settings: the session range, the proxy port and the bridge name prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Range from which every session subnet is allocated.
    pub session_range: Ipv4Net,
    /// TCP port the egress proxy listens on.
    pub proxy_port: u16,
    /// Prefix of every session bridge's interface name; `srs-` by default.
    pub bridge_prefix: String,
    /// Ending of every chain name after a `-`, or empty (the default) for the plain
    /// `STRONGROOM-*` names. At most six letters, digits or `_`.
    pub chain_suffix: String,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            session_range: Ipv4Net::new(std::net::Ipv4Addr::new(172, 21, 0, 0), 16)
                .expect("valid prefix"),
            proxy_port: 3128,
            bridge_prefix: "srs-".to_owned(),
            chain_suffix: String::new(),
        }
    }
}

/// A failure to inspect or change the firewall.
#[derive(Debug, thiserror::Error)]
pub enum HostSetupError {
    #[error(
        "invalid bridge prefix {prefix:?}: use 1 to 14 letters, digits, `-` or `_`, so \
         that a suffix still fits the 15-character interface name limit"
    )]
    InvalidBridgePrefix { prefix: String },
    #[error("proxy port is 0; set the port the egress proxy listens on")]
    ZeroProxyPort,
    #[error(
        "invalid chain suffix {suffix:?}: use at most {MAX_CHAIN_SUFFIX} letters, digits or \
         `_`, so that chain names stay within iptables' 28 characters"
    )]
    InvalidChainSuffix { suffix: String },
    #[error("running `{command}` failed: {source}; install the iptables package")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    CommandFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl FirewallConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), HostSetupError> {
        let prefix = &self.bridge_prefix;
        let valid_chars = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if prefix.is_empty() || prefix.len() >= MAX_INTERFACE_NAME || !valid_chars {
            return Err(HostSetupError::InvalidBridgePrefix {
                prefix: prefix.clone(),
            });
        }
        if self.proxy_port == 0 {
            return Err(HostSetupError::ZeroProxyPort);
        }
        let suffix = &self.chain_suffix;
        if suffix.len() > MAX_CHAIN_SUFFIX
            || !suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(HostSetupError::InvalidChainSuffix {
                suffix: suffix.clone(),
            });
        }
        Ok(())
    }

    /// Name of one of Strongroom's chains for this configuration: `base` itself, or
    /// `base-SUFFIX` when [`FirewallConfig::chain_suffix`] is set.
    pub fn chain_name(&self, base: &str) -> String {
        if self.chain_suffix.is_empty() {
            base.to_owned()
        } else {
            format!("{base}-{}", self.chain_suffix)
        }
    }

    /// Interface match for session bridges, in iptables' `+` wildcard syntax.
    pub fn bridge_match(&self) -> String {
        format!("{}+", self.bridge_prefix)
    }
}

/// IP protocol family, with its iptables tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Self::Ipv4 => "iptables",
            Self::Ipv6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::Ipv4 => "iptables-restore",
            Self::Ipv6 => "ip6tables-restore",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

/// One of Strongroom's chains, the hook chain that jumps to it, and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSpec {
    pub family: Family,
    pub table: &'static str,
    pub chain: String,
    pub hook: &'static str,
    /// Each rule's arguments after `-A CHAIN`, in order.
    pub rules: Vec<Vec<String>>,
}

/// Returns the chains and rules that [`apply`] installs for `config`.
pub fn desired_chains(config: &FirewallConfig) -> Vec<ChainSpec> {
    let range = config.session_range.trunc().to_string();
    let bridges = config.bridge_match();
    let port = config.proxy_port.to_string();
    let rule = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();

    let ipv4 = [
        ChainSpec {
            family: Family::Ipv4,
            table: "raw",
            chain: config.chain_name(PREROUTING_CHAIN),
            hook: "PREROUTING",
            rules: vec![
                rule(&["-i", &bridges, "-m", "rpfilter", "--invert", "-j", "DROP"]),
                rule(&["!", "-s", &range, "-i", &bridges, "-j", "DROP"]),
            ],
        },
        ChainSpec {
            family: Family::Ipv4,
            table: "filter",
            chain: config.chain_name(INPUT_CHAIN),
            hook: "INPUT",
            rules: vec![
                rule(&["-s", &range, "-d", LINK_LOCAL_V4, "-j", "DROP"]),
                rule(&[
                    "-s",
                    &range,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ]),
                rule(&[
                    "-s",
                    &range,
                    "-d",
                    &range,
                    "-p",
                    "tcp",
                    "-m",
                    "tcp",
                    "--dport",
                    &port,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "--limit-iface-in",
                    "-j",
                    "ACCEPT",
                ]),
                rule(&["-s", &range, "-j", "DROP"]),
                rule(&["-i", &bridges, "-j", "DROP"]),
                rule(&[
                    "!", "-i", "lo", "-p", "tcp", "-m", "tcp", "--dport", &port, "-j", "DROP",
                ]),
            ],
        },
        ChainSpec {
            family: Family::Ipv4,
            table: "filter",
            chain: config.chain_name(FORWARD_CHAIN),
            hook: DOCKER_USER_CHAIN,
            rules: vec![
                rule(&["-s", &range, "-d", LINK_LOCAL_V4, "-j", "DROP"]),
                rule(&["-s", &range, "-j", "DROP"]),
                rule(&["-d", &range, "-j", "DROP"]),
                rule(&["-i", &bridges, "-j", "DROP"]),
                rule(&["-o", &bridges, "-j", "DROP"]),
            ],
        },
    ];

    let ipv6 = [
        ChainSpec {
            family: Family::Ipv6,
            table: "raw",
            chain: config.chain_name(PREROUTING_CHAIN),
            hook: "PREROUTING",
            rules: vec![rule(&["-i", &bridges, "-j", "DROP"])],
        },
        ChainSpec {
            family: Family::Ipv6,
            table: "filter",
            chain: config.chain_name(INPUT_CHAIN),
            hook: "INPUT",
            rules: vec![
                rule(&["-i", &bridges, "-j", "DROP"]),
                rule(&[
                    "!", "-i", "lo", "-p", "tcp", "-m", "tcp", "--dport", &port, "-j", "DROP",
                ]),
            ],
        },
        ChainSpec {
            family: Family::Ipv6,
            table: "filter",
            chain: config.chain_name(FORWARD_CHAIN),
            hook: DOCKER_USER_CHAIN,
            rules: vec![
                rule(&["-i", &bridges, "-j", "DROP"]),
                rule(&["-o", &bridges, "-j", "DROP"]),
            ],
        },
    ];

    ipv4.into_iter().chain(ipv6).collect()
}

/// Command runner for iptables: on the host, or inside a named network namespace through
/// `ip netns exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runner {
    prefix: Vec<OsString>,
}

impl Runner {
    /// Runs commands in the current network namespace.
    pub fn host() -> Self {
        Self::default()
    }

    /// Runs commands in the network namespace `name` (see `ip netns list`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            prefix: ["ip", "netns", "exec", name].map(OsString::from).to_vec(),
        }
    }

    fn command(&self, program: &str, args: &[String]) -> (Command, String) {
        let mut words: Vec<OsString> = self.prefix.clone();
        words.push(program.into());
        words.extend(args.iter().map(OsString::from));
        let display = words
            .iter()
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");

        let mut command = Command::new(&words[0]);
        command.args(&words[1..]).kill_on_drop(true);
        (command, display)
    }

    /// Runs `program args`, returning its output whatever its exit status.
    async fn output(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<(Output, String), HostSetupError> {
        let (mut command, display) = self.command(program, args);
        let output = command
            .output()
            .await
            .map_err(|source| HostSetupError::Spawn {
                command: display.clone(),
                source,
            })?;
        Ok((output, display))
    }

    /// Runs `program args` and fails unless it exits with status 0.
    async fn run(&self, program: &str, args: &[String]) -> Result<String, HostSetupError> {
        let (output, display) = self.output(program, args).await?;
        if !output.status.success() {
            return Err(command_failed(display, &output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `program args` with `input` on standard input.
    async fn run_with_input(
        &self,
        program: &str,
        args: &[String],
        input: &str,
    ) -> Result<(), HostSetupError> {
        let (mut command, display) = self.command(program, args);
        command.stdin(std::process::Stdio::piped());
        command.stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let spawn_error = |source| HostSetupError::Spawn {
            command: display.clone(),
            source,
        };

        let mut child = command.spawn().map_err(spawn_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(spawn_error)?;
        drop(stdin);
        let output = child.wait_with_output().await.map_err(spawn_error)?;
        if !output.status.success() {
            return Err(command_failed(display, &output));
        }
        Ok(())
    }
}

fn command_failed(command: String, output: &Output) -> HostSetupError {
    HostSetupError::CommandFailed {
        command,
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    }
}

/// Arguments for an iptables call on `table`, waiting for the xtables lock.
fn table_args(table: &str, args: &[&str]) -> Vec<String> {
    ["-w", "-t", table]
        .iter()
        .chain(args)
        .map(|arg| (*arg).to_owned())
        .collect()
}

/// Installs or refreshes the rules, for IPv4 and IPv6. Running it again with the same
/// configuration leaves `iptables-save` output unchanged.
pub async fn apply(config: &FirewallConfig, runner: &Runner) -> Result<(), HostSetupError> {
    config.validate()?;
    let chains = desired_chains(config);

    for family in [Family::Ipv4, Family::Ipv6] {
        let family_chains: Vec<&ChainSpec> =
            chains.iter().filter(|spec| spec.family == family).collect();
        ensure_docker_user(family, runner).await?;
        runner
            .run_with_input(
                family.restore(),
                &["-w".to_owned(), "--noflush".to_owned()],
                &restore_input(&family_chains),
            )
            .await?;
        for spec in family_chains {
            ensure_jump_first(spec, runner).await?;
        }
    }

    tracing::info!(
        session_range = %config.session_range, proxy_port = config.proxy_port,
        bridge_prefix = %config.bridge_prefix, "Host firewall rules applied"
    );
    Ok(())
}

/// Builds `iptables-restore` input that declares (and so flushes) each chain, then
/// fills it. Both happen in one transaction per table.
fn restore_input(chains: &[&ChainSpec]) -> String {
    let mut input = String::new();
    let mut tables: Vec<&str> = chains.iter().map(|spec| spec.table).collect();
    tables.dedup();

    for table in tables {
        input.push_str(&format!("*{table}\n"));
        for spec in chains.iter().filter(|spec| spec.table == table) {
            input.push_str(&format!(":{} - [0:0]\n", spec.chain));
        }
        for spec in chains.iter().filter(|spec| spec.table == table) {
            for rule in &spec.rules {
                input.push_str(&format!("-A {} {}\n", spec.chain, rule.join(" ")));
            }
        }
        input.push_str("COMMIT\n");
    }
    input
}

/// Creates `DOCKER-USER` and its jump from `FORWARD` when Docker has not.
async fn ensure_docker_user(family: Family, runner: &Runner) -> Result<(), HostSetupError> {
    if chain_rules(family, "filter", DOCKER_USER_CHAIN, runner)
        .await?
        .is_some()
    {
        return Ok(());
    }
    runner
        .run(
            family.iptables(),
            &table_args("filter", &["-N", DOCKER_USER_CHAIN]),
        )
        .await?;
    runner
        .run(
            family.iptables(),
            &table_args("filter", &["-I", "FORWARD", "1", "-j", DOCKER_USER_CHAIN]),
        )
        .await?;
    tracing::info!(family = %family, "Created the DOCKER-USER chain and its jump from FORWARD");
    Ok(())
}

/// Makes the jump to `spec.chain` the first rule of its hook chain, exactly once.
async fn ensure_jump_first(spec: &ChainSpec, runner: &Runner) -> Result<(), HostSetupError> {
    let rules = chain_rules(spec.family, spec.table, spec.hook, runner)
        .await?
        .unwrap_or_default();
    let jump = jump_rule(spec);
    let count = rules.iter().filter(|rule| **rule == jump).count();
    if count == 1 && rules.first() == Some(&jump) {
        return Ok(());
    }

    for _ in 0..count {
        runner
            .run(
                spec.family.iptables(),
                &table_args(spec.table, &["-D", spec.hook, "-j", &spec.chain]),
            )
            .await?;
    }
    runner
        .run(
            spec.family.iptables(),
            &table_args(spec.table, &["-I", spec.hook, "1", "-j", &spec.chain]),
        )
        .await?;
    Ok(())
}

/// Formats the jump rule the way `iptables -S` prints it.
fn jump_rule(spec: &ChainSpec) -> String {
    format!("-A {} -j {}", spec.hook, spec.chain)
}

/// Lists a chain's rules as `iptables -S` prints them, without the chain declaration.
/// Returns `None` when the chain does not exist. The whole table is listed, because
/// iptables-nft 1.8.9 reports a missing chain as "incompatible" when asked for it alone.
async fn chain_rules(
    family: Family,
    table: &str,
    chain: &str,
    runner: &Runner,
) -> Result<Option<Vec<String>>, HostSetupError> {
    let listing = runner
        .run(family.iptables(), &table_args(table, &["-S"]))
        .await?;
    let declarations = [format!("-N {chain}"), format!("-P {chain} ")];
    let exists = listing
        .lines()
        .any(|line| line == declarations[0] || line.starts_with(&declarations[1]));
    if !exists {
        return Ok(None);
    }
    let rule_prefix = format!("-A {chain} ");
    let rules = listing
        .lines()
        .filter(|line| line.starts_with(&rule_prefix))
        .map(str::to_owned)
        .collect();
    Ok(Some(rules))
}

/// A difference between the installed rules and the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub family: Family,
    pub table: &'static str,
    pub chain: String,
    pub kind: ProblemKind,
}

/// Kind of difference found in one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The chain does not exist.
    ChainMissing,
    /// The rule, given as its arguments after `-A CHAIN`, is not in the chain.
    RuleMissing { rule: String },
    /// The chain contains rules beyond the expected ones.
    UnexpectedRules { expected: usize, found: usize },
    /// The hook chain does not jump to the chain.
    JumpMissing { hook: &'static str },
    /// The hook chain jumps to the chain, but other rules come first and may accept
    /// packets before they reach the chain.
    JumpNotFirst { hook: &'static str },
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            family,
            table,
            chain,
            kind,
        } = self;
        write!(formatter, "{family} table {table}: ")?;
        match kind {
            ProblemKind::ChainMissing => write!(formatter, "chain {chain} is missing"),
            ProblemKind::RuleMissing { rule } => {
                write!(formatter, "rule `-A {chain} {rule}` is missing")
            }
            ProblemKind::UnexpectedRules { expected, found } => {
                write!(
                    formatter,
                    "chain {chain} has {found} rules, expected {expected}"
                )
            }
            ProblemKind::JumpMissing { hook } => {
                write!(formatter, "chain {hook} does not jump to {chain}")
            }
            ProblemKind::JumpNotFirst { hook } => {
                write!(
                    formatter,
                    "the jump from {hook} to {chain} is not the first rule of {hook}"
                )
            }
        }
    }
}

/// Compares the installed rules with `config` and returns every difference. An empty
/// list means the firewall is complete. Rule order inside a chain is not compared,
/// because [`apply`] always writes a chain whole.
pub async fn check(
    config: &FirewallConfig,
    runner: &Runner,
) -> Result<Vec<Problem>, HostSetupError> {
    config.validate()?;
    let mut problems = Vec::new();

    for spec in desired_chains(config) {
        let problem = |kind| Problem {
            family: spec.family,
            table: spec.table,
            chain: spec.chain.clone(),
            kind,
        };
        let Some(installed) = chain_rules(spec.family, spec.table, &spec.chain, runner).await?
        else {
            problems.push(problem(ProblemKind::ChainMissing));
            continue;
        };

        for rule in &spec.rules {
            if !rule_exists(&spec, rule, runner).await? {
                problems.push(problem(ProblemKind::RuleMissing {
                    rule: rule.join(" "),
                }));
            }
        }
        if installed.len() > spec.rules.len() {
            problems.push(problem(ProblemKind::UnexpectedRules {
                expected: spec.rules.len(),
                found: installed.len(),
            }));
        }

        let hook_rules = chain_rules(spec.family, spec.table, spec.hook, runner)
            .await?
            .unwrap_or_default();
        let jump = jump_rule(&spec);
        if !hook_rules.contains(&jump) {
            problems.push(problem(ProblemKind::JumpMissing { hook: spec.hook }));
        } else if hook_rules.first() != Some(&jump) {
            problems.push(problem(ProblemKind::JumpNotFirst { hook: spec.hook }));
        }
    }
    Ok(problems)
}

/// Asks iptables whether `rule` is in the chain (`-C`), which compares rules the way
/// iptables parses them rather than as text.
async fn rule_exists(
    spec: &ChainSpec,
    rule: &[String],
    runner: &Runner,
) -> Result<bool, HostSetupError> {
    let mut args = table_args(spec.table, &["-C", &spec.chain]);
    args.extend(rule.iter().cloned());
    let (output, display) = runner.output(spec.family.iptables(), &args).await?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(command_failed(display, &output)),
    }
}

/// Deletes the jumps and chains that [`apply`] installed for `config`; chains of other
/// suffixes stay. `DOCKER-USER` stays, because Docker owns it once it runs.
pub async fn remove(config: &FirewallConfig, runner: &Runner) -> Result<(), HostSetupError> {
    config.validate()?;
    for spec in desired_chains(config) {
        let hook_rules = chain_rules(spec.family, spec.table, spec.hook, runner)
            .await?
            .unwrap_or_default();
        let jump = jump_rule(&spec);
        for _ in hook_rules.iter().filter(|rule| **rule == jump) {
            runner
                .run(
                    spec.family.iptables(),
                    &table_args(spec.table, &["-D", spec.hook, "-j", &spec.chain]),
                )
                .await?;
        }
        if chain_rules(spec.family, spec.table, &spec.chain, runner)
            .await?
            .is_some()
        {
            runner
                .run(
                    spec.family.iptables(),
                    &table_args(spec.table, &["-F", &spec.chain]),
                )
                .await?;
            runner
                .run(
                    spec.family.iptables(),
                    &table_args(spec.table, &["-X", &spec.chain]),
                )
                .await?;
        }
    }
    tracing::info!(chain_suffix = %config.chain_suffix, "Host firewall rules removed");
    Ok(())
}
