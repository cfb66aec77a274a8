//! `strongroom-demo-bank`: serves the demo bank (HTTPS) and its `/received` report
//! (plain HTTP) until SIGTERM or Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use clap::Parser;
use strongroom_demo_bank::{Account, BankState, bank_router, received_router, tls};

#[derive(Debug, Parser)]
#[command(
    name = "strongroom-demo-bank",
    about = "A small bank website for Strongroom demos and tests"
)]
struct Args {
    /// Address of the bank's HTTPS port.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Address of the plain-HTTP port that serves `/received` and `/ca.pem`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    received_listen: SocketAddr,
    /// Directory with the files `username`, `password` and `totp-seed` (base32).
    #[arg(long, value_name = "DIR")]
    account_dir: PathBuf,
    /// File with the bearer token that `/received` requires (at least 16 characters).
    #[arg(long, value_name = "PATH")]
    received_token_file: PathBuf,
    /// Account holder name shown on the account page.
    #[arg(long, default_value = "Ada Lovelace")]
    holder: String,
    /// Host name for the generated certificate; repeat for several.
    #[arg(long = "hostname", default_value = "demo-bank.test")]
    hostnames: Vec<String>,
    /// IP address for the generated certificate; repeat for several.
    #[arg(long = "ip")]
    addresses: Vec<IpAddr>,
    /// PEM certificate chain; with `--tls-key` replaces the generated certificate.
    #[arg(long, requires = "tls_key", value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert", value_name = "PATH")]
    tls_key: Option<PathBuf>,
}

/// Environment variable with the log filter directives.
const LOG_VARIABLE: &str = "DEMO_BANK_LOG";

/// Reads the log filter from [`LOG_VARIABLE`]: "info" when it is unset or empty, and an
/// error that names the variable and its value when the value is not a filter.
fn log_filter() -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let value = match std::env::var(LOG_VARIABLE) {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            return Ok(tracing_subscriber::EnvFilter::new("info"));
        }
        Err(std::env::VarError::NotUnicode(value)) => {
            anyhow::bail!(
                "{LOG_VARIABLE}={value:?} is not valid UTF-8; set a level such as \"info\""
            )
        }
    };
    tracing_subscriber::EnvFilter::try_new(&value).map_err(|error| {
        anyhow::anyhow!(
            "invalid {LOG_VARIABLE}={value:?}: {error}; set a level such as \"info\" or \
             directives such as \"strongroom_demo_bank=debug,info\""
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter()?)
        .init();
    let args = Args::parse();
    drop(rustls::crypto::ring::default_provider().install_default());

    let account = Account::from_dir(&args.account_dir, &args.holder)?;
    let token = std::fs::read_to_string(&args.received_token_file)
        .with_context(|| {
            format!(
                "cannot read the token file {}",
                args.received_token_file.display()
            )
        })?
        .trim()
        .to_owned();

    let (tls_config, ca_pem) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("cannot load {} and {}", cert.display(), key.display()))?;
            (config, None)
        }
        _ => {
            let generated = tls::generate(&args.hostnames, &args.addresses)?;
            let config = RustlsConfig::from_pem(
                generated.chain_pem.into_bytes(),
                generated.key_pem.into_bytes(),
            )
            .await
            .context("cannot use the generated certificate")?;
            (config, Some(generated.ca_pem))
        }
    };
    let state = BankState::new(account, token, ca_pem)?;

    let received_listener = tokio::net::TcpListener::bind(args.received_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.received_listen))?;
    let handle = axum_server::Handle::new();
    let bank = axum_server::bind_rustls(args.listen, tls_config)
        .handle(handle.clone())
        .serve(bank_router(state.clone()).into_make_service());
    let received = axum::serve(received_listener, received_router(state))
        .with_graceful_shutdown(shutdown_signal());
    tracing::info!(listen = %args.listen, received_listen = %args.received_listen, "Demo bank started");

    let stop_bank = async {
        shutdown_signal().await;
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    };
    let (bank, received, ()) = tokio::join!(bank, received, stop_bank);
    bank.context("the HTTPS server failed")?;
    received.context("the /received server failed")?;
    tracing::info!("Demo bank stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
