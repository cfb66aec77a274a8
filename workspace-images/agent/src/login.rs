//! Auto-login: runs a recipe's steps over CDP and types credentials.
//!
//! Before any step runs, the agent starts a placeholder (no screen frames are sent) and
//! releases the viewer's held keys; person input is ignored while it lasts. A step's
//! selector is looked up in the main frame first, then in each out-of-process frame
//! (a cross-site `<iframe>`) in the order Chromium attached them. Credentials are typed
//! with `DOM.focus` and one key down and key up per character, and only after the
//! security origin of the frame that contains the field is found in the credential's
//! allowed list. The placeholder ends once the success condition holds and the page has
//! painted again, or after a failure once the filled fields are cleared.
//!
//! NOTE: a cross-origin frame that Chromium keeps in the page's process (same site,
//! another port or subdomain) is not searched, so a step whose element is only there
//! times out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::{AgentControl, AutoLogin, CredentialField, LoginFailure, LoginStep, StepOutcome};
use serde_json::{Value, json};

use crate::browser::Page;
use crate::hub::Hub;

const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Interval between two checks whether the site rejected the submitted password.
const REJECTION_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reason a login step failed.
enum StepError {
    TimedOut,
    OriginRejected(String),
    Failed(String),
    /// The site showed its login form again after the password was submitted.
    Rejected(String),
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
                failed_step: None,
                failure: Some(LoginFailure::Failed),
            });
            return;
        }
    }

    hub.start_placeholder(login_id);
    release_input();
    let mut filled: Vec<Element> = Vec::new();
    let mut password_form = PasswordForm::default();
    let mut failure = None;

    for (index, step) in login.steps.iter().enumerate() {
        let timeout = Duration::from_millis(u64::from(step.timeout_ms()));
        let outcome = match tokio::time::timeout(
            timeout,
            run_watched_step(&page, &login, step, &mut filled, &mut password_form),
        )
        .await
        {
            Err(_) => Err(StepError::TimedOut),
            Ok(result) => result,
        };
        let name = format!("step {index} ({})", describe(step));
        let (outcome, reason, kind) = match outcome {
            Ok(()) => (StepOutcome::Ok, None, None),
            Err(StepError::TimedOut) => (
                StepOutcome::TimedOut,
                Some(format!("{name} timed out after {timeout:?}")),
                Some(LoginFailure::TimedOut),
            ),
            Err(StepError::OriginRejected(origin)) => {
                let reason =
                    format!("{name}: origin {origin} is not allowed for this credential");
                (
                    StepOutcome::OriginRejected { origin },
                    Some(reason),
                    Some(LoginFailure::OriginRejected),
                )
            }
            Err(StepError::Failed(reason)) => (
                StepOutcome::Failed {
                    reason: reason.clone(),
                },
                Some(format!("{name} failed: {reason}")),
                Some(LoginFailure::Failed),
            ),
            Err(StepError::Rejected(reason)) => (
                StepOutcome::Rejected {
                    reason: reason.clone(),
                },
                Some(format!("{name}: the site rejected the sign-in details: {reason}")),
                Some(LoginFailure::Rejected),
            ),
        };
        tracing::info!(login_id, step = index, ?outcome, "Auto-login step finished");
        hub.send_control(&AgentControl::LoginStep {
            login_id,
            step: index as u32,
            outcome,
        });
        if reason.is_some() {
            failure = reason.map(|reason| (index as u32, kind, reason));
            break;
        }
    }

    // Whatever happened, the typed values must be off the screen before frames resume.
    if let Err(error) = clear_fields(&page, &filled).await {
        tracing::warn!(login_id, error = %format!("{error:#}"), "Clearing filled fields failed");
    }
    if let Err(error) = wait_for_paint(&page, &page.session_id).await {
        tracing::warn!(login_id, error = %format!("{error:#}"), "Waiting for a repaint failed");
    }
    hub.end_placeholder(login_id);
    let (failed_step, failure, reason) = match failure {
        Some((step, kind, reason)) => (Some(step), kind, Some(reason)),
        None => (None, None, None),
    };
    hub.send_control(&AgentControl::LoginFinished {
        login_id,
        success: reason.is_none(),
        reason,
        failed_step,
        failure,
    });
}

/// Names a step for the failure reason, which reaches the audit trail: its kind, the
/// field it types and its selector.
fn describe(step: &LoginStep) -> String {
    match step {
        LoginStep::WaitForSelector { selector, .. } => format!("wait for {selector}"),
        LoginStep::Fill {
            selector, field, ..
        } => format!("type the {} into {selector}", field_name(*field)),
        LoginStep::Click { selector, .. } => format!("click {selector}"),
        LoginStep::WaitForSuccess { .. } => "wait for the signed-in page".to_owned(),
    }
}

fn field_name(field: CredentialField) -> &'static str {
    match field {
        CredentialField::Username => "username",
        CredentialField::Password => "password",
        CredentialField::Totp => "one-time code",
    }
}

