//! The `strongroom` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, CONFIG_ENV, Config};
use crate::db::Database;
use crate::server::{self, StartupError};
use crate::telemetry;

/// Exit codes of every command, shown at the end of `--help`.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 an operation failed (database, Docker, \
network, files); 2 the input was rejected (configuration, an unknown person, site or \
recording, or an invalid value), and the message names it.";

/// Input that a command rejects: an unknown person or site, or an invalid value. Its
/// message names the value and the fix, and the command exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Returns the exit code of a failed command: 2 when the cause is an [`InputError`],
/// otherwise 1.
pub fn exit_code_of(error: &anyhow::Error) -> i32 {
    if error.downcast_ref::<InputError>().is_some() {
        2
    } else {
        1
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "strongroom",
    version,
    about = "Isolated banking session broker with recording",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, embedded defaults apply.
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: portal, API and background tasks.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration, print every problem found, and exit. A valid
    /// configuration prints a summary, then `portal: URL` with the scheme and address
    /// the portal serves, `tls: MODE` (`plain`, `files` or `generated`) and
    /// `data_dir: PATH`, one per line for scripts.
    CheckConfig,
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: crate::audit::cli::AuditCommand,
    },
    /// Run the launcher: the only process that talks to the Docker engine.
    Launcher,
    /// Site catalogue: import definitions, grant sites to people.
    Site {
        #[command(subcommand)]
        command: SiteCommand,
    },
    /// Per-person session quotas: show one, or set one (audited).
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// Install the host firewall rules that keep workspaces away from the host and
    /// from each other (root; running it again changes nothing).
    HostSetup {
        /// Only report missing or unexpected rules; exit 1 when there are any.
        #[arg(long, conflicts_with = "remove")]
        check: bool,
        /// Remove the rules this command installed.
        #[arg(long)]
        remove: bool,
    },
    /// Recordings: verify against the audit chain, export as WebM.
    Recording {
        #[command(subcommand)]
        command: RecordingCommand,
    },
    /// Recording keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Workspace image tools.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Local accounts: add, set roles, unlock, reset MFA, list.
    User {
        #[command(subcommand)]
        command: crate::auth::cli::UserCommand,
    },
    /// Bank credentials for auto-login in the local encrypted store: set, delete, list;
    /// failure locks: locked, unlock.
    #[command(alias = "credential")]
    Secrets {
        #[command(subcommand)]
        command: crate::secrets::cli::CredentialCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Create or update the sites defined in a TOML file; nothing is stored when any
    /// site is invalid. Under dual control, new sites and changes to allowlists,
    /// credential origins, recipes or credential sources wait for a second admin.
    Import {
        file: PathBuf,
        /// The admin (username or id) requesting the changes; required under dual
        /// control. The admin confirms with their password and TOTP code.
        #[arg(long)]
        admin: Option<String>,
        /// File with the admin's password and current TOTP code on two lines, readable
        /// only by its owner; without it both are read from standard input, and a
        /// terminal does not echo them.
        #[arg(long, requires = "admin")]
        confirm_file: Option<PathBuf>,
    },
    /// List site changes waiting for a second admin.
    Pending,
    /// Apply a pending site change as the second admin.
    Approve {
        id: uuid::Uuid,
        /// The approving admin (username or id); not the one who requested the change.
        /// The admin confirms with their password and TOTP code.
        #[arg(long)]
        admin: String,
        /// File with the admin's password and current TOTP code on two lines, readable
        /// only by its owner; without it both are read from standard input, and a
        /// terminal does not echo them.
        #[arg(long)]
        confirm_file: Option<PathBuf>,
    },
    /// Discard a pending site change as the second admin.
    Reject {
        id: uuid::Uuid,
        /// The rejecting admin (username or id), who confirms as for `approve`.
        #[arg(long)]
        admin: String,
        /// As for `approve`.
        #[arg(long)]
        confirm_file: Option<PathBuf>,
    },
    /// Allow a person (username or id) to open a site.
    Grant { user: String, site: String },
    /// List the catalogue: name, state, start URL, auto-login and credential source.
    List,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Print a person's (username or id) quota, where it comes from, and their live
    /// sessions.
    Show { user: String },
    /// Set the maximum number of concurrent live sessions of a person (username or id),
    /// from 0 to 1000. Running sessions are not ended; the quota applies to launches.
    Set { user: String, max_sessions: u32 },
}

#[derive(Debug, Subcommand)]
pub enum RecordingCommand {
    /// Check every segment file against its hash in the audit chain and report each
    /// flipped, reordered, swapped, truncated or missing segment by index.
    Verify { id: uuid::Uuid },
    /// Export a recording whose segments all match the audit chain as evidence: DIR
    /// gets `recording.webm`, `manifest.json` with the segment hashes, and the
    /// manifest's Ed25519 signature `manifest.sig`.
    Export { id: uuid::Uuid, dir: PathBuf },
    /// Check an export directory offline against a pinned public key.
    VerifyExport {
        dir: PathBuf,
        /// File with the export signing key's public half (from `recording public-key`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// Write the export signing key's public half to FILE, for pinning by verifiers.
    PublicKey { output: PathBuf },
    /// Delete expired recordings that are not on legal hold, and destroy the keys of
    /// ended retention periods. Every deletion is audited.
    Retention {
        /// List what would be deleted and destroyed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List recordings, newest first, one per line with tab-separated fields: id,
    /// person, site, start, end (`-` while recording), state and legal hold (`held`
    /// or `-`). Times are RFC 3339 in UTC.
    List {
        /// Only this person's recordings: a username or a user id.
        #[arg(long)]
        person: Option<String>,
        /// Only recordings of this site.
        #[arg(long)]
        site: Option<String>,
        /// Only recordings that started at or after this date (2026-12-05) or RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Only recordings that started on or before this date, or before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Maximum number of lines, 1 to 1000.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Place a recording on legal hold: retention keeps it until it is released.
    Hold { id: uuid::Uuid },
    /// Release a recording from legal hold; retention deletes it once it has expired.
    Release { id: uuid::Uuid },
    /// Internal: the unprivileged muxing process of `export`. Reads the packet stream
    /// on stdin and writes WebM to stdout, which must be a file.
    #[command(hide = true)]
    Mux {
        /// User id to switch to when started as root.
        #[arg(long, default_value_t = 65534)]
        uid: u32,
        /// Group id to switch to when started as root.
        #[arg(long, default_value_t = 65534)]
        gid: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every recording's data key under a new key of its retention period and
    /// every held recording's data key under a new hold key, then destroy the old
    /// period and hold keys. Video files are not touched.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from Debian packages and import it into the engine. An image of
    /// the same recipe, binary and package versions is not built again.
    Build {
        /// Which image to build.
        #[arg(long, value_enum, default_value = "workspace")]
        recipe: crate::image_cli::ImageRecipe,
        /// Re-resolve package versions, so that Debian updates produce a new image.
        #[arg(long)]
        refresh: bool,
        /// The binary to put in the image: `strongroom-agent` for the workspace,
        /// `strongroom-demo-bank` or `strongroom`. Default: that file beside this binary.
        #[arg(long, visible_alias = "agent", value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();

    // The muxing child reads no configuration, opens no database and starts no runtime.
    if let Command::Recording {
        command: RecordingCommand::Mux { uid, gid },
    } = cli.command
    {
        return crate::recordings::mux::run_child(uid, gid);
    }
    if let Command::Recording {
        command: RecordingCommand::VerifyExport { dir, public_key },
    } = &cli.command
    {
        return verify_export(dir, public_key);
    }

    let config = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };

    if let Command::CheckConfig = cli.command {
        println!("configuration is valid ({})", describe(&config));
        println!("portal: {}", portal_url(&config));
        println!("tls: {}", tls_mode_name(&config.server.tls));
        println!("data_dir: {}", config.data_dir.display());
        return 0;
    }

    telemetry::init(&config.log.level, config.log.format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };

    let access = database_access(&cli.command);
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config, cli.config.clone()).await,
            Command::Launcher => launcher(config).await,
            Command::Recording { command } => match open(&config, access).await {
                Ok(db) => recording(&config, &db, command).await,
                Err(code) => code,
            },
            Command::Keys { command: KeysCommand::Rotate } => match open(&config, access).await {
                Ok(db) => crate::recordings::rotate_keys_command(&config, &db).await,
                Err(code) => code,
            },
            Command::HostSetup { check, remove } => host_setup(&config, check, remove).await,
            Command::Site { command } => match open(&config, access).await {
                Ok(db) => site(&config, &db, command).await,
                Err(code) => code,
            },
            Command::Quota { command } => match open(&config, access).await {
                Ok(db) => crate::cli_quota::run(&db, &config, command).await,
                Err(code) => code,
            },
            Command::Image {
                command:
                    ImageCommand::Build {
                        recipe,
                        refresh,
                        binary,
                    },
            } => image_build(recipe, refresh, binary).await,
            Command::Migrate => migrate(config).await,
            Command::Audit { command } => match open(&config, access).await {
                Ok(db) => crate::audit::cli::run(&config, &db, command).await,
                Err(code) => code,
            },
            Command::User { command } => match open(&config, access).await {
                Ok(db) => crate::auth::cli::run(&config, &db, command).await,
                Err(code) => code,
            },
            Command::Secrets { command } => match open(&config, access).await {
                Ok(db) => crate::secrets::cli::run(&config, &db, command).await,
                Err(code) => code,
            },
            Command::CheckConfig => unreachable!("handled before the runtime starts"),
        }
    })
}

fn describe(config: &Config) -> String {
    format!(
        "listen {}, database {}, data directory {}",
        config.server.listen,
        config.database.target.backend_name(),
        config.data_dir.display()
    )
}

/// Returns the URL of the portal's listener as configured, such as
/// `https://0.0.0.0:8443`; a name such as `localhost:8080` is kept as written.
fn portal_url(config: &Config) -> String {
    let scheme = match config.server.tls {
        crate::config::TlsMode::PlainLoopback => "http",
        _ => "https",
    };
    format!("{scheme}://{}", config.server.listen.text)
}

fn tls_mode_name(tls: &crate::config::TlsMode) -> &'static str {
    match tls {
        crate::config::TlsMode::PlainLoopback => "plain",
        crate::config::TlsMode::Files { .. } => "files",
        crate::config::TlsMode::Generated => "generated",
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> i32 {
    let mut signals = match crate::signals::StopSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot install the SIGTERM and SIGINT handlers: {error}");
            return 1;
        }
    };
    if let Some(path) = missing_sqlite_file(&config) {
        tracing::info!(path = %path.display(), "Creating a new SQLite database");
    }
    // The instance id exists before the launcher child starts, so that both processes
    // read the same one.
    let prepared = crate::instance::prepare_data_dir(&config.data_dir)
        .and_then(|()| crate::instance::load_or_create(&config.data_dir));
    if let Err(error) = prepared {
        return report_startup(StartupError::Config(error));
    }
    // One broker per data directory: a second one would take over the launcher socket
    // and the instance's containers. The lock lives as long as this function.
    let _data_dir_lock = match crate::instance::lock_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(error) => return report_startup(StartupError::Config(error)),
    };

    let embedded = config.launcher.mode == crate::config::launcher::LauncherMode::Embedded;
    let launcher_socket = config.sessions.launcher_socket.clone();
    let supervisor_stop = tokio_util::sync::CancellationToken::new();
    let supervisor = embedded.then(|| {
        tokio::spawn(crate::launcher_process::supervise_child(
            config_path,
            supervisor_stop.clone(),
        ))
    });

    let broker = match server::start(config).await {
        Ok(broker) => broker,
        Err(error) => {
            supervisor_stop.cancel();
            if let Some(supervisor) = supervisor {
                let _ = supervisor.await;
            }
            return report_startup(error);
        }
    };

    println!("Strongroom is listening on {}", broker.base_url());
    let name = signals.next().await;
    tracing::info!(signal = name, "Shutdown requested");
    tokio::spawn(crate::signals::force_after_second_signal(
        signals,
        launcher_socket,
    ));
    broker.shutdown().await;
    supervisor_stop.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    0
}

