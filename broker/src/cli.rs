//! The `strongroom` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, CONFIG_ENV, Config};
use crate::db::Database;
use crate::server::{self, StartupError};
use crate::{audit, telemetry};

#[derive(Debug, Parser)]
#[command(name = "strongroom", version, about = "Isolated banking session broker with recording")]
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
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Audit { command: AuditCommand::Verify } => audit_verify(config).await,
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

async fn serve(config: Config) -> i32 {
    let broker = match server::start(config).await {
        Ok(broker) => broker,
        Err(error) => return report_startup(error),
    };

    println!("Strongroom is listening on {}", broker.base_url());
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal received; exiting without waiting for background tasks");
        std::process::exit(130);
    });
    broker.shutdown().await;
    0
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
            println!("audit chain intact: {} events, head {} {}", report.events_checked, report.head_seq, report.head_hash);
            0
        }
        Ok(report) => {
            println!("audit chain BROKEN: {} events checked", report.events_checked);
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
