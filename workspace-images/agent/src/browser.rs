//! The page session: attaching to Chromium's page target and following navigations.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use protocol::AgentControl;
use serde_json::{Value, json};

use crate::cdp::{Cdp, CdpError};
use crate::hub::Hub;

/// Time Chromium has to open its first page. Chromium starts in a few seconds on an
/// idle host, but a host busy with other sessions can take far longer, and giving up
/// ends the person's session.
const PAGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A CDP session attached to the page target.
#[derive(Clone)]
pub struct Page {
    pub cdp: Arc<Cdp>,
    pub session_id: String,
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
        let page = Self { cdp, session_id };
        page.call("Page.enable", json!({})).await?;
        Ok(page)
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

    /// Returns the security origin of the main frame, as Chromium reports it.
    pub async fn main_frame_origin(&self) -> anyhow::Result<String> {
        let tree = self.call("Page.getFrameTree", json!({})).await?;
        let frame = &tree["frameTree"]["frame"];
        frame["securityOrigin"]
            .as_str()
            .map(str::to_owned)
            .context("the main frame has no security origin")
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