async fn site(config: &Config, db: &Database, command: SiteCommand) -> i32 {
    if let Err(error) = db.migrate().await {
        eprintln!("error: {error:#}");
        return 1;
    }
    let audit =
        crate::audit::AuditLog::new(db.clone(), std::sync::Arc::new(crate::clock::SystemClock));
    let actor = crate::audit::Actor::System("cli");
    match command {
        SiteCommand::Import {
            file,
            admin,
            confirm_file,
        } => {
            let options = match crate::sites::cli::import_options(
                config,
                db,
                &audit,
                admin.as_deref(),
                confirm_file.as_deref(),
            )
            .await
            {
                Ok(options) => options,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return exit_code_of(&error);
                }
            };
            let actor = match &admin {
                Some(_) => crate::audit::Actor::Person(options.requested_by.clone()),
                None => actor,
            };
            match crate::sites::import_file_audited(db, &audit, actor, &file, &options).await {
                Ok(report) => {
                    println!(
                        "sites created: {:?}; updated: {:?}",
                        report.created, report.updated
                    );
                    for (name, id, fields) in &report.pending {
                        println!(
                            "site {name}: change {id} to {} waits for a second admin: strongroom site approve {id} --admin NAME",
                            fields.join(", ")
                        );
                    }
                    0
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    error.exit_code()
                }
            }
        }
        SiteCommand::Pending => crate::sites::cli::pending(db).await,
        SiteCommand::Approve {
            id,
            admin,
            confirm_file,
        } => {
            let request = crate::sites::cli::DecisionRequest {
                id,
                admin: &admin,
                confirm_file: confirm_file.as_deref(),
                approve: true,
            };
            crate::sites::cli::decide(config, db, &audit, request).await
        }
        SiteCommand::Reject {
            id,
            admin,
            confirm_file,
        } => {
            let request = crate::sites::cli::DecisionRequest {
                id,
                admin: &admin,
                confirm_file: confirm_file.as_deref(),
                approve: false,
            };
            crate::sites::cli::decide(config, db, &audit, request).await
        }
        SiteCommand::List => match crate::sites::list(db).await {
            Ok(sites) => {
                for site in sites {
                    println!("{}", crate::sites::summary_line(&site));
                }
                0
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                1
            }
        },
        SiteCommand::Grant { user, site } => {
            let person = match crate::auth::users::find(db, &user).await {
                Ok(Some(person)) => person,
                Ok(None) => {
                    eprintln!(
                        "error: no person named {user:?}; list them with `strongroom user list`"
                    );
                    return 2;
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return 1;
                }
            };
            match crate::sites::get(db, &site).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    eprintln!(
                        "error: no site named {site:?}; import it with `strongroom site import FILE`"
                    );
                    return 2;
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return 1;
                }
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            let granted = crate::sites::grant(db, &person.id, &site, "system:cli", now_ms).await;
            let event = crate::audit::EventBuilder::new(actor, crate::audit::Action::SiteChanged)
                .target(crate::sites::audit_target(&site))
                .detail("granted_to", person.id.clone())
                .build();
            match granted {
                Ok(()) => match audit.append(event).await {
                    Ok(_) => {
                        println!("{user} may now open {site}");
                        0
                    }
                    Err(error) => {
                        eprintln!("error: {error:#}");
                        1
                    }
                },
                Err(error) => {
                    eprintln!("error: {error:#}");
                    1
                }
            }
        }
    }
}

