//! The demo bank through the whole stack: a person signs in to the portal in headless
//! Chromium with a password and TOTP, launches the demo bank, watches the workspace on
//! the canvas, and ends the session. The demo bank runs in its own container on an
//! internal network that the broker reaches through `egress.hosts`, as
//! `scripts/start.sh` sets it up; the audit trail shows the workspace's connection to
//! the bank's address, and the session's recording is sealed and verifies.
//!
//! Needs the workspace image and the demo bank image
//! (`strongroom image build --recipe demo-bank`), which `scripts/test.sh` builds.
//!
//! The site carries the bank's generated CA as an extra CA certificate, so the
//! workspace's Chromium trusts the bank for that session only. Auto-login types the
//! username, password and TOTP code; the bank's `/received` report shows what it got.
//!
//! The tests run the workspace image named by `STRONGROOM_TEST_WORKSPACE_IMAGE`, or else
//! the one built from the `strongroom-agent` binary beside the test binary (its SHA-256
//! is in the image's labels), never merely the newest one.

use std::net::IpAddr;
use std::time::Duration;

use broker::auth::Role;
use strongroom_tests::browser::Browser;
use strongroom_tests::stack::{Stack, wait_for};
use uuid::Uuid;

const BANK_HOST: &str = "demo-bank.test";
const BANK_PORT: u16 = 8443;
/// The demo bank's plain-HTTP port for `/received` and `/ca.pem`.
const RECEIVED_PORT: u16 = 8081;
const RECEIVED_TOKEN: &str = "received-token-for-tests";
const BANK_USERNAME: &str = "demo-customer";
/// Characters that a shell or HTML would treat specially, typed byte for byte.
const BANK_PASSWORD: &str = "demo <p&ss> 'pässwörd€'";
const BANK_TOTP_SEED: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// Session subnets of this test, apart from the other tests' ranges.
const SUBNET_RANGE: &str = "172.27.0.0/16";

/// Runs `docker` with `args` and returns its standard output, or panics with its error.
fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The demo bank container on its own internal network; removed on drop.
struct DemoBank {
    name: String,
    subnet: String,
    address: IpAddr,
    _secrets: tempfile::TempDir,
}

impl DemoBank {
    fn start() -> DemoBank {
        let image = docker(&[
            "images",
            "strongroom/demo-bank",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ]);
        let image = image
            .lines()
            .next()
            .expect("demo bank image missing: run `strongroom image build --recipe demo-bank`")
            .to_owned();

        let secrets = tempfile::tempdir().unwrap();
        let account = secrets.path().join("account");
        std::fs::create_dir(&account).unwrap();
        std::fs::write(account.join("username"), format!("{BANK_USERNAME}\n")).unwrap();
        std::fs::write(account.join("password"), format!("{BANK_PASSWORD}\n")).unwrap();
        std::fs::write(account.join("totp-seed"), format!("{BANK_TOTP_SEED}\n")).unwrap();
        std::fs::write(
            secrets.path().join("received-token"),
            format!("{RECEIVED_TOKEN}\n"),
        )
        .unwrap();
        // The bank reads these files through a read-only mount as the image's user.
        let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
        let uid: u32 = user
            .split(':')
            .next()
            .and_then(|uid| uid.parse().ok())
            .unwrap_or_else(|| {
                panic!("demo bank image {image} runs as {user:?}, not a numeric uid")
            });
        for path in [
            secrets.path().to_path_buf(),
            account.clone(),
            account.join("username"),
            account.join("password"),
            account.join("totp-seed"),
            secrets.path().join("received-token"),
        ] {
            std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
        }

        let name = format!(
            "strongroom-e2e-bank-{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        // A random /24 in 10.213.0.0/16; another pick follows when Docker reports an overlap.
        let subnet = (0..20)
            .find_map(|_| {
                let subnet = format!("10.213.{}.0/24", rand_octet());
                let output = std::process::Command::new("docker")
                    .args(["network", "create", "--internal", "--subnet", &subnet])
                    .args(["--label", "org.strongroom.test=end-to-end", &name])
                    .output()
                    .unwrap();
                output.status.success().then_some(subnet)
            })
            .expect("no free 10.213.x.0/24 subnet for the demo bank network");
        let address: IpAddr = format!("{}.10", subnet.trim_end_matches(".0/24"))
            .parse()
            .unwrap();

        let bank = DemoBank {
            name,
            subnet,
            address,
            _secrets: secrets,
        };
        let mount = format!("{}:/run/demo-bank:ro", bank._secrets.path().display());
        docker(&[
            "run",
            "--detach",
            "--name",
            &bank.name,
            "--network",
            &bank.name,
            "--ip",
            &address.to_string(),
            "--label",
            "org.strongroom.test=end-to-end",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--memory",
            "256m",
            "--pids-limit",
            "128",
            "--volume",
            &mount,
            &image,
            "--account-dir",
            "/run/demo-bank/account",
            "--received-token-file",
            "/run/demo-bank/received-token",
            "--hostname",
            BANK_HOST,
        ]);
        bank
    }
}

impl Drop for DemoBank {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// Returns the workspace image under test: `STRONGROOM_TEST_WORKSPACE_IMAGE` when set
/// (`scripts/test.sh` sets it to the image it built), otherwise the image built from the
/// `strongroom-agent` binary beside this test, found by the binary's SHA-256 label.
/// Building the agent's own tests relinks that binary, so its hash can change.
fn workspace_image_of_this_build() -> String {
    use sha2::Digest;
    if let Ok(image) = std::env::var("STRONGROOM_TEST_WORKSPACE_IMAGE")
        && !image.is_empty()
    {
        return image;
    }
    let test_binary = std::env::current_exe().unwrap();
    // target/<profile>/deps/end_to_end-<hash>: the agent is in target/<profile>.
    let agent = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("strongroom-agent");
    let bytes = std::fs::read(&agent).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error}; run `cargo build -p strongroom-agent`",
            agent.display()
        )
    });
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    let filter = format!("label=org.strongroom.host-binary.sha256={hash}");
    let images = docker(&[
        "images",
        "--filter",
        &filter,
        "--filter",
        "label=org.strongroom.recipe=workspace",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    images
        .lines()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no workspace image holds {} (SHA-256 {hash}); run `strongroom image build` \
                 and set STRONGROOM_TEST_WORKSPACE_IMAGE to the image it prints",
                agent.display()
            )
        })
        .to_owned()
}

