//! The page session: attaching to Chromium's page target, to the out-of-process frames
//! inside it, and following navigations.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::AgentControl;
use serde_json::{Value, json};

use crate::cdp::{Cdp, CdpError, Event};
use crate::hub::Hub;

/// Maximum depth of nested out-of-process frames whose offset the agent adds up.
const MAX_FRAME_DEPTH: usize = 8;

/// Time Chromium has to open its first page. Chromium starts in a few seconds on an
/// idle host, but a host busy with other sessions can take far longer, and giving up
/// ends the person's session.
const PAGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A CDP session attached to the page target.
#[derive(Clone)]
pub struct Page {
    pub cdp: Arc<Cdp>,
    pub session_id: String,
    /// Out-of-process frames attached through `Target.setAutoAttach`, in attach order.
    frames: Arc<Mutex<Vec<ChildFrame>>>,
}

/// An out-of-process iframe: Chromium renders it in another process, so it has its own
/// CDP session, and the page session's scripts cannot reach its document.
#[derive(Clone, Debug)]
pub struct ChildFrame {
    /// The frame id, which is also its target id.
    pub frame_id: String,
    pub session_id: String,
    /// The session of the frame that contains this frame's `<iframe>` element.
    pub parent_session_id: String,
}

/// Keeps [`Page`]'s list of out-of-process frames current from CDP target events.
pub struct FrameTracker {
    page: Page,
    events: tokio::sync::broadcast::Receiver<Event>,
}

impl Page {
    /// Waits for the first page target and attaches to it.
    pub async fn attach(cdp: Arc<Cdp>) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        let target_id = loop {
            let targets = cdp
                .call("Target.getTargets", json!({}), None)
                .await
                .context("listing CDP targets")?;
            let page = targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|info| info["type"] == "page")
                .and_then(|info| info["targetId"].as_str())
                .map(str::to_owned);
            if let Some(id) = page {
                break id;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Chromium opened no page within {PAGE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let attached = match cdp
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
                None,
            )
            .await
        {
            Ok(attached) => attached,
            Err(CdpError::Command { message, .. }) if message == "Not allowed" => bail!(
                "Chromium refused CDP access to the page; the managed policy DeveloperToolsAvailability must not be 2 \
                 (use 1 and block devtools:// URLs with URLBlocklist)"
            ),
            Err(error) => return Err(error).context("attaching to the page"),
        };
        let session_id = attached["sessionId"]
            .as_str()
            .context("attachToTarget returned no sessionId")?
            .to_owned();
        let page = Self {
            cdp,
            session_id,
            frames: Arc::default(),
        };
        page.call("Page.enable", json!({})).await?;
        Ok(page)
    }

    /// Asks Chromium to attach to every out-of-process frame of the page, now and
    /// later, each with its own flat session. The returned tracker must run for the
    /// list of frames to stay current.
    pub async fn track_frames(&self) -> anyhow::Result<FrameTracker> {
        // Subscribing first keeps the events of frames that already exist.
        let events = self.cdp.subscribe();
        auto_attach(&self.cdp, &self.session_id)
            .await
            .context("enabling auto-attach to the page's frames")?;
        Ok(FrameTracker {
            page: self.clone(),
            events,
        })
    }