async fn host_setup(config: &Config, check: bool, remove: bool) -> i32 {
    use egress::host_setup;

    let firewall = crate::launcher_process::firewall_config(config);
    let runner = host_setup::Runner::host();
    let result = if remove {
        host_setup::remove(&firewall, &runner)
            .await
            .map(|()| "host firewall rules removed".to_owned())
    } else if check {
        match host_setup::check(&firewall, &runner).await {
            Ok(problems) if problems.is_empty() => Ok("host firewall rules complete".to_owned()),
            Ok(problems) => {
                for problem in &problems {
                    println!("missing or unexpected: {problem}");
                }
                eprintln!(
                    "error: {} host firewall problem(s); run `strongroom host-setup` as root",
                    problems.len()
                );
                return 1;
            }
            Err(error) => Err(error),
        }
    } else {
        host_setup::apply(&firewall, &runner).await.map(|()| {
            format!(
                "host firewall rules installed for sessions in {} (proxy port {})",
                firewall.session_range, firewall.proxy_port
            )
        })
    };
    match result {
        Ok(message) => {
            println!("{message}");
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    }
}

async fn recording(config: &Config, db: &Database, command: RecordingCommand) -> i32 {
    let audit =
        crate::audit::AuditLog::new(db.clone(), std::sync::Arc::new(crate::clock::SystemClock));
    match command {
        RecordingCommand::Verify { id } => {
            match crate::recordings::verify(config, &audit, id).await {
                Ok(report) if report.is_intact() => {
                    println!(
                        "recording {id} intact: {} segments, sealed: {}",
                        report.found_segments, report.sealed
                    );
                    0
                }
                Ok(report) => {
                    println!("recording {id} DAMAGED:");
                    for problem in &report.problems {
                        println!("  segment {}: {:?}", problem.index, problem.kind);
                    }
                    1
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    1
                }
            }
        }
        RecordingCommand::Retention { dry_run } => {
            crate::recordings::retention::run_sweep_command(config, &audit, dry_run).await
        }
        RecordingCommand::List {
            person,
            site,
            from,
            to,
            limit,
        } => {
            let args = crate::recordings::list_cli::ListArgs {
                person,
                site,
                from,
                to,
                limit,
            };
            crate::recordings::list_cli::run(db, &args).await
        }
        RecordingCommand::Hold { id } => {
            crate::recordings::retention::run_hold_command(config, &audit, id, true).await
        }
        RecordingCommand::Release { id } => {
            crate::recordings::retention::run_hold_command(config, &audit, id, false).await
        }
        RecordingCommand::Mux { .. } => unreachable!("handled before the configuration loads"),
        RecordingCommand::Export { id, dir } => {
            match crate::recordings::evidence::export(config, &audit, id, &dir).await {
                Ok(manifest) => {
                    println!(
                        "exported recording {id}: {} segments, {:.1} s, to {}",
                        manifest.segment_sha256.len(),
                        manifest.duration_ms as f64 / 1000.0,
                        dir.display()
                    );
                    0
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    1
                }
            }
        }
        RecordingCommand::VerifyExport { .. } => {
            unreachable!("handled before the configuration loads")
        }
        RecordingCommand::PublicKey { output } => write_public_key(config, &output),
    }
}

/// `strongroom recording verify-export`: checks an export offline, with neither the
/// configuration nor the database, so that it runs on any machine.
fn verify_export(dir: &std::path::Path, public_key: &std::path::Path) -> i32 {
    let result = crate::recordings::evidence::read_public_key(public_key)
        .and_then(|key| crate::recordings::evidence::verify(dir, &key));
    match result {
        Ok(manifest) => {
            println!(
                "export of recording {} verified: signature valid, video matches, {} segments",
                manifest.recording_id,
                manifest.segment_sha256.len()
            );
            0
        }
        Err(error) => {
            eprintln!("error: export NOT verified: {error:#}");
            1
        }
    }
}

/// `strongroom recording public-key`: writes the export signing key's public half. The
/// caller opened the database first, so a wrong data directory fails instead of
/// creating a key nobody signs with.
fn write_public_key(config: &Config, output: &std::path::Path) -> i32 {
    match crate::recordings::evidence::write_public_key(config, output) {
        Ok(public) => {
            println!("wrote public key {public} to {}", output.display());
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

async fn image_build(
    recipe: crate::image_cli::ImageRecipe,
    refresh: bool,
    binary: Option<PathBuf>,
) -> i32 {
    match crate::image_cli::build(recipe, binary, refresh).await {
        Ok(reference) => {
            println!("image ready: {reference}");
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

async fn launcher(config: Config) -> i32 {
    let resolved = crate::instance::prepare_data_dir(&config.data_dir)
        .and_then(|()| crate::instance::load_or_create(&config.data_dir))
        .and_then(|instance_id| crate::launcher_process::resolved_config(&config, instance_id));
    let launcher_config = match resolved {
        Ok(launcher_config) => launcher_config,
        Err(error) => return report_startup(StartupError::Config(error)),
    };

    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
        wait_for_signal().await;
        eprintln!("second signal received; exiting without waiting for requests in progress");
        std::process::exit(130);
    });
    let image_source = config.launcher.image_source.clone();
    match crate::launcher_process::run_standalone(launcher_config, image_source, shutdown).await
    {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "Launcher failed");
            eprintln!("error: {error:#}");
            1
        }
    }
}

fn report_startup(error: StartupError) -> i32 {
    tracing::error!(error = %error, "Broker failed to start");
    eprintln!("error: {error}");
    error.exit_code()
}

async fn migrate(config: Config) -> i32 {
    let db = match open(&config, DatabaseAccess::Create).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    match db.migrate().await {
        Ok(()) => {
            println!("migrations applied ({})", db.backend_name());
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

/// Whether a command may create a missing SQLite database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatabaseAccess {
    /// The command works on stored data, so a missing database means it runs against
    /// the wrong data directory. It reports the path and creates nothing.
    Existing,
    /// The command sets up data (`migrate`, `serve`, `user add`, `site import`) and
    /// creates the database when it is missing, saying so.
    Create,
}

/// Returns how a command opens the database; commands that open none get `Existing`.
fn database_access(command: &Command) -> DatabaseAccess {
    use crate::auth::cli::UserCommand;

    match command {
        Command::Serve
        | Command::Migrate
        | Command::User {
            command: UserCommand::Add { .. },
        }
        | Command::Site {
            command: SiteCommand::Import { .. },
        } => DatabaseAccess::Create,
        _ => DatabaseAccess::Existing,
    }
}

/// Returns the SQLite file as an absolute path when it does not exist yet; `None` for
/// PostgreSQL or an existing file.
fn missing_sqlite_file(config: &Config) -> Option<PathBuf> {
    let crate::config::DatabaseTarget::Sqlite { path } = &config.database.target else {
        return None;
    };
    if path.exists() {
        return None;
    }
    Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()))
}

/// Explains where a missing database was looked for and how to point at the right one.
fn missing_database_message(path: &std::path::Path) -> String {
    format!(
        "no database at {}; this command works on stored data and creates no database. \
Run it from the directory that holds the data directory (where `scripts/start.sh` ran), \
give the broker's configuration with --config FILE or {CONFIG_ENV}=FILE, or set \
STRONGROOM_DATA_DIR to the data directory; `strongroom migrate` creates a new empty database",
        path.display()
    )
}

async fn open(config: &Config, access: DatabaseAccess) -> Result<Database, i32> {
    let missing = missing_sqlite_file(config);
    if let Some(path) = &missing
        && access == DatabaseAccess::Existing
    {
        eprintln!("error: {}", missing_database_message(path));
        return Err(2);
    }
    if let Err(error) = crate::instance::prepare_data_dir(&config.data_dir) {
        eprintln!("error: {error:#}");
        return Err(2);
    }
    let db = Database::connect(&config.database).await.map_err(|error| {
        eprintln!("error: {error}");
        2
    })?;
    if let Some(path) = missing {
        eprintln!("created a new SQLite database at {}", path.display());
    }
    Ok(db)
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "Shutdown requested"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "Shutdown requested"),
    }
}
