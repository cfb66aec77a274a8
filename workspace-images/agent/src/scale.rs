//! The device scale factor of every page, following the viewer's device pixel ratio.
//!
//! Chromium starts at device scale factor 1 on a screen whose size in pixels the
//! viewer sets ([`crate::screen::resize_target`]). For a viewer at ratio `r` the screen
//! has `r` times the viewer's CSS size, and every page target gets
//! `Emulation.setDeviceMetricsOverride` with `deviceScaleFactor` and `scale` both `r`
//! and no size of its own. Measured with Chromium 156 on Xvfb, the page then lays out
//! at the viewer's CSS size (`innerWidth` is the screen width divided by `r`) and
//! reports `devicePixelRatio` `r`. It draws text with `r` times the pixels, and a click
//! at screen pixel (x, y) reaches the element at CSS pixel (x / r, y / r).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::cdp::{Cdp, CdpError, Event};

/// Applies the factor in `factor` to every page target, now and whenever it changes,
/// until `stop` is cancelled or the CDP pipe closes. New tabs and popups get the
/// current factor when they appear.
pub async fn run(cdp: Arc<Cdp>, mut factor: watch::Receiver<f64>, stop: CancellationToken) {
    // Subscribing first keeps the `targetCreated` events of the pages that exist now.
    let mut events = cdp.subscribe();
    if let Err(error) = cdp
        .call(
            "Target.setDiscoverTargets",
            json!({ "discover": true }),
            None,
        )
        .await
    {
        tracing::warn!(error = %error, "Following page targets failed; pages keep scale factor 1");
        return;
    }
    // Flat CDP sessions of the page targets, by target id.
    let mut pages: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = factor.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = *factor.borrow_and_update();
                tracing::info!(device_scale_factor = current, pages = pages.len(), "Scaling pages");
                for session_id in pages.values() {
                    apply(&cdp, session_id, current).await;
                }
            }
            received = events.recv() => match received {
                Ok(event) => {
                    let current = *factor.borrow();
                    follow_target(&cdp, &mut pages, &event, current).await;
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    // A page whose creation event was lost keeps scale factor 1.
                    tracing::warn!(skipped, "The page scaler lagged behind CDP events");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// Attaches to a new page target and scales it, or removes a destroyed one.
async fn follow_target(cdp: &Cdp, pages: &mut HashMap<String, String>, event: &Event, factor: f64) {
    let info = &event.params["targetInfo"];
    match event.method.as_str() {
        "Target.targetCreated" | "Target.targetInfoChanged" if info["type"] == "page" => {
            let Some(target_id) = info["targetId"].as_str() else {
                return;
            };
            if pages.contains_key(target_id) {
                return;
            }
            let attached = cdp
                .call(
                    "Target.attachToTarget",
                    json!({ "targetId": target_id, "flatten": true }),
                    None,
                )
                .await;
            let session_id = match attached {
                Ok(attached) => attached["sessionId"].as_str().map(str::to_owned),
                Err(error) => {
                    tracing::warn!(error = %error, target.id = target_id, "Attaching to a page for scaling failed");
                    None
                }
            };
            if let Some(session_id) = session_id {
                apply(cdp, &session_id, factor).await;
                pages.insert(target_id.to_owned(), session_id);
            }
        }
        "Target.targetDestroyed" => {
            if let Some(target_id) = event.params["targetId"].as_str() {
                pages.remove(target_id);
            }
        }
        _ => {}
    }
}

/// Sets the device scale factor of the page of CDP session `session_id`. Factor 1
/// clears the override, so such a page is drawn exactly as without one.
async fn apply(cdp: &Cdp, session_id: &str, factor: f64) {
    let outcome: Result<_, CdpError> = if factor == 1.0 {
        cdp.call(
            "Emulation.clearDeviceMetricsOverride",
            json!({}),
            Some(session_id),
        )
        .await
    } else {
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": 0,
                "height": 0,
                "deviceScaleFactor": factor,
                "mobile": false,
                "scale": factor,
            }),
            Some(session_id),
        )
        .await
    };
    if let Err(error) = outcome {
        tracing::warn!(error = %error, device_scale_factor = factor, "Setting a page's scale factor failed");
    }
}
