//! `strongroom quota show|set`.

use crate::cli::QuotaCommand;
use crate::config::Config;
use crate::db::Database;
use crate::sessions::quota::{self, QuotaCommandError, QuotaView};

/// Runs one quota command and returns the process exit code: 0, 1 when storage
/// failed, or 2 when the input was rejected.
pub async fn run(db: &Database, config: &Config, command: QuotaCommand) -> i32 {
    if let Err(error) = db.migrate().await {
        eprintln!("error: {error:#}");
        return 1;
    }
    let default_quota = config.sessions.default_quota;
    let result = match command {
        QuotaCommand::Show { user } => quota::show(db, &user, default_quota)
            .await
            .map(|view| println!("{}", describe(&view, default_quota))),
        QuotaCommand::Set { user, max_sessions } => {
            let audit = crate::audit::AuditLog::new(
                db.clone(),
                std::sync::Arc::new(crate::clock::SystemClock),
            );
            let actor = crate::audit::Actor::System("cli");
            quota::set(db, &audit, actor, &user, max_sessions, default_quota)
                .await
                .map(|(before, after)| {
                    println!(
                        "quota of {}: {} -> {}",
                        name(&after),
                        before.effective,
                        after.effective
                    );
                    if after.live > after.effective {
                        println!(
                            "{} live sessions keep running; new launches are refused until fewer than {} are live",
                            after.live, after.effective
                        );
                    }
                })
        }
    };
    match result {
        Ok(()) => 0,
        Err(error @ (QuotaCommandError::UnknownPerson(_) | QuotaCommandError::TooLarge { .. })) => {
            eprintln!("error: {error}");
            2
        }
        Err(QuotaCommandError::Storage(error)) => {
            eprintln!("error: {error:#}");
            1
        }
    }
}

fn name(view: &QuotaView) -> String {
    match &view.username {
        Some(username) => format!("{username} ({})", view.user_id),
        None => view.user_id.clone(),
    }
}

fn describe(view: &QuotaView, default_quota: u32) -> String {
    let source = match view.own {
        Some(_) => "set for this person".to_owned(),
        None => format!("sessions.default_quota = {default_quota}"),
    };
    format!(
        "{}: quota {} ({source}), {} live",
        name(view),
        view.effective,
        view.live
    )
}
