//! Auto-login: runs a recipe's steps over CDP and types credentials.
//!
//! Before any step runs, the agent starts a placeholder (no screen frames are sent) and
//! releases the viewer's held keys; person input is ignored while it lasts. Credentials
//! are typed with `DOM.focus` and one key down and key up per character, and only after the main frame's
//! security origin is found in the credential's allowed list. The placeholder ends once
//! the success condition holds and the page has painted again, or after a failure once
//! the filled fields are cleared.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::{AgentControl, AutoLogin, CredentialField, LoginStep, StepOutcome};
use serde_json::{Value, json};

use crate::browser::Page;
use crate::hub::Hub;

const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Reason a login step failed.
enum StepError {
    TimedOut,
    OriginRejected(String),
    Failed(String),
}

impl From<anyhow::Error> for StepError {
    fn from(error: anyhow::Error) -> Self {
        StepError::Failed(format!("{error:#}"))
    }
}

/// Runs `login` and reports each step and the result to the broker.
pub async fn run(page: Page, hub: Arc<Hub>, login: AutoLogin, release_input: impl Fn()) {
    let login_id = login.login_id;

    for field in [
        CredentialField::Username,
        CredentialField::Password,
        CredentialField::Totp,
    ] {
        if let Some(value) = login.credentials.get(field)
            && let Err(reason) = protocol::check_credential_typeable(value)
        {
            let reason = format!("the {} {reason}; nothing was typed", field_name(field));
            tracing::warn!(login_id, %reason, "Auto-login rejected");
            hub.send_control(&AgentControl::LoginFinished {
                login_id,
                success: false,
                reason: Some(reason),
            });
            return;
        }
    }

    hub.start_placeholder(login_id);
    release_input();
    let mut filled: Vec<String> = Vec::new();
    let mut failure = None;

    for (index, step) in login.steps.iter().enumerate() {
        let timeout = Duration::from_millis(u64::from(step.timeout_ms()));
        let outcome =
            match tokio::time::timeout(timeout, run_step(&page, &login, step, &mut filled)).await {
                Err(_) => Err(StepError::TimedOut),
                Ok(result) => result,
            };
        let (outcome, reason) = match outcome {
            Ok(()) => (StepOutcome::Ok, None),
            Err(StepError::TimedOut) => (
                StepOutcome::TimedOut,
                Some(format!("step {index} timed out after {timeout:?}")),
            ),
            Err(StepError::OriginRejected(origin)) => {
                let reason =
                    format!("step {index}: origin {origin} is not allowed for this credential");
                (StepOutcome::OriginRejected { origin }, Some(reason))
            }
            Err(StepError::Failed(reason)) => (
                StepOutcome::Failed {
                    reason: reason.clone(),
                },
                Some(format!("step {index} failed: {reason}")),
            ),
        };
        tracing::info!(login_id, step = index, ?outcome, "Auto-login step finished");
        hub.send_control(&AgentControl::LoginStep {
            login_id,
            step: index as u32,
            outcome,
        });
        if reason.is_some() {
            failure = reason;
            break;
        }
    }

    // Whatever happened, the typed values must be off the screen before frames resume.
    if let Err(error) = clear_fields(&page, &filled).await {
        tracing::warn!(login_id, error = %format!("{error:#}"), "Clearing filled fields failed");
    }
    if let Err(error) = wait_for_paint(&page).await {
        tracing::warn!(login_id, error = %format!("{error:#}"), "Waiting for a repaint failed");
    }
    hub.end_placeholder(login_id);
    hub.send_control(&AgentControl::LoginFinished {
        login_id,
        success: failure.is_none(),
        reason: failure,
    });
}

fn field_name(field: CredentialField) -> &'static str {
    match field {
        CredentialField::Username => "username",
        CredentialField::Password => "password",
        CredentialField::Totp => "one-time code",
    }
}

