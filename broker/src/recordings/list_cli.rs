//! `strongroom recording list`: the recordings catalogue as tab-separated lines, so
//! that operators find the id to hold, release, verify or export.

use crate::auth::users::{self, ShownNames};
use crate::cli::InputError;
use crate::db::Database;

use super::catalogue::{self, Filter};
use super::replay::parse_time;

/// Filters of `recording list`, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ListArgs {
    /// Username or user id of the person recorded.
    pub person: Option<String>,
    pub site: Option<String>,
    /// Recordings that started at or after this date or RFC 3339 time.
    pub from: Option<String>,
    /// Recordings that started on or before this date, or before this RFC 3339 time.
    pub to: Option<String>,
    pub limit: u32,
}

/// Prints one line per recording, newest first: id, person, site, start, end, state
/// and legal hold, separated by tabs. Returns the exit code.
pub async fn run(db: &Database, args: &ListArgs) -> i32 {
    match list(db, args).await {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            crate::cli::exit_code_of(&error)
        }
    }
}

async fn list(db: &Database, args: &ListArgs) -> anyhow::Result<Vec<String>> {
    let mut filter = Filter {
        site: args.site.clone(),
        limit: Some(args.limit),
        ..Filter::default()
    };
    if let Some(person) = &args.person {
        filter.user_id = Some(users::id_for_filter(db, person).await?);
    }
    for (option, value, end_of_day, slot) in [
        ("--from", &args.from, false, &mut filter.started_from),
        ("--to", &args.to, true, &mut filter.started_before),
    ] {
        if let Some(text) = value {
            let time = parse_time(text, end_of_day).ok_or_else(|| {
                InputError(format!(
                    "invalid {option} {text:?}; use a date such as 2026-12-05 or an RFC 3339 time"
                ))
            })?;
            *slot = Some(time);
        }
    }

    let entries = catalogue::list(db, &filter).await?;
    let names = ShownNames::load(db, entries.iter().map(|entry| entry.user_id.as_str())).await?;
    Ok(entries
        .iter()
        .map(|entry| {
            let ended = entry
                .ended_at
                .map(|time| time.to_rfc3339())
                .unwrap_or_else(|| "-".to_owned());
            format!(
                "{}\t{}\t{}\t{}\t{ended}\t{}\t{}",
                entry.id,
                names.get(&entry.user_id),
                entry.site,
                entry.started_at.to_rfc3339(),
                entry.state.as_str(),
                if entry.legal_hold { "held" } else { "-" },
            )
        })
        .collect())
}
