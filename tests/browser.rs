//! A headless Chromium driven through chromedriver's WebDriver API, for tests that
//! check pages in a real browser. Every lookup polls until a deadline, because a page
//! may still be loading or its script still running when the lookup starts.

use std::time::Duration;

/// How long a lookup waits for an element or a condition.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// One chromedriver process with one browser session. Dropping it kills chromedriver,
/// which ends the browser.
pub struct Browser {
    driver: tokio::process::Child,
    http: reqwest::Client,
    base: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless session.
    pub async fn start() -> Browser {
        Browser::start_with_args(&[]).await
    }

    /// Starts a headless session as [`Browser::start`] does, with `extra_args` added to
    /// Chromium's command line (for example `--force-device-scale-factor=2`).
    pub async fn start_with_args(extra_args: &[&str]) -> Browser {
        // With `--port=0` chromedriver picks a port that is free on IPv4, and it exits when
        // another program uses that port on IPv6. A new start picks another port.
        let mut attempts = 0;
        let (driver, mut lines, port) = loop {
            attempts += 1;
            let mut driver = tokio::process::Command::new("chromedriver")
                .arg("--port=0")
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("chromedriver starts (Debian package chromium-driver)");
            let stdout = driver.stdout.take().unwrap();
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
            let port = loop {
                let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                    .await
                    .expect("chromedriver prints its port within 30 s")
                    .unwrap();
                let Some(line) = line else {
                    break None;
                };
                if let Some(rest) =
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                {
                    break Some(rest.trim_end_matches('.').to_owned());
                }
            };
            match port {
                Some(port) => break (driver, lines, port),
                None => assert!(attempts < 5, "chromedriver exited before listening, {attempts} times"),
            }
        };
        // Keep reading so that chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let http = reqwest::Client::new();
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1400,1000",
        ];
        args.extend_from_slice(extra_args);
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args
        }}}});
        let created: serde_json::Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&capabilities)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Browser {
            driver,
            http,
            base: format!("http://127.0.0.1:{port}/session/{session}"),
        }
    }

    /// Sends a WebDriver command and returns its `value`, or the error object.
    async fn try_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let response: serde_json::Value = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // A WebDriver error is an object with `error` and `message`; a script's result
        // may have an `error` field of its own.
        let value = &response["value"];
        if value.get("error").is_some() && value.get("message").is_some() {
            Err(response["value"].clone())
        } else {
            Ok(response["value"].clone())
        }
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.try_command(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    pub async fn open(&self, url: &str) {
        self.command(
            reqwest::Method::POST,
            "/url",
            serde_json::json!({ "url": url }),
        )
        .await;
    }

    /// Returns the WebDriver id of the first element matching `css`, waiting up to
    /// [`DEFAULT_WAIT`] for it to appear.
    pub async fn element(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
        loop {
            let found = self
                .try_command(
                    reqwest::Method::POST,
                    "/element",
                    serde_json::json!({"using": "css selector", "value": css}),
                )
                .await;
            match found {
                Ok(found) => {
                    return found
                        .as_object()
                        .and_then(|object| object.values().next())
                        .and_then(|id| id.as_str())
                        .expect("element id")
                        .to_owned();
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    let url = self.script("return location.href;").await;
                    panic!("no element {css} on {url} after {DEFAULT_WAIT:?}: {error}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            serde_json::json!({ "text": text }),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            serde_json::json!({}),
        )
        .await;
    }

    /// Runs a synchronous script in the page and returns its result.
    pub async fn script(&self, source: &str) -> serde_json::Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            serde_json::json!({"script": source, "args": []}),
        )
        .await
    }

    /// Runs `source` until it returns something other than `null` or `false`, for at
    /// most `timeout`, and returns that value.
    pub async fn wait_for_script(&self, source: &str, timeout: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.script(source).await;
            if !(value.is_null() || value == serde_json::Value::Bool(false)) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "script did not succeed within {timeout:?}: {source}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Turns the mouse wheel over the centre of the element matching `css` by
    /// `delta_y` CSS pixels (positive scrolls down), through WebDriver's wheel actions.
    pub async fn wheel(&self, css: &str, delta_y: i64) {
        let element = self.element(css).await;
        let origin = serde_json::json!({ "element-6066-11e4-a52e-4f735466cecf": element });
        self.command(
            reqwest::Method::POST,
            "/actions",
            serde_json::json!({ "actions": [{
                "type": "wheel",
                "id": "wheel",
                "actions": [{ "type": "scroll", "x": 0, "y": 0, "deltaX": 0, "deltaY": delta_y, "origin": origin }],
            }]}),
        )
        .await;
    }

    /// Clicks the left mouse button at (`x`, `y`) CSS pixels of the viewport, through
    /// WebDriver's pointer actions.
    pub async fn click_at(&self, x: i64, y: i64) {
        self.command(
            reqwest::Method::POST,
            "/actions",
            serde_json::json!({ "actions": [{
                "type": "pointer",
                "id": "mouse",
                "parameters": { "pointerType": "mouse" },
                "actions": [
                    { "type": "pointerMove", "x": x, "y": y, "origin": "viewport" },
                    { "type": "pointerDown", "button": 0 },
                    { "type": "pointerUp", "button": 0 },
                ],
            }]}),
        )
        .await;
    }

    /// Sets the browser window's outer size in CSS pixels.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            serde_json::json!({ "width": width, "height": height }),
        )
        .await;
    }

    /// Returns the cookies of the current page as one `Cookie` header value.
    pub async fn cookie_header(&self) -> String {
        let cookies = self
            .command(reqwest::Method::GET, "/cookie", serde_json::json!({}))
            .await;
        cookies
            .as_array()
            .expect("WebDriver returns a cookie list")
            .iter()
            .map(|cookie| format!("{}={}", cookie["name"].as_str().unwrap(), cookie["value"].as_str().unwrap()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn quit(mut self) {
        let _ = self
            .try_command(reqwest::Method::DELETE, "", serde_json::json!({}))
            .await;
        let _ = self.driver.kill().await;
    }
}