async fn run_step(
    page: &Page,
    login: &AutoLogin,
    step: &LoginStep,
    filled: &mut Vec<String>,
) -> Result<(), StepError> {
    match step {
        LoginStep::WaitForSelector { selector, .. } => {
            wait_for_element(page, selector).await?;
            Ok(())
        }
        LoginStep::Click { selector, .. } => {
            let object_id = wait_for_element(page, selector).await?;
            click(page, &object_id).await?;
            Ok(())
        }
        LoginStep::Fill {
            selector, field, ..
        } => {
            let object_id = wait_for_element(page, selector).await?;
            fill(page, login, *field, &object_id).await?;
            filled.push(object_id);
            Ok(())
        }
        LoginStep::WaitForSuccess {
            url_prefix,
            selector,
            ..
        } => loop {
            if let Some(prefix) = url_prefix
                && let Ok(Value::String(url)) = page.evaluate("location.href").await
                && url.starts_with(prefix.as_str())
            {
                return Ok(());
            }
            if let Some(selector) = selector
                && find_element(page, selector).await.ok().flatten().is_some()
            {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        },
    }
}

/// Returns the remote object id of the first element matching `selector` in the main
/// frame, or None.
async fn find_element(page: &Page, selector: &str) -> anyhow::Result<Option<String>> {
    let literal = serde_json::to_string(selector).context("encoding the selector")?;
    let result = page
        .call(
            "Runtime.evaluate",
            json!({ "expression": format!("document.querySelector({literal})") }),
        )
        .await?;
    if let Some(exception) = result.get("exceptionDetails") {
        bail!(
            "invalid selector {selector}: {}",
            exception["text"].as_str().unwrap_or("exception")
        );
    }
    Ok(result["result"]["objectId"].as_str().map(str::to_owned))
}

async fn wait_for_element(page: &Page, selector: &str) -> Result<String, StepError> {
    loop {
        match find_element(page, selector).await {
            Ok(Some(object_id)) => return Ok(object_id),
            Ok(None) => {}
            // Navigation destroys the execution context; try again.
            Err(error) if error.to_string().contains("invalid selector") => {
                return Err(error.into());
            }
            Err(_) => {}
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn call_on(page: &Page, object_id: &str, function: &str) -> anyhow::Result<Value> {
    let result = page
        .call(
            "Runtime.callFunctionOn",
            json!({ "objectId": object_id, "functionDeclaration": function, "returnByValue": true }),
        )
        .await?;
    if let Some(exception) = result.get("exceptionDetails") {
        bail!(
            "script failed: {}",
            exception["text"].as_str().unwrap_or("exception")
        );
    }
    Ok(result["result"]["value"].clone())
}

async fn check_origin(
    page: &Page,
    login: &AutoLogin,
    field: CredentialField,
) -> Result<(), StepError> {
    let origin = page.main_frame_origin().await?;
    if login
        .allowed_origins
        .get(field)
        .iter()
        .any(|allowed| allowed == &origin)
    {
        Ok(())
    } else {
        Err(StepError::OriginRejected(origin))
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmodified_text: Option<&'a str>,
    key: &'a str,
}

/// Types `text` into the focused element one character at a time, each as a key down
/// carrying the character and a key up, as a keyboard does. Pages that drop a value
/// set without key presses (a `keydown` listener that clears the field) accept it.
async fn type_text(page: &Page, text: &str) -> anyhow::Result<()> {
    let mut buffer = [0u8; 4];
    for character in text.chars() {
        let key: &str = character.encode_utf8(&mut buffer);
        page.call(
            "Input.dispatchKeyEvent",
            KeyEvent {
                kind: "keyDown",
                text: Some(key),
                unmodified_text: Some(key),
                key,
            },
        )
        .await?;
        page.call(
            "Input.dispatchKeyEvent",
            KeyEvent {
                kind: "keyUp",
                text: None,
                unmodified_text: None,
                key,
            },
        )
        .await?;
    }
    Ok(())
}

async fn fill(
    page: &Page,
    login: &AutoLogin,
    field: CredentialField,
    object_id: &str,
) -> Result<(), StepError> {
    let value = login
        .credentials
        .get(field)
        .ok_or_else(|| StepError::Failed(format!("no {} was provided", field_name(field))))?;
    check_origin(page, login, field).await?;
    // Key events sent to a new document before its first paint were lost in some
    // test runs on a busy host.
    wait_for_paint(page)
        .await
        .context("waiting for the page to paint")?;

    page.call("DOM.focus", json!({ "objectId": object_id }))
        .await
        .context("focusing the field")?;
    // Select any existing value so the typed text replaces it.
    call_on(
        page,
        object_id,
        "function() { if (this.select) this.select(); }",
    )
    .await?;

    // The page may have navigated since the first check: check the origin and the focus
    // again right before typing.
    check_origin(page, login, field).await?;
    let focused = call_on(
        page,
        object_id,
        "function() { return this.isConnected && document.activeElement === this; }",
    )
    .await?;
    if focused != Value::Bool(true) {
        return Err(StepError::Failed(
            "the field lost focus before typing".into(),
        ));
    }
    type_text(page, value.expose())
        .await
        .context("typing into the field")?;

    // Compare lengths only, so the value does not travel back.
    let expected = value.expose().encode_utf16().count();
    let length = call_on(page, object_id, "function() { return this.value.length; }").await?;
    if length.as_u64() != Some(expected as u64) {
        return Err(StepError::Failed(format!(
            "the field contains {length} characters after typing, expected {expected}; the page may limit or filter the input"
        )));
    }
    Ok(())
}

/// Scrolls the element into view and returns its centre if a click there would hit the
/// element or one of its descendants. Returns null while something covers it, it has
/// no size, or the page is still laying out.
const HIT_TEST: &str = "function() { \
    if (!this.isConnected) return null; \
    this.scrollIntoView({block: 'center', inline: 'center'}); \
    const r = this.getBoundingClientRect(); \
    if (r.width < 1 || r.height < 1) return null; \
    const x = r.left + r.width / 2, y = r.top + r.height / 2; \
    const hit = document.elementFromPoint(x, y); \
    return hit && (hit === this || this.contains(hit)) ? [x, y] : null; }";

/// Clicks the centre of the element once it can receive the click. The element must be
/// laid out and uncovered both before and after the page paints, so a click sent
/// right after a page load is not lost. Otherwise waits until the step's timeout.
async fn click(page: &Page, object_id: &str) -> anyhow::Result<()> {
    let (x, y) = loop {
        if call_on(page, object_id, HIT_TEST).await?.is_array() {
            wait_for_paint(page).await?;
            let center = call_on(page, object_id, HIT_TEST).await?;
            if let (Some(x), Some(y)) = (center[0].as_f64(), center[1].as_f64()) {
                break (x, y);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    for kind in ["mousePressed", "mouseReleased"] {
        page.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
        )
        .await?;
    }
    Ok(())
}

/// Empties fields that still exist; fields of a page that navigated away are gone.
async fn clear_fields(page: &Page, object_ids: &[String]) -> anyhow::Result<()> {
    for object_id in object_ids {
        let _ = call_on(
            page,
            object_id,
            "function() { if (this.isConnected && 'value' in this) { this.value = ''; \
             this.dispatchEvent(new Event('input', {bubbles: true})); } }",
        )
        .await;
    }
    Ok(())
}

/// Waits until the page has produced two animation frames, so the screen shows the
/// current document.
async fn wait_for_paint(page: &Page) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(5),
        page.evaluate(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
        ),
    )
    .await
    .context("timed out")??;
    Ok(())
}
