//! The replay player page (`/recordings/{id}`) as a test reads it: its state from the
//! page's own data attributes, and the seek bar moved the way a person drags it.

use std::time::Duration;

use crate::browser::{Browser, DEFAULT_WAIT};

/// Reads the player's state into `r`: whether it is ready, the shown frame's offset in
/// microseconds, how many sampled pixels are lit, the canvas size, and the status and
/// error lines.
pub const PLAYER_PROBE: &str = "const c = document.getElementById('screen');
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4 * 97) { if (data[i] || data[i + 1] || data[i + 2]) lit++; }
const error = document.getElementById('error');
const r = { ready: document.getElementById('player').dataset.ready === 'true',
  position: c.dataset.positionUs === '' ? null : Number(c.dataset.positionUs),
  duration: Number(document.getElementById('seek').max),
  lit, width: c.width, height: c.height,
  status: document.getElementById('status').hidden ? '' : document.getElementById('status').textContent,
  error: error.hidden ? '' : error.textContent };";

/// Polls the player until `condition` (JavaScript over `r`, the state that
/// [`PLAYER_PROBE`] reads) holds, and returns that state. Panics with the last state
/// after [`DEFAULT_WAIT`].
pub async fn wait_player(browser: &Browser, condition: &str) -> serde_json::Value {
    // Until the player page has loaded, the probe returns no state.
    let script = format!(
        "if (!document.getElementById('player')) return {{ done: false, r: null }};\n{PLAYER_PROBE}\nreturn {{ done: !!({condition}), r }};"
    );
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    loop {
        let result = browser.script(&script).await;
        if result["done"] == true {
            return result["r"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "player did not reach `{condition}` within {DEFAULT_WAIT:?}; last state {}",
            result["r"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Moves the seek bar to `seconds` and fires its `change` event.
pub fn seek_script(seconds: f64) -> String {
    format!(
        "const s = document.getElementById('seek'); s.value = '{seconds}'; s.dispatchEvent(new Event('change')); return true;"
    )
}

/// Seeks to `seconds` and waits until the shown frame is at or before that time and less
/// than `tolerance` before it, and returns the player state. A synthetic recording has
/// a frame every fraction of a second. A live session's recording has one at least every
/// keyframe interval, because the agent sends nothing new for an unchanged screen.
pub async fn seek_to(browser: &Browser, seconds: f64, tolerance: Duration) -> serde_json::Value {
    browser.script(&seek_script(seconds)).await;
    let target_us = (seconds * 1e6) as i64;
    let earliest_us = target_us - tolerance.as_micros() as i64;
    let probe = wait_player(
        browser,
        &format!(
            "r.error || (r.position !== null && r.position <= {target_us} && r.position > {earliest_us} && r.status.indexOf('Seeking') < 0)"
        ),
    )
    .await;
    assert_eq!(probe["error"], "", "seek to {seconds} s failed: {probe}");
    probe
}