fn rand_octet() -> u8 {
    Uuid::new_v4().as_bytes()[0]
}

/// Starts a stack that runs the workspace image of this build and whose egress proxy
/// resolves the bank's name to its container; `overrides` come last.
async fn start_stack(bank: &DemoBank, overrides: &[(&str, String)]) -> Stack {
    let address = bank.address;
    Stack::builder(SUBNET_RANGE)
        .env(
            "STRONGROOM_LAUNCHER__IMAGE",
            format!("\"{}\"", workspace_image_of_this_build()),
        )
        .env(
            "STRONGROOM_EGRESS__HOSTS",
            format!("{{ \"{BANK_HOST}\" = [\"{address}\"] }}"),
        )
        .envs(overrides)
        .check_config(move |config| assert_eq!(config.egress.hosts[BANK_HOST], vec![address]))
        .start()
        .await
}

/// Fetches the CA certificate the demo bank generated at start from its plain-HTTP port.
async fn bank_ca_pem(bank: &DemoBank) -> String {
    let url = format!("http://{}:{RECEIVED_PORT}/ca.pem", bank.address);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_for("the demo bank's CA", Duration::from_secs(60), || async {
        let response = client.get(&url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    })
    .await
}

/// Reads the bank's `/received` report.
async fn bank_received(bank: &DemoBank) -> serde_json::Value {
    let url = format!("http://{}:{RECEIVED_PORT}/received", bank.address);
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(RECEIVED_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The demo bank's site, which `scripts/start.sh` imports too: the login recipe
/// (username and password, then the TOTP step), the origin the credentials may be typed
/// into and the bank's CA, which the caller writes beside it as demo-bank-ca.pem.
fn demo_site(bank: &DemoBank) -> String {
    let template = include_str!("demo-bank/site.toml");
    assert!(
        template.contains(&format!(
            "start_url = \"https://{BANK_HOST}:{BANK_PORT}/login\""
        )),
        "tests/demo-bank/site.toml names the bank this test starts"
    );
    template.replace("@SUBNET@", &bank.subnet)
}

/// Counts lit pixels of the viewer canvas (sampled) and reads the viewer's status lines;
/// returns null while the viewer page has not loaded.
const CANVAS_PROBE: &str = "const c = document.getElementById('screen');
if (!c) return null;
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let lit = 0;
for (let i = 0; i < data.length; i += 4 * 101) { if (data[i] || data[i + 1] || data[i + 2]) lit++; }
const status = document.getElementById('status');
const ended = document.getElementById('ended');
return { lit, status: status.hidden ? '' : status.textContent, ended: ended.hidden ? '' : ended.textContent };";

/// Counts rows of the viewer canvas that are mostly light grey: the account page's
/// statement table draws a full-width grey rule under each of its many rows, while the
/// login and TOTP pages and Chromium's error pages draw none.
const STATEMENT_PROBE: &str = "const c = document.getElementById('screen');
if (!c) return 0;
const w = c.width, h = c.height;
const data = c.getContext('2d').getImageData(0, 0, w, h).data;
let rules = 0;
for (let y = 0; y < h; y++) {
  let grey = 0, samples = 0;
  for (let x = 0; x < w; x += 4) {
    const i = (y * w + x) * 4, r = data[i], g = data[i + 1], b = data[i + 2];
    samples++;
    if (r > 150 && r < 240 && Math.abs(r - g) < 16 && Math.abs(r - b) < 16) grey++;
  }
  if (grey > samples * 0.4) rules++;
}
return rules;";

/// Hashes a sample of the viewer canvas's pixels, to tell when the picture changed.
const CANVAS_HASH: &str = "const c = document.getElementById('screen');
const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let hash = 0;
for (let i = 0; i < data.length; i += 4 * 37) { hash = (hash * 31 + data[i] + data[i + 1] * 7 + data[i + 2] * 13) >>> 0; }
return hash;";

/// Turns the mouse wheel over the middle of the viewer canvas by `delta_y` pixels.
fn wheel_script(delta_y: i32) -> String {
    format!(
        "const c = document.getElementById('screen'); const box = c.getBoundingClientRect();
c.dispatchEvent(new WheelEvent('wheel', {{ deltaY: {delta_y}, clientX: box.left + box.width / 2,
  clientY: box.top + box.height / 2, bubbles: true, cancelable: true }})); return true;"
    )
}

/// Stores the bank's shared credential in the broker's local store, as
/// `strongroom credential set` does.
async fn set_bank_credential(stack: &Stack) {
    set_bank_credential_with_password(stack, BANK_PASSWORD).await;
}

/// Stores the bank's shared credential with `password` in place of the bank's.
async fn set_bank_credential_with_password(stack: &Stack, password: &str) {
    use broker::secrets::{BankCredentials, CredentialKey, CredentialRef, LocalStore};
    let db = stack.broker().state.db.clone();
    let clock = std::sync::Arc::new(broker::clock::SystemClock);
    let key = CredentialKey::load_or_create(stack.dir.path()).unwrap();
    let store = LocalStore::new(db.clone(), std::sync::Arc::new(key), clock.clone());
    let audit = broker::audit::AuditLog::new(db, clock);
    let reference = CredentialRef::shared("demo-bank").unwrap();
    let credentials = BankCredentials::new(
        &reference,
        BANK_USERNAME.into(),
        password.into(),
        Some(BANK_TOTP_SEED.into()),
    )
    .unwrap();
    broker::secrets::cli::set(
        &store,
        &audit,
        broker::audit::Actor::System("test"),
        &reference,
        &credentials,
    )
    .await
    .unwrap();
}

/// Imports the demo bank's site with the bank's CA and login recipe, and stores its
/// credential.
async fn add_bank_site(stack: &Stack, bank: &DemoBank) {
    let ca_pem = bank_ca_pem(bank).await;
    std::fs::write(stack.dir.path().join("demo-bank-ca.pem"), ca_pem).unwrap();
    stack.import_sites("sites.toml", &demo_site(bank)).await;
    set_bank_credential(stack).await;
}

/// From a signed-in portal page: launches the demo bank, waits for auto-login, checks
/// what the bank received and what the canvas shows, types a note through the live
/// view, ends the session and verifies its recording. Returns the recording's id.
async fn bank_through_the_live_view(
    stack: &Stack,
    bank: &DemoBank,
    browser: &Browser,
    person: &str,
) -> Uuid {
    let db = stack.broker().state.db.clone();
    browser.click("#launch-demo-bank").await;

    // The workspace's screen reaches the canvas once auto-login ends (the viewer shows
    // a notice while the screen is hidden for it).
    wait_for(
        "the bank on the viewer canvas",
        Duration::from_secs(180),
        || async {
            let probe = browser.script(CANVAS_PROBE).await;
            if probe.is_null() {
                return None;
            }
            assert_eq!(probe["ended"], "", "session ended early: {probe}");
            (probe["lit"].as_u64().unwrap_or(0) > 0).then_some(())
        },
    )
    .await;
    let sessions = broker::sessions::store::list_for_user(&db, person, 10)
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    let session_id = sessions[0].id.to_string();

    // The workspace's Chromium opened the start URL through the egress proxy, which
    // resolved the bank's name from egress.hosts to the bank's container.
    let audit_log = &stack.broker().state.audit;
    let target = format!("{BANK_HOST}:{BANK_PORT}");
    let accessed = wait_for(
        "the credential access in the audit log",
        Duration::from_secs(60),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            events.into_iter().find(|event| {
                event.action == "session.site.accessed"
                    && event.session_id.as_deref() == Some(session_id.as_str())
                    && event.target.as_deref() == Some(target.as_str())
            })
        },
    )
    .await;
    assert_eq!(accessed.outcome, "success", "{accessed:?}");
    let details: serde_json::Value = serde_json::from_str(&accessed.details).unwrap();
    assert_eq!(
        details["resolved_ip"].as_str(),
        Some(bank.address.to_string().as_str()),
        "{accessed:?}"
    );

    // Auto-login reports success, having typed the stored username and password byte
    // for byte and a TOTP code the bank accepted, once each.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let finished = loop {
        let events = audit_log.list(0, 100_000).await.unwrap();
        let session_events: Vec<_> = events
            .into_iter()
            .filter(|event| event.session_id.as_deref() == Some(session_id.as_str()))
            .collect();
        if let Some(event) = session_events
            .iter()
            .find(|event| event.action == "credential.auto_login.finished")
        {
            break event.clone();
        }
        if tokio::time::Instant::now() > deadline {
            let trail: Vec<String> = session_events
                .iter()
                .map(|event| format!("{} {} {}", event.action, event.outcome, event.details))
                .collect();
            panic!(
                "auto-login did not finish within 180 s; the session's audit events: {trail:#?}; the bank received {}",
                bank_received(bank).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let received = bank_received(bank).await;
    assert_eq!(
        finished.outcome, "success",
        "{finished:?}; the bank received {received}"
    );
    let password_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(BANK_PASSWORD));
    assert_eq!(
        received["logins"],
        serde_json::json!([{
            "username": BANK_USERNAME,
            "password_sha256": password_sha256,
            "accepted": true,
        }]),
        "{received}"
    );
    assert_eq!(received["totp"], serde_json::json!([true]), "{received}");

    // The canvas shows the account page with its statement.
    wait_for(
        "the statement on the viewer canvas",
        Duration::from_secs(60),
        || async {
            let rules = browser.script(STATEMENT_PROBE).await.as_u64().unwrap_or(0);
            (rules >= 8).then_some(())
        },
    )
    .await;

    // The person types a note through the live view: Tab moves from the top of the
    // fresh account page past its two links to the note field, Enter submits it.
    let note = "note-42 from the live view";
    let keys = format!("\u{E004}\u{E004}\u{E004}{note}\u{E007}");
    browser.type_into("#screen", &keys).await;
    let received = wait_for("the note at the bank", Duration::from_secs(60), || async {
        let received = bank_received(bank).await;
        (received["notes"]
            .as_array()
            .is_some_and(|notes| !notes.is_empty()))
        .then_some(received)
    })
    .await;
    assert_eq!(received["notes"], serde_json::json!([note]), "{received}");

    // The person scrolls through the statement for a few seconds: each wheel turn over
    // the canvas moves the page, and the canvas shows the change. A turn that shows
    // nothing within five seconds is repeated, as a person would turn the wheel again;
    // the page must still move within 30 seconds.
    let reading_started = tokio::time::Instant::now();
    let mut turns = 0;
    while reading_started.elapsed() < Duration::from_secs(6) {
        let before = browser.script(CANVAS_HASH).await;
        let delta_y = if turns % 4 < 2 { 240 } else { -240 };
        let mut last_turn: Option<tokio::time::Instant> = None;
        wait_for("the canvas to change", Duration::from_secs(30), || {
            let turn_again = last_turn.is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
            if turn_again {
                last_turn = Some(tokio::time::Instant::now());
            }
            let browser = &browser;
            let before = &before;
            async move {
                if turn_again {
                    browser.script(&wheel_script(delta_y)).await;
                }
                let now = browser.script(CANVAS_HASH).await;
                (now != *before).then_some(())
            }
        })
        .await;
        turns += 1;
    }

    // Ending the session from the viewer seals its recording, which verifies against the
    // audit chain.
    browser.click("form[action$='/end'] button").await;
    let sealed = wait_for(
        "the sealed recording in the audit log",
        Duration::from_secs(60),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            events.into_iter().find(|event| {
                event.action == "recording.sealed"
                    && event.session_id.as_deref() == Some(session_id.as_str())
            })
        },
    )
    .await;
    let recording: Uuid = sealed
        .target
        .as_deref()
        .unwrap()
        .trim_start_matches("recording:")
        .parse()
        .unwrap();
    let config = broker::config::load(
        None,
        [(
            "STRONGROOM_DATA_DIR".to_owned(),
            stack.dir.path().display().to_string(),
        )],
    )
    .unwrap();
    let report = broker::recordings::verify(&config, audit_log, recording)
        .await
        .unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    recording
}

/// Runs the `strongroom` binary built beside this test on the stack's data directory and
/// returns its standard output. Panics with its error output when it fails.
fn strongroom_cli(stack: &Stack, args: &[&str]) -> String {
    let test_binary = std::env::current_exe().unwrap();
    // target/<profile>/deps/end_to_end-<hash>: the binary is in target/<profile>.
    let binary = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("strongroom");
    let output = std::process::Command::new(&binary)
        .args(args)
        .env("STRONGROOM_DATA_DIR", stack.dir.path())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {}: {error}; run `cargo build -p broker`",
                binary.display()
            )
        });
    assert!(
        output.status.success(),
        "strongroom {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Reads the duration of a media file with ffprobe, in seconds.
fn ffprobe_duration(path: &std::path::Path) -> f64 {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "ffprobe printed no duration for {}: {text:?}",
            path.display()
        )
    })
}

