//! The site's logout recipe (`login.logout_steps`), run in the workspace before it is
//! removed, so the bank ends its own session and not only loses the browser.
//!
//! The recipe travels as an auto-login command without credentials: the logout recipe
//! has no `type_*` steps, its credentials are empty and no origin is allowed, so the
//! agent can type nothing. The agent hides the screen while it runs, as for a login.
//! NOTE: the stream link audits the result as `credential.auto_login.finished`, with
//! the logout's `login_id`.

use std::time::Duration;

use protocol::{AllowedOrigins, AutoLogin, BrokerMessage, Credentials};

use super::LoginRecipe;
use crate::stream::LiveStream;

/// Maximum time a session's end waits for the logout recipe, whatever its step
/// timeouts add up to. Ending every session at broker shutdown waits this long at most
/// per session that has a recipe.
pub const MAX_LOGOUT_WAIT: Duration = Duration::from_secs(10);

/// Time the agent gets on top of the recipe's step timeouts to report the result.
const RESULT_MARGIN: Duration = Duration::from_secs(3);

/// Runs `recipe` in the workspace of `stream` and waits for the agent's result, for
/// at most `limit` or the recipe's step timeouts plus a margin, whichever is shorter. Returns the
/// reason when the logout did not finish.
pub async fn run(stream: &LiveStream, recipe: &LoginRecipe, limit: Duration) -> Result<(), String> {
    let steps = recipe.agent_steps();
    let steps_total = Duration::from_millis(steps.iter().map(|step| u64::from(step.timeout_ms())).sum());
    let wait = limit.min(steps_total + RESULT_MARGIN);
    let login_id = rand::random::<u64>();
    let message = BrokerMessage::AutoLogin(AutoLogin {
        login_id,
        steps,
        credentials: Credentials {
            username: "".into(),
            password: "".into(),
            totp: None,
        },
        allowed_origins: AllowedOrigins {
            username: Vec::new(),
            password: Vec::new(),
            totp: Vec::new(),
        },
    });
    if !stream.send_to_agent(message) {
        return Err("the workspace link is gone or busy".to_owned());
    }
    match tokio::time::timeout(wait, stream.login_finished(login_id)).await {
        Ok(Some(result)) if result.success => Ok(()),
        Ok(Some(result)) => Err(result
            .reason
            .unwrap_or_else(|| "the agent gave no reason".to_owned())),
        Ok(None) => Err("the stream ended before the logout finished".to_owned()),
        Err(_) => Err(format!("no result from the workspace within {} s", wait.as_secs_f32())),
    }
}
