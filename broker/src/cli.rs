//! The `strongroom` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, CONFIG_ENV, Config};
use crate::db::Database;
use crate::server::{self, StartupError};
use crate::{audit, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "strongroom",
    version,
    about = "Isolated banking session broker with recording"
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
    /// Validate the configuration, print every problem found, and exit.
    CheckConfig,
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
    /// Workspace image tools.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Local accounts: add, set roles, reset TOTP, list.
    User {
        #[command(subcommand)]
        command: crate::auth::cli::UserCommand,
    },
    /// Bank credentials for auto-login in the local encrypted store: set, delete, list.
    Credential {
        #[command(subcommand)]
        command: crate::secrets::cli::CredentialCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Create or update the sites defined in a TOML file; nothing is stored when any
    /// site is invalid.
    Import { file: PathBuf },
    /// Allow a person (username or id) to open a site.
    Grant { user: String, site: String },
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
    /// Write a WebM file of a recording whose segments all match the audit chain.
    Export { id: uuid::Uuid, output: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the workspace image from Debian packages and import it into the engine.
    /// An image of the same recipe, agent and package versions is not built again.
    Build {
        /// Re-resolve package versions, so that Debian updates produce a new image.
        #[arg(long)]
        refresh: bool,
        /// The agent binary to put in the image. Default: `strongroom-agent` beside
        /// this binary.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the whole hash chain and report every edited, deleted or reordered event.
    Verify,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();

    let config = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return 2;
        }
    };

    if let Command::CheckConfig = cli.command {
        println!("configuration is valid ({})", describe(&config));
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

    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config, cli.config.clone()).await,
            Command::Launcher => launcher(config).await,
            Command::Recording { command } => match open(&config).await {
                Ok(db) => recording(&config, &db, command).await,
                Err(code) => code,
            },
            Command::HostSetup { check, remove } => host_setup(&config, check, remove).await,
            Command::Site { command } => match open(&config).await {
                Ok(db) => site(&db, command).await,
                Err(code) => code,
            },
            Command::Quota { command } => match open(&config).await {
                Ok(db) => crate::cli_quota::run(&db, &config, command).await,
                Err(code) => code,
            },
            Command::Image {
                command: ImageCommand::Build { refresh, agent },
            } => image_build(refresh, agent).await,
            Command::Migrate => migrate(config).await,
            Command::Audit {
                command: AuditCommand::Verify,
            } => audit_verify(config).await,
            Command::User { command } => match open(&config).await {
                Ok(db) => crate::auth::cli::run(&config, &db, command).await,
                Err(code) => code,
            },
            Command::Credential { command } => match open(&config).await {
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

async fn serve(config: Config, config_path: Option<PathBuf>) -> i32 {
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
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal received; exiting without waiting for background tasks");
        std::process::exit(130);
    });
    broker.shutdown().await;
    supervisor_stop.cancel();
    if let Some(supervisor) = supervisor {
        let _ = supervisor.await;
    }
    0
}

async fn site(db: &Database, command: SiteCommand) -> i32 {
    if let Err(error) = db.migrate().await {
        eprintln!("error: {error:#}");
        return 1;
    }
    let audit =
        crate::audit::AuditLog::new(db.clone(), std::sync::Arc::new(crate::clock::SystemClock));
    let actor = crate::audit::Actor::System("cli");
    match command {
        SiteCommand::Import { file } => {
            match crate::sites::import_file_audited(db, &audit, actor, &file).await {
                Ok(report) => {
                    println!(
                        "sites created: {:?}; updated: {:?}",
                        report.created, report.updated
                    );
                    0
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    2
                }
            }
        }
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
                .target(format!("site:{site}"))
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
        RecordingCommand::Export { id, output } => {
            match crate::recordings::export(config, &audit, id, &output).await {
                Ok(summary) => {
                    println!(
                        "exported {} packets, {:.1} s, to {}",
                        summary.packets,
                        summary.duration.as_secs_f64(),
                        output.display()
                    );
                    0
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    1
                }
            }
        }
    }
}

async fn image_build(refresh: bool, agent: Option<PathBuf>) -> i32 {
    let agent = agent.or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("strongroom-agent")))
    });
    let Some(agent) = agent else {
        eprintln!("error: cannot locate strongroom-agent; pass --agent PATH");
        return 2;
    };
    match crate::launcher_process::build_workspace_image(agent, refresh).await {
        Ok(reference) => {
            println!("workspace image ready: {reference}");
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
    let image_from_build = config.launcher.image_from_build;
    match crate::launcher_process::run_standalone(launcher_config, image_from_build, shutdown).await
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
    let db = match open(&config).await {
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

async fn audit_verify(config: Config) -> i32 {
    let db = match open(&config).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    match audit::verify(&db).await {
        Ok(report) if report.is_intact() => {
            println!(
                "audit chain intact: {} events, head {} {}",
                report.events_checked, report.head_seq, report.head_hash
            );
            0
        }
        Ok(report) => {
            println!(
                "audit chain BROKEN: {} events checked",
                report.events_checked
            );
            for problem in &report.problems {
                println!("  event {}: {:?}", problem.seq, problem.kind);
            }
            1
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

async fn open(config: &Config) -> Result<Database, i32> {
    if let Err(error) = crate::instance::prepare_data_dir(&config.data_dir) {
        eprintln!("error: {error:#}");
        return Err(2);
    }
    Database::connect(&config.database).await.map_err(|error| {
        eprintln!("error: {error}");
        2
    })
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
