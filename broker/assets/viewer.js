// Strongroom live view: decodes the workspace's VP8 stream with WebCodecs onto a
// canvas and sends the person's keyboard, mouse, wheel, paste and resize events back.
// The workspace's screen follows the size of the #stage element; the canvas takes the
// stream's size and shrinks to fit the stage.
// Frames: binary 0x01, flags (bit 0 keyframe), pts (u64 little-endian, microseconds),
// VP8 data. Status: JSON text with a `type`.
// A dropped socket reconnects with exponential backoff and a fresh one-time ticket
// from the portal. Only an `ended` status, or a ticket request that the portal
// rejects because the session is gone, stops the retries.
// An `ended` status carries the end reason code. The page's data-end-reasons maps
// each code of the broker to the sentence that the portal's pages show for it.
"use strict";

(function () {
  const root = document.getElementById("viewer");
  const canvas = document.getElementById("screen");
  const stage = document.getElementById("stage");
  const status = document.getElementById("status");
  const placeholder = document.getElementById("placeholder");
  const endScreen = document.getElementById("ended");
  const connection = document.getElementById("connection");
  const watched = document.getElementById("watched");
  // Shown once the recorder has accepted the stream's configuration, so a session whose
  // workspace never started does not claim to be recorded.
  const recorded = document.getElementById("recorded");
  const mode = root.dataset.mode;
  const endReasons = JSON.parse(root.dataset.endReasons || "{}");
  const context = canvas.getContext("2d", { desynchronized: true });

  // Returns the sentence for an end reason code. An unknown code, or a sentence from
  // the stream itself, shows as it came.
  function describeEnd(reason) {
    return Object.prototype.hasOwnProperty.call(endReasons, reason) ? endReasons[reason] : reason;
  }

  function show(element, text) {
    element.textContent = text;
    element.hidden = false;
  }

  if (!window.isSecureContext || typeof VideoDecoder === "undefined") {
    show(status, "This browser cannot show the live view: it needs WebCodecs, which browsers offer only over HTTPS or on localhost. Open the portal over HTTPS in a current Chrome, Edge, Firefox or Safari.");
    return;
  }

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const firstBackoffMs = 500;
  const maxBackoffMs = 15000;
  let socket = null;
  let backoffMs = firstBackoffMs;
  let reconnects = 0;
  root.dataset.reconnects = "0";

  let decoder = null;
  let waitingForKeyframe = true;
  let ended = false;
  let idleWarningShown = false;
  // The site's clipboard policy, from the broker's `clipboard_policy` status.
  let clipboardPolicy = { paste_in: false, copy_out: false };
  // Screen bounds of the agent protocol, and the largest paste in UTF-8 bytes.
  const minDimension = 64;
  const maxDimension = 4096;
  const maxClipboardBytes = 8192;
  root.dataset.clipboardReceived = "0";

  function closeDecoder() {
    if (decoder && decoder.state !== "closed") {
      decoder.close();
    }
    decoder = null;
  }

  async function configure(message) {
    const config = { codec: message.codec, codedWidth: message.width, codedHeight: message.height, optimizeForLatency: true };
    const support = await VideoDecoder.isConfigSupported(config);
    if (!support.supported) {
      show(status, "This browser cannot decode the " + message.codec + " stream. Use a current Chrome, Edge, Firefox or Safari.");
      return;
    }
    closeDecoder();
    canvas.width = message.width;
    canvas.height = message.height;
    decoder = new VideoDecoder({
      output: (frame) => {
        context.drawImage(frame, 0, 0, canvas.width, canvas.height);
        root.dataset.frameSize = frame.displayWidth + "x" + frame.displayHeight;
        frame.close();
      },
      error: () => {
        // Chrome reclaims idle decoders; the next keyframe starts a new one.
        waitingForKeyframe = true;
        configure(message);
      },
    });
    decoder.configure(config);
    waitingForKeyframe = true;
  }

  function onVideo(buffer) {
    const bytes = new DataView(buffer);
    if (bytes.byteLength < 10 || bytes.getUint8(0) !== 0x01 || !decoder || decoder.state !== "configured") {
      return;
    }
    const keyframe = (bytes.getUint8(1) & 1) === 1;
    if (waitingForKeyframe && !keyframe) {
      return;
    }
    if (!keyframe && decoder.decodeQueueSize > 8) {
      // The decoder fell behind: skip to the next keyframe rather than lag.
      waitingForKeyframe = true;
      return;
    }
    waitingForKeyframe = false;
    const timestamp = Number(bytes.getBigUint64(2, true));
    decoder.decode(new EncodedVideoChunk({ type: keyframe ? "key" : "delta", timestamp, data: new Uint8Array(buffer, 10) }));
  }

  function onStatus(message) {
    switch (message.type) {
      case "config":
        recorded.hidden = false;
        configure(message);
        break;
      case "placeholder":
        placeholder.hidden = !message.active;
        canvas.style.visibility = message.active ? "hidden" : "visible";
        break;
      case "idle_warning":
        show(status, "This session ends in " + message.seconds + " seconds without input.");
        idleWarningShown = true;
        break;
      case "notice":
        show(status, message.message);
        break;
      case "recording_failed":
        recorded.hidden = true;
        show(status, "The recording stopped, so the session is frozen and ending: " + message.reason);
        break;
      case "watchers":
        watched.textContent = "An administrator is watching this session (read-only).";
        watched.hidden = message.count === 0;
        break;
      case "input_refused":
        show(status, (mode === "watch" ? "Read-only view: " : "Not sent: ") + message.reason + ".");
        break;
      case "resize_rejected":
        show(status, "The session's screen keeps its size: " + message.reason + ".");
        break;
      case "clipboard_policy":
        clipboardPolicy = { paste_in: message.paste_in === true, copy_out: message.copy_out === true };
        break;
      case "clipboard":
        copyToLocalClipboard(message.text);
        break;
      case "ended":
        finish(describeEnd(message.reason));
        break;
    }
  }

  // Writes text copied in the workspace to the person's clipboard. Browsers allow this
  // only while the page has focus.
  function copyToLocalClipboard(text) {
    root.dataset.clipboardReceived = String(Number(root.dataset.clipboardReceived) + 1);
    if (!navigator.clipboard || !navigator.clipboard.writeText) {
      show(status, "Text was copied in the session, but this browser does not let the page write to your clipboard.");
      return;
    }
    navigator.clipboard.writeText(text).catch(() => {
      show(status, "Text was copied in the session, but your browser did not allow writing it to your clipboard. Click the session and copy again.");
    });
  }

  function finish(text) {
    ended = true;
    connection.hidden = true;
    closeDecoder();
    show(endScreen, text);
    canvas.style.visibility = "hidden";
  }

  function connect(path) {
    socket = new WebSocket(scheme + "//" + location.host + path);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      connection.hidden = true;
      backoffMs = firstBackoffMs;
      if (mode === "control") {
        sendSize();
      }
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") {
        onStatus(JSON.parse(event.data));
      } else {
        onVideo(event.data);
      }
    });
    socket.addEventListener("close", () => {
      if (!ended) {
        scheduleReconnect();
      }
    });
  }

  function scheduleReconnect() {
    const delay = backoffMs / 2 + Math.random() * (backoffMs / 2);
    backoffMs = Math.min(backoffMs * 2, maxBackoffMs);
    show(connection, "The connection to the session dropped. Reconnecting…");
    setTimeout(reconnect, delay);
  }

  // Fetches a fresh ticket for the same session and opens a new socket with it.
  async function reconnect() {
    let response;
    let body = null;
    try {
      response = await fetch(root.dataset.ticketUrl, { method: "POST", credentials: "same-origin", cache: "no-store", redirect: "error", headers: { Accept: "application/json" } });
      if (response.ok || response.status === 410) {
        body = await response.json();
      }
    } catch (error) {
      // The network is still down, or a proxy sent something other than JSON.
      scheduleReconnect();
      return;
    }
    if (response.ok) {
      reconnects += 1;
      root.dataset.reconnects = String(reconnects);
      waitingForKeyframe = true;
      connect(body.socket);
    } else if (response.status === 410) {
      finish(body.ended);
    } else if (response.status === 401 || response.status === 403 || response.status === 404) {
      finish("You can no longer view this session. Sign in to the portal again to reconnect.");
    } else {
      scheduleReconnect();
    }
  }

  // Sends the stage's size in CSS pixels, within the protocol's bounds.
  function sendSize() {
    const fit = (value) => Math.max(minDimension, Math.min(maxDimension, Math.floor(value)));
    const ratio = Math.min(4, Math.max(0.25, window.devicePixelRatio || 1));
    send({ type: "resize", width: fit(stage.clientWidth), height: fit(stage.clientHeight), device_pixel_ratio: ratio });
  }

  // Window resizes come in bursts; the workspace follows once they settle.
  let resizeTimer = null;
  function scheduleSize() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(sendSize, 250);
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      if (idleWarningShown && message.type !== "resize") {
        // Input resets the idle timer, so the warning no longer holds.
        idleWarningShown = false;
        status.hidden = true;
      }
    }
  }

  connect(root.dataset.socket);

  if (mode !== "control") {
    return;
  }

  function position(event) {
    const box = canvas.getBoundingClientRect();
    const x = Math.round(((event.clientX - box.left) / box.width) * canvas.width);
    const y = Math.round(((event.clientY - box.top) / box.height) * canvas.height);
    return { x: Math.max(0, Math.min(canvas.width - 1, x)), y: Math.max(0, Math.min(canvas.height - 1, y)) };
  }

  const buttons = ["left", "middle", "right"];
  canvas.tabIndex = 0;
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
  // Where the site allows pasting in, Control+V (Command+V) is left to the browser,
  // whose paste event then sends the text; the agent presses Control+V remotely.
  function isPasteShortcut(event) {
    return clipboardPolicy.paste_in && (event.ctrlKey || event.metaKey) && event.code === "KeyV";
  }
  canvas.addEventListener("keydown", (event) => {
    if (isPasteShortcut(event)) {
      return;
    }
    event.preventDefault();
    send({ type: "key", code: event.code, key: event.key, pressed: true });
  });
  canvas.addEventListener("keyup", (event) => {
    if (isPasteShortcut(event)) {
      return;
    }
    event.preventDefault();
    send({ type: "key", code: event.code, key: event.key, pressed: false });
  });
  document.addEventListener("paste", (event) => {
    if (document.activeElement !== canvas) {
      return;
    }
    event.preventDefault();
    if (!clipboardPolicy.paste_in) {
      show(status, "This bank's policy does not allow pasting into the session.");
      return;
    }
    const text = event.clipboardData ? event.clipboardData.getData("text/plain") : "";
    if (text === "") {
      return;
    }
    if (new TextEncoder().encode(text).length > maxClipboardBytes) {
      show(status, "Not pasted: the text is longer than " + maxClipboardBytes + " bytes.");
      return;
    }
    send({ type: "paste", text });
  });
  let pendingMove = null;
  canvas.addEventListener("mousemove", (event) => {
    if (pendingMove === null) {
      requestAnimationFrame(() => {
        send(Object.assign({ type: "mouse_move" }, pendingMove));
        pendingMove = null;
      });
    }
    pendingMove = position(event);
  });
  for (const [name, pressed] of [["mousedown", true], ["mouseup", false]]) {
    canvas.addEventListener(name, (event) => {
      if (event.button > 2) {
        return;
      }
      canvas.focus();
      send(Object.assign({ type: "mouse_button", button: buttons[event.button], pressed }, position(event)));
    });
  }
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    send(Object.assign({ type: "wheel", delta_x: event.deltaX, delta_y: event.deltaY }, position(event)));
  }, { passive: false });

  window.addEventListener("resize", scheduleSize);
})();