/// The password field of the login form and the document it was typed into, kept to
/// recognise a site that shows the form again after the password was submitted.
#[derive(Default)]
struct PasswordForm {
    /// Selector of the password step.
    selector: Option<String>,
    /// `performance.timeOrigin` of the document the password was typed into; a new
    /// document has another one.
    time_origin: Option<f64>,
    /// Whether a click followed the password, so the form may have been submitted.
    submitted: bool,
}

/// Runs `step`, and once the password was typed and a click submitted it, watches for
/// the site rejecting it at the same time. A site that rejects a password usually
/// responds with its login form again, in a new document. Waiting for the step's
/// timeout instead would report the next step as timed out.
async fn run_watched_step(
    page: &Page,
    login: &AutoLogin,
    step: &LoginStep,
    filled: &mut Vec<Element>,
    password_form: &mut PasswordForm,
) -> Result<(), StepError> {
    let watched = match (&password_form.selector, password_form.time_origin) {
        // A recipe that itself waits for the password field again expects the form.
        (Some(selector), Some(time_origin))
            if password_form.submitted && step_selector(step) != Some(selector.as_str()) =>
        {
            Some((selector.clone(), time_origin))
        }
        _ => None,
    };
    let filled_before = filled.len();
    let result = match watched {
        Some((selector, time_origin)) => {
            tokio::select! {
                result = run_step(page, login, step, filled) => result,
                reason = watch_rejection(page, &selector, time_origin) => Err(StepError::Rejected(reason)),
            }
        }
        None => run_step(page, login, step, filled).await,
    };
    result?;

    match step {
        LoginStep::Fill {
            selector,
            field: CredentialField::Password,
            ..
        } => {
            let element = filled.get(filled_before).cloned();
            password_form.selector = Some(selector.clone());
            password_form.time_origin = match element {
                Some(element) => document_time_origin(page, &element).await.ok(),
                None => None,
            };
            password_form.submitted = false;
        }
        LoginStep::Click { .. } if password_form.selector.is_some() => {
            password_form.submitted = true;
        }
        _ => {}
    }
    Ok(())
}

fn step_selector(step: &LoginStep) -> Option<&str> {
    match step {
        LoginStep::WaitForSelector { selector, .. }
        | LoginStep::Fill { selector, .. }
        | LoginStep::Click { selector, .. } => Some(selector),
        LoginStep::WaitForSuccess { selector, .. } => selector.as_deref(),
    }
}

/// Returns `performance.timeOrigin` of the document that contains `element`.
async fn document_time_origin(page: &Page, element: &Element) -> anyhow::Result<f64> {
    call_on(
        page,
        element,
        "function() { return this.ownerDocument.defaultView.performance.timeOrigin; }",
    )
    .await?
    .as_f64()
    .context("the document has no time origin")
}

/// Returns once the password field matching `selector` is shown in another document
/// than the one the password was typed into: the site responded to the submitted
/// form with its login form again. Runs until cancelled otherwise.
async fn watch_rejection(page: &Page, selector: &str, typed_in: f64) -> String {
    loop {
        tokio::time::sleep(REJECTION_POLL_INTERVAL).await;
        // Errors while the page navigates are expected; the next check tries again.
        let Ok(Some(element)) = find_element(page, selector).await else {
            continue;
        };
        let Ok(shown_in) = document_time_origin(page, &element).await else {
            continue;
        };
        if shown_in != typed_in {
            return format!("the login form ({selector}) was shown again after the password was submitted");
        }
    }
}