    /// Returns the out-of-process frames attached now.
    pub fn child_frames(&self) -> Vec<ChildFrame> {
        self.frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sends `method` on the CDP session `session_id`: the page's or a child frame's.
    pub async fn call_in<P: serde::Serialize>(
        &self,
        session_id: &str,
        method: &str,
        params: P,
    ) -> anyhow::Result<Value> {
        Ok(self.cdp.call(method, params, Some(session_id)).await?)
    }

    /// Returns the security origin of the root frame of session `session_id`, as
    /// Chromium reports it. Page scripts cannot change this value.
    pub async fn frame_origin(&self, session_id: &str) -> anyhow::Result<String> {
        let tree = self
            .call_in(session_id, "Page.getFrameTree", json!({}))
            .await?;
        let frame = &tree["frameTree"]["frame"];
        frame["securityOrigin"]
            .as_str()
            .map(str::to_owned)
            .context("the frame has no security origin")
    }

    /// Returns the position, in the page's viewport, of the top left corner of the
    /// content box of the frame whose session is `session_id`. The page's own session
    /// is at (0, 0).
    pub async fn frame_offset(&self, session_id: &str) -> anyhow::Result<(f64, f64)> {
        let (mut x, mut y) = (0.0, 0.0);
        let mut current = session_id.to_owned();
        for _ in 0..MAX_FRAME_DEPTH {
            if current == self.session_id {
                return Ok((x, y));
            }
            let frame = self
                .child_frames()
                .into_iter()
                .find(|frame| frame.session_id == current)
                .context("the frame was detached")?;
            let owner = self
                .call_in(
                    &frame.parent_session_id,
                    "DOM.getFrameOwner",
                    json!({ "frameId": frame.frame_id }),
                )
                .await
                .context("finding the frame's <iframe> element")?;
            let model = self
                .call_in(
                    &frame.parent_session_id,
                    "DOM.getBoxModel",
                    json!({ "backendNodeId": owner["backendNodeId"] }),
                )
                .await
                .context("measuring the frame's <iframe> element")?;
            let content = &model["model"]["content"];
            let (Some(left), Some(top)) = (content[0].as_f64(), content[1].as_f64()) else {
                bail!("the frame's <iframe> element has no content box");
            };
            x += left;
            y += top;
            current = frame.parent_session_id;
        }
        bail!("the frame is nested more than {MAX_FRAME_DEPTH} levels deep")
    }

    pub async fn call<P: serde::Serialize>(
        &self,
        method: &str,
        params: P,
    ) -> anyhow::Result<Value> {
        Ok(self
            .cdp
            .call(method, params, Some(&self.session_id))
            .await?)
    }

    /// Evaluates `expression` in the main frame and returns its value.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
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

    /// Forwards main-frame navigations to the broker until `stop` is cancelled.
    pub async fn follow_navigations(
        self,
        hub: Arc<Hub>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut events = self.cdp.subscribe();
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => break,
                received = events.recv() => received,
            };
            let event = match received {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "CDP event consumer lagged");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if event.method != "Page.frameNavigated"
                || event.session_id.as_deref() != Some(&self.session_id)
            {
                continue;
            }
            let frame = &event.params["frame"];
            if frame
                .get("parentId")
                .is_some_and(|parent| !parent.is_null())
            {
                continue;
            }
            if let Some(url) = frame["url"].as_str() {
                let url: String = url
                    .chars()
                    .take(protocol::limits::MAX_STRING_LEN / 4)
                    .collect();
                hub.send_control(&AgentControl::UrlChanged { url });
            }
        }
    }
}

impl FrameTracker {
    /// Records each out-of-process frame Chromium attaches and forgets each one it
    /// detaches, until `stop` is cancelled or the CDP pipe closes.
    pub async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => break,
                received = self.events.recv() => received,
            };
            let event = match received {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    // A frame whose attach event was lost is never searched, so a login
                    // form inside it times out rather than receiving a credential.
                    tracing::warn!(skipped, "Frame tracker lagged behind CDP events");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            match event.method.as_str() {
                "Target.attachedToTarget" => self.attached(&event).await,
                "Target.detachedFromTarget" => {
                    if let Some(session_id) = event.params["sessionId"].as_str() {
                        self.page
                            .frames
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .retain(|frame| frame.session_id != session_id);
                    }
                }
                _ => {}
            }
        }
    }

    async fn attached(&self, event: &Event) {
        let info = &event.params["targetInfo"];
        let (Some(parent_session_id), Some(session_id), Some(frame_id)) = (
            event.session_id.as_deref(),
            event.params["sessionId"].as_str(),
            info["targetId"].as_str(),
        ) else {
            return;
        };
        if info["type"] != "iframe" {
            return;
        }
        let known_parent = parent_session_id == self.page.session_id
            || self
                .page
                .child_frames()
                .iter()
                .any(|frame| frame.session_id == parent_session_id);
        if !known_parent {
            return;
        }
        self.page
            .frames
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ChildFrame {
                frame_id: frame_id.to_owned(),
                session_id: session_id.to_owned(),
                parent_session_id: parent_session_id.to_owned(),
            });
        tracing::info!(
            frame.id = frame_id,
            "Attached to an out-of-process frame"
        );
        // Frames nested inside this one attach through its own session.
        if let Err(error) = auto_attach(&self.page.cdp, session_id).await {
            tracing::warn!(error = %error, frame.id = frame_id, "Enabling auto-attach in a frame failed");
        }
    }
}

async fn auto_attach(cdp: &Cdp, session_id: &str) -> Result<Value, CdpError> {
    cdp.call(
        "Target.setAutoAttach",
        json!({ "autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true }),
        Some(session_id),
    )
    .await
}