/// Checks the recording from an auditor's account. The auditor signs in, finds the person's
/// recording in the list, plays it and seeks in it. The recording exports as evidence
/// that verifies offline against the pinned public key. A retention sweep with the
/// clock past the site's retention deletes it, and the player then says so.
async fn auditor_replays_exports_and_retention_deletes(
    stack: &Stack,
    person: &str,
    recording: Uuid,
) {
    use strongroom_tests::player::{seek_to, wait_player};
    let (_, totp) = stack.add_user("auditor", &[Role::Auditor]).await;
    let browser = Browser::start().await;
    stack.sign_in_browser(&browser, "auditor", &totp).await;
    browser.element("form[action='/auth/logout']").await;

    browser
        .open(&format!("{}/recordings?person={person}", stack.base))
        .await;
    browser
        .click(&format!("a.recording-link[data-recording='{recording}']"))
        .await;
    let ready = wait_player(&browser, "r.ready || r.error").await;
    assert_eq!(ready["error"], "", "player failed: {ready}");
    assert!(
        ready["lit"].as_u64().unwrap() > 0,
        "first frame not drawn: {ready}"
    );
    let duration = ready["duration"].as_f64().unwrap();
    assert!(duration >= 4.0, "recording of {duration} s: {ready}");

    // Playing advances the shown frame.
    browser.click("#play").await;
    let played = wait_player(&browser, "r.error || r.position >= 1000000").await;
    assert_eq!(played["error"], "", "playback failed: {played}");
    browser.click("#play").await;

    // A seek to the middle and back to the start shows frames of those times. The agent
    // re-sends an unchanged screen every 3 seconds, so a shown frame is at most that old.
    let tolerance = Duration::from_secs(4);
    seek_to(&browser, (duration / 2.0).floor(), tolerance).await;
    let start = seek_to(&browser, 0.5, tolerance).await;
    assert!(start["lit"].as_u64().unwrap() > 0, "{start}");

    // Evidence export, verified offline against the public key an auditor pinned.
    let export = tempfile::tempdir().unwrap();
    let export_dir = export.path().join("evidence");
    let printed = strongroom_cli(
        stack,
        &[
            "recording",
            "export",
            &recording.to_string(),
            export_dir.to_str().unwrap(),
        ],
    );
    assert!(printed.contains(&recording.to_string()), "{printed}");
    let public_key = export.path().join("export-key.pub");
    strongroom_cli(
        stack,
        &["recording", "public-key", public_key.to_str().unwrap()],
    );
    let verified = strongroom_cli(
        stack,
        &[
            "recording",
            "verify-export",
            export_dir.to_str().unwrap(),
            "--public-key",
            public_key.to_str().unwrap(),
        ],
    );
    assert!(verified.contains("verified"), "{verified}");
    // The export spans the frames; the player's length runs on to the recording's end.
    let frames = browser
        .script("return Number(document.getElementById('seek').dataset.framesUs) / 1e6;")
        .await
        .as_f64()
        .unwrap();
    assert!(
        frames <= duration,
        "frames span {frames} s, the recording {duration} s"
    );
    let video_duration = ffprobe_duration(&export_dir.join("recording.webm"));
    assert!(
        (video_duration - frames).abs() < 0.5,
        "exported video lasts {video_duration} s, its frames {frames} s"
    );

    // Retention with the clock past the site's 30 days deletes the recording, and the
    // player names the reason instead of playing.
    let settings = stack.broker().state.portal.hub.recording_settings().clone();
    let retention = broker::recordings::retention::Retention {
        audit: stack.broker().state.audit.clone(),
        storage: settings.storage.clone(),
        keys: settings.keys.clone(),
        clock: std::sync::Arc::new(broker::clock::ManualClock::new(
            chrono::Utc::now() + chrono::Duration::days(31),
        )),
    };
    let report = retention.sweep(false).await.unwrap();
    assert!(
        report.deleted.iter().any(|deleted| deleted.id == recording),
        "retention did not delete {recording}: {:?}",
        report.deleted
    );
    browser
        .open(&format!("{}/recordings/{recording}", stack.base))
        .await;
    let message = browser
        .wait_for_script(
            "const e = document.getElementById('error'); return e && !e.hidden && e.textContent ? e.textContent : null;",
            strongroom_tests::browser::DEFAULT_WAIT,
        )
        .await;
    assert!(
        message.as_str().unwrap().contains("deleted by retention"),
        "{message}"
    );
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_bank_session_from_local_sign_in_to_recording() {
    let bank = DemoBank::start();
    let stack = start_stack(&bank, &[]).await;
    let (person, totp) = stack.add_user("person", &[Role::User]).await;
    add_bank_site(&stack, &bank).await;
    stack.grant(&person, "demo-bank").await;
    let browser = Browser::start().await;

    // Local sign-in with password and TOTP.
    stack.sign_in_browser(&browser, "person", &totp).await;

    let recording = bank_through_the_live_view(&stack, &bank, &browser, &person).await;
    browser.quit().await;

    auditor_replays_exports_and_retention_deletes(&stack, &person, recording).await;

    stack.stop().await;
    drop(bank);
}

/// `oidc-provider-mock` (from PyPI) on 127.0.0.1 and a port the kernel chose; killed
/// on drop.
struct OidcProvider {
    issuer: String,
    _child: tokio::process::Child,
}

const OIDC_MOCK_SCRIPT: &str = "import sys, threading, werkzeug.serving, oidc_provider_mock\n\
server = werkzeug.serving.make_server('127.0.0.1', 0, oidc_provider_mock.app(), threaded=True)\n\
threading.Thread(target=server.serve_forever, daemon=True).start()\n\
print(server.server_port, flush=True)\n\
sys.stdin.read()\n";

impl OidcProvider {
    async fn start() -> OidcProvider {
        use tokio::io::AsyncBufReadExt;
        let python =
            std::env::var("STRONGROOM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", OIDC_MOCK_SCRIPT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run {python}: {error}; install Python 3 and `pip install oidc-provider-mock`")
            });
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("oidc-provider-mock reports its port within 60 s")
        .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("oidc-provider-mock did not start (output {line:?}); run `pip install oidc-provider-mock`")
        });
        OidcProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    }

    /// Sets the claims the provider puts in `sub`'s ID token.
    async fn set_claims(&self, sub: &str, claims: serde_json::Value) {
        let response = reqwest::Client::new()
            .put(format!("{}/users/{sub}", self.issuer))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_bank_session_from_oidc_sign_in_with_mfa_to_recording() {
    let provider = OidcProvider::start().await;
    let bank = DemoBank::start();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("oidc-client-secret");
    std::fs::write(&secret_file, "end-to-end-client-secret\n").unwrap();
    let overrides = [
        (
            "STRONGROOM_AUTH__OIDC__ISSUER",
            format!("\"{}\"", provider.issuer),
        ),
        (
            "STRONGROOM_AUTH__OIDC__CLIENT_ID",
            "\"strongroom-e2e\"".to_owned(),
        ),
        (
            "STRONGROOM_AUTH__OIDC__CLIENT_SECRET",
            format!("\"file:{}\"", secret_file.display()),
        ),
        ("STRONGROOM_AUTH__OIDC__MFA_METHODS", "[\"mfa\"]".to_owned()),
        (
            "STRONGROOM_AUTH__OIDC__GROUPS__USER",
            "[\"staff\"]".to_owned(),
        ),
    ];
    let stack = start_stack(&bank, &overrides).await;
    let db = stack.broker().state.db.clone();
    add_bank_site(&stack, &bank).await;
    let now = chrono::Utc::now().timestamp();
    provider
        .set_claims(
            "grace",
            serde_json::json!({
                "preferred_username": "grace",
                "groups": ["staff"],
                "amr": ["pwd", "mfa"],
                "auth_time": now,
            }),
        )
        .await;
    let browser = Browser::start().await;

    // Sign-in through the provider's own authorization page, as `grace`.
    browser.open(&format!("{}/", stack.base)).await;
    browser.click("#sso").await;
    browser.type_into("input[name=sub]", "grace").await;
    browser.click("form button[type=submit]").await;
    let person = wait_for("the OIDC account", Duration::from_secs(60), || async {
        broker::auth::users::find_oidc(&db, &provider.issuer, "grace")
            .await
            .unwrap()
    })
    .await
    .id;
    stack.grant(&person, "demo-bank").await;
    // The portal lists the site once it is granted.
    browser.open(&format!("{}/", stack.base)).await;

    bank_through_the_live_view(&stack, &bank, &browser, &person).await;

    browser.quit().await;
    stack.stop().await;
    drop(bank);
}

/// A wrong stored password: the demo bank shows its login form again, and auto-login
/// ends at once as rejected, without a second attempt, instead of waiting for the
/// one-time code field until its step times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_bank_rejects_wrong_stored_password() {
    let bank = DemoBank::start();
    let stack = start_stack(&bank, &[]).await;
    let ca_pem = bank_ca_pem(&bank).await;
    std::fs::write(stack.dir.path().join("demo-bank-ca.pem"), ca_pem).unwrap();
    stack.import_sites("sites.toml", &demo_site(&bank)).await;
    let wrong_password = "Wrong-stored-password-42";
    set_bank_credential_with_password(&stack, wrong_password).await;
    let person = stack.person("person", &[Role::User], &["demo-bank"]).await;

    let (session_id, _) = person.launch("demo-bank").await;
    let session = session_id.to_string();
    let audit_log = broker::audit::AuditLog::new(
        stack.db(),
        std::sync::Arc::new(broker::clock::SystemClock),
    );
    let finished = wait_for(
        "the auto-login result in the audit log",
        Duration::from_secs(180),
        || async {
            let events = audit_log.list(0, 100_000).await.unwrap();
            events.into_iter().find(|event| {
                event.action == "credential.auto_login.finished"
                    && event.session_id.as_deref() == Some(session.as_str())
            })
        },
    )
    .await;
    let details: serde_json::Value = serde_json::from_str(&finished.details).unwrap();
    assert_eq!(finished.outcome, "failure", "{details}");
    assert_eq!(details["reason"], "rejected", "{details}");
    // Step 4 of the demo site's recipe waits for the one-time code field.
    assert_eq!(details["failed_step"], 4, "{details}");

    let received = bank_received(&bank).await;
    let logins = received["logins"].as_array().unwrap();
    assert_eq!(logins.len(), 1, "the login was retried: {received}");
    assert_eq!(logins[0]["accepted"], false, "{received}");
    assert!(
        received["totp"].as_array().unwrap().is_empty(),
        "{received}"
    );
    let trail: String = audit_log
        .list(0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|event| format!("{} {:?} {}\n", event.action, event.target, event.details))
        .collect();
    assert!(!trail.contains(wrong_password), "{trail}");

    person.end(session_id).await;
    stack.stop().await;
    drop(bank);
}