async fn run_step(
    page: &Page,
    login: &AutoLogin,
    step: &LoginStep,
    filled: &mut Vec<Element>,
) -> Result<(), StepError> {
    match step {
        LoginStep::WaitForSelector { selector, .. } => {
            wait_for_element(page, selector).await?;
            Ok(())
        }
        LoginStep::Click { selector, .. } => {
            let element = wait_for_element(page, selector).await?;
            click(page, &element).await?;
            Ok(())
        }
        LoginStep::Fill {
            selector, field, ..
        } => {
            let element = wait_for_element(page, selector).await?;
            fill(page, login, *field, &element, filled).await?;
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

/// An element of the page: the CDP session of the frame whose document holds it, and
/// its remote object id in that session.
#[derive(Clone)]
struct Element {
    session_id: String,
    object_id: String,
}

/// Returns the first element matching `selector`, searching the main frame and then
/// each out-of-process frame, or None.
async fn find_element(page: &Page, selector: &str) -> anyhow::Result<Option<Element>> {
    let literal = serde_json::to_string(selector).context("encoding the selector")?;
    let expression = format!("document.querySelector({literal})");
    let sessions = std::iter::once(page.session_id.clone()).chain(
        page.child_frames()
            .into_iter()
            .map(|frame| frame.session_id),
    );
    for (index, session_id) in sessions.enumerate() {
        let result = match page
            .call_in(&session_id, "Runtime.evaluate", json!({ "expression": expression }))
            .await
        {
            Ok(result) => result,
            Err(error) if index == 0 => return Err(error),
            // A frame that detached since the list was read has no element.
            Err(_) => continue,
        };
        if let Some(exception) = result.get("exceptionDetails") {
            bail!(
                "invalid selector {selector}: {}",
                exception["text"].as_str().unwrap_or("exception")
            );
        }
        if let Some(object_id) = result["result"]["objectId"].as_str() {
            return Ok(Some(Element {
                session_id,
                object_id: object_id.to_owned(),
            }));
        }
    }
    Ok(None)
}

async fn wait_for_element(page: &Page, selector: &str) -> Result<Element, StepError> {
    loop {
        match find_element(page, selector).await {
            Ok(Some(element)) => return Ok(element),
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

async fn call_on(page: &Page, element: &Element, function: &str) -> anyhow::Result<Value> {
    let result = page
        .call_in(
            &element.session_id,
            "Runtime.callFunctionOn",
            json!({ "objectId": element.object_id, "functionDeclaration": function, "returnByValue": true }),
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

/// Checks that the frame holding `element` has an origin the credential may be typed
/// into. Only that frame's origin counts: the page around it may be another origin.
async fn check_origin(
    page: &Page,
    login: &AutoLogin,
    field: CredentialField,
    element: &Element,
) -> Result<(), StepError> {
    let origin = page.frame_origin(&element.session_id).await?;
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
    element: &Element,
    filled: &mut Vec<Element>,
) -> Result<(), StepError> {
    let value = login
        .credentials
        .get(field)
        .ok_or_else(|| StepError::Failed(format!("no {} was provided", field_name(field))))?;
    check_origin(page, login, field, element).await?;
    // Key events sent to a new document before its first paint were lost in some
    // test runs on a busy host.
    wait_for_paint(page, &element.session_id)
        .await
        .context("waiting for the page to paint")?;

    page.call_in(
        &element.session_id,
        "DOM.focus",
        json!({ "objectId": element.object_id }),
    )
    .await
    .context("focusing the field")?;
    // Select any existing value so the typed text replaces it.
    call_on(
        page,
        element,
        "function() { if (this.select) this.select(); }",
    )
    .await?;

    // The page may have navigated since the first check: check the origin and the focus
    // again right before typing. Key events go to the focused frame, so the field's
    // frame must have the focus as well as the field within it.
    check_origin(page, login, field, element).await?;
    let focused = call_on(
        page,
        element,
        "function() { return this.isConnected && document.hasFocus() && document.activeElement === this; }",
    )
    .await?;
    if focused != Value::Bool(true) {
        return Err(StepError::Failed(
            "the field lost focus before typing".into(),
        ));
    }
    // Recorded before the first key, so a field that a failed or timed-out step left
    // partly typed is cleared too. A field of a rejected origin is left alone.
    filled.push(element.clone());
    type_text(page, value.expose())
        .await
        .context("typing into the field")?;

    // Compare lengths only, so the value does not travel back.
    let expected = value.expose().encode_utf16().count();
    let length = call_on(page, element, "function() { return this.value.length; }").await?;
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
/// An element inside an out-of-process frame is hit-tested within its frame, and the
/// frame's offset in the page moves the click to page coordinates.
///
/// NOTE: the hit test does not see the page around a frame, so an element of the
/// outer page that covers the frame receives the click.
async fn click(page: &Page, element: &Element) -> anyhow::Result<()> {
    let (x, y) = loop {
        if call_on(page, element, HIT_TEST).await?.is_array() {
            wait_for_paint(page, &element.session_id).await?;
            let center = call_on(page, element, HIT_TEST).await?;
            if let (Some(x), Some(y)) = (center[0].as_f64(), center[1].as_f64()) {
                let (left, top) = page.frame_offset(&element.session_id).await?;
                break (x + left, y + top);
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
async fn clear_fields(page: &Page, elements: &[Element]) -> anyhow::Result<()> {
    for element in elements {
        let _ = call_on(
            page,
            element,
            "function() { if (this.isConnected && 'value' in this) { this.value = ''; \
             this.dispatchEvent(new Event('input', {bubbles: true})); } }",
        )
        .await;
    }
    Ok(())
}

/// Waits until the frame of session `session_id` has produced two animation frames, so
/// the screen shows its current document.
async fn wait_for_paint(page: &Page, session_id: &str) -> anyhow::Result<()> {
    let painted = page.call_in(
        session_id,
        "Runtime.evaluate",
        json!({
            "expression": "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
            "awaitPromise": true,
        }),
    );
    let result = tokio::time::timeout(Duration::from_secs(5), painted)
        .await
        .context("timed out")??;
    if let Some(exception) = result.get("exceptionDetails") {
        bail!(
            "script failed: {}",
            exception["text"].as_str().unwrap_or("exception")
        );
    }
    Ok(())
}
