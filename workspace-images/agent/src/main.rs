use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = strongroom_agent::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
