//! Test harness: a local HTTP server, the agent process and a broker-side client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use futures::{SinkExt, StreamExt};
use protocol::{AgentMessage, BrokerMessage, SessionSecret};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-session-secret-0123456789abcdef0123456789abcdef";

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that serves fixed pages and records requests.
pub struct HttpServer {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    notify: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Serves `pages` (path → HTML). `POST /login` returns a redirect to `/home`.
    pub async fn start(pages: HashMap<&'static str, String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let pages = Arc::new(pages);
        let task = {
            let (requests, notify) = (requests.clone(), notify.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    let (requests, notify, pages) =
                        (requests.clone(), notify.clone(), pages.clone());
                    tokio::spawn(async move {
                        let _ = serve_one(stream, &pages, &requests, &notify).await;
                    });
                }
            })
        };
        Self {
            address,
            requests,
            notify,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until a recorded request satisfies `predicate`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        predicate: impl Fn(&Request) -> bool,
    ) -> Request {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.notify.notified();
                if let Some(found) = self.requests.lock().unwrap().iter().find(|r| predicate(r)) {
                    return found.clone();
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no matching request within {timeout:?}; got {:?}",
                self.requests()
            )
        })
    }
}

async fn serve_one(
    stream: TcpStream,
    pages: &HashMap<&'static str, String>,
    requests: &Mutex<Vec<Request>>,
    notify: &Notify,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            if header == "\r\n" || header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).await?;
        requests.lock().unwrap().push(Request {
            method: method.clone(),
            path: path.clone(),
            body,
        });
        notify.notify_waiters();

        let route = path.split('?').next().unwrap_or("");
        let response = if method == "POST" && route == "/login" {
            "HTTP/1.1 303 See Other\r\nLocation: /home\r\nContent-Length: 0\r\n\r\n".to_owned()
        } else if let Some(page) = pages.get(route) {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
        };
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}

/// Decodes `application/x-www-form-urlencoded` into name → raw bytes.
pub fn parse_form(body: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for pair in body.split(|&b| b == b'&') {
        let mut halves = pair.splitn(2, |&b| b == b'=');
        let name = percent_decode(halves.next().unwrap_or(&[]));
        let value = percent_decode(halves.next().unwrap_or(&[]));
        out.insert(String::from_utf8(name).unwrap(), value);
    }
    out
}

pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => {
                let hex = std::str::from_utf8(&input[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    out
}

/// Returns the value of query parameter `name` in `path`, percent-decoded.
pub fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let form = parse_form(query.as_bytes());
    form.get(name)
        .map(|v| String::from_utf8(v.clone()).unwrap())
}

/// The agent process under test; killed on drop.
pub struct Agent {
    pub child: Child,
    pub address: SocketAddr,
    /// File with the agent's and Chromium's stderr.
    pub log_path: std::path::PathBuf,
}

impl Drop for Agent {
    /// Stops the agent with SIGTERM so it removes its Chromium profile, and kills it if
    /// it has not exited within 10 s.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// A directory removed on drop, even when the test fails.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("strongroom-agent-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Agent {
    pub async fn start(start_url: &str, width: u32, height: u32) -> Self {
        Self::start_wrapped(&[], start_url, width, height).await
    }

    /// Starts the agent with extra arguments.
    pub async fn start_with_args(extra: &[&str], start_url: &str, width: u32, height: u32) -> Self {
        Self::start_full(&[], extra, start_url, width, height).await
    }

    /// Starts the agent as the last argument of `wrapper` (a command and its arguments).
    pub async fn start_wrapped(wrapper: &[&str], start_url: &str, width: u32, height: u32) -> Self {
        Self::start_full(wrapper, &[], start_url, width, height).await
    }

    async fn start_full(
        wrapper: &[&str],
        extra: &[&str],
        start_url: &str,
        width: u32,
        height: u32,
    ) -> Self {
        let secret = SessionSecret::new(SECRET.to_owned());
        let binary = env!("CARGO_BIN_EXE_strongroom-agent");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "strongroom-agent-test-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--no-sandbox", "--fps", "10"])
            .args(["--secret-sha256", &secret.sha256_hex()])
            .args(["--start-url", start_url])
            .args(extra)
            .args([
                "--width",
                &width.to_string(),
                "--height",
                &height.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("starting strongroom-agent");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .ok()
            .and_then(|line| line.ok().flatten());
        let Some(line) = line else {
            panic!(
                "agent did not become ready; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        let address = line
            .strip_prefix("LISTENING ")
            .expect("readiness line")
            .parse()
            .unwrap();
        Self {
            child,
            address,
            log_path,
        }
    }

    /// Waits for the agent to exit and returns its status code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("agent did not exit in time")
            .unwrap()
            .code()
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }
}

/// Returns the pids of `pid`'s direct children.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(candidate) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{candidate}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(candidate);
        }
    }
    out
}

pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        state != Some('Z')
    })
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A broker-side connection to the agent.
pub struct BrokerClient {
    socket: Socket,
}

impl BrokerClient {
    pub async fn connect(address: SocketAddr) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{address}/"))
            .await
            .expect("connecting to the agent");
        Self { socket }
    }

    pub async fn connect_authenticated(address: SocketAddr) -> Self {
        let mut client = Self::connect(address).await;
        client
            .send(&BrokerMessage::Auth {
                secret: SessionSecret::new(SECRET.to_owned()),
            })
            .await;
        client
    }

    pub async fn send(&mut self, message: &BrokerMessage) {
        let frame = protocol::encode_broker_message(message);
        self.socket
            .send(Message::Binary(frame.to_vec().into()))
            .await
            .expect("sending to the agent");
    }

    pub async fn send_raw(&mut self, frame: Vec<u8>) {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .expect("sending to the agent");
    }

    /// Returns the next agent message, or None when the connection closed.
    pub async fn next(&mut self, timeout: Duration) -> Option<AgentMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .expect("no agent message in time");
            match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Binary(bytes))) => {
                    return Some(
                        protocol::decode_agent_message(&bytes)
                            .expect("agent sent an invalid frame"),
                    );
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Key down and up events that type `text`, as a browser reports them.
pub fn key_events(text: &str) -> Vec<BrokerMessage> {
    let mut events = Vec::new();
    for character in text.chars() {
        let code = match character {
            'a'..='z' | 'A'..='Z' => format!("Key{}", character.to_ascii_uppercase()),
            ' ' => "Space".to_owned(),
            _ => "IntlBackslash".to_owned(),
        };
        let shifted = character.is_ascii_uppercase();
        if shifted {
            events.push(key("ShiftLeft", "Shift", true));
        }
        events.push(key(&code, &character.to_string(), true));
        events.push(key(&code, &character.to_string(), false));
        if shifted {
            events.push(key("ShiftLeft", "Shift", false));
        }
    }
    events
}

pub fn key(code: &str, key: &str, pressed: bool) -> BrokerMessage {
    BrokerMessage::Key(protocol::KeyEvent {
        code: code.into(),
        key: key.into(),
        pressed,
    })
}

/// Decodes VP8 packets and returns the RGB24 pixel at (x, y) of every decoded frame.
pub struct Decoder {
    decoder: ffmpeg::decoder::Video,
}

impl Decoder {
    pub fn new() -> Self {
        ffmpeg::init().unwrap();
        let codec = ffmpeg::decoder::find(ffmpeg::codec::Id::VP8).expect("VP8 decoder");
        let decoder = ffmpeg::codec::context::Context::new_with_codec(codec)
            .decoder()
            .video()
            .unwrap();
        Self { decoder }
    }

    /// Decodes one packet and returns (width, height, rgb24 rows) of the frame it produced.
    pub fn decode(&mut self, data: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
        self.decoder
            .send_packet(&ffmpeg::Packet::copy(data))
            .unwrap();
        let mut frame = ffmpeg::frame::Video::empty();
        self.decoder.receive_frame(&mut frame).ok()?;
        let (width, height) = (frame.width(), frame.height());
        let mut scaler = ffmpeg::software::scaling::Context::get(
            frame.format(),
            width,
            height,
            ffmpeg::format::Pixel::RGB24,
            width,
            height,
            ffmpeg::software::scaling::Flags::POINT,
        )
        .unwrap();
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler.run(&frame, &mut rgb).unwrap();
        let stride = rgb.stride(0);
        let mut pixels = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height as usize {
            pixels.extend_from_slice(&rgb.data(0)[y * stride..y * stride + width as usize * 3]);
        }
        Some((width, height, pixels))
    }
}

pub fn pixel(frame: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
    let offset = ((y * frame.0 + x) * 3) as usize;
    [frame.2[offset], frame.2[offset + 1], frame.2[offset + 2]]
}
