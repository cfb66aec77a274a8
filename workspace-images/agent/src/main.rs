use clap::Parser;

/// Environment variable with the log filter directives.
const LOG_VARIABLE: &str = "RUST_LOG";

/// Reads the log filter from [`LOG_VARIABLE`]: "info" when it is unset or empty, and a
/// refusal that names the variable and its value when the value is not a filter.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, String> {
    let value = match std::env::var(LOG_VARIABLE) {
        Ok(value) if !value.trim().is_empty() => value,
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            return Ok(tracing_subscriber::EnvFilter::new("info"));
        }
        Err(std::env::VarError::NotUnicode(value)) => {
            return Err(format!(
                "{LOG_VARIABLE}={value:?} is not valid UTF-8; set a level such as \"info\""
            ));
        }
    };
    tracing_subscriber::EnvFilter::try_new(&value).map_err(|error| {
        format!(
            "invalid {LOG_VARIABLE}={value:?}: {error}; set a level such as \"info\" or \
             directives such as \"strongroom_agent=debug,info\""
        )
    })
}

fn main() -> std::process::ExitCode {
    let filter = match log_filter() {
        Ok(filter) => filter,
        Err(message) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let args = strongroom_agent::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .json()
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "Starting the async runtime failed");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(strongroom_agent::run(args)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "Agent failed");
            std::process::ExitCode::from(2)
        }
    }
}
