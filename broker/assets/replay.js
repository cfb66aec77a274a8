// Strongroom recording player. The broker decrypts and verifies each segment and serves
// its packets; this script decodes them with WebCodecs onto the canvas. Segments are
// fetched one at a time, so memory stays bounded however long the recording is.
//
// The canvas's data-position-us attribute is the offset from the recording's start
// of the frame on screen, in microseconds. The seek bar spans the recording's length as
// the recordings list shows it; its data-frames-us attribute is the span of the frames.
"use strict";

(function () {
  const player = document.getElementById("player");
  const id = player.dataset.recording;
  const canvas = document.getElementById("screen");
  const context = canvas.getContext("2d");
  const status = document.getElementById("status");
  const error = document.getElementById("error");
  const placeholder = document.getElementById("placeholder");
  const playButton = document.getElementById("play");
  const seekBar = document.getElementById("seek");
  const timeLabel = document.getElementById("time");
  const durationLabel = document.getElementById("duration");
  const speedSelect = document.getElementById("speed");

  const MARKER_COLOURS = {
    launch: "#2a7",
    "auto-login": "#27c",
    navigation: "#999",
    "idle-warning": "#d90",
    end: "#c33",
  };

  let index = null;
  let decoder = null;
  let decoderConfig = null;
  // Generation of the current seek or playback; an older one stops at its next step.
  let generation = 0;
  let playing = false;
  // Offset of the shown frame from the first packet, in microseconds.
  let positionUs = 0;
  // Frames with a larger timestamp than this are decoded but not drawn (during a seek).
  let drawLimitUs = Infinity;

  function showError(text) {
    error.textContent = text;
    error.hidden = false;
    status.hidden = true;
    stop();
  }

  function clock(us) {
    const seconds = Math.floor(us / 1e6);
    const pad = (n) => String(n).padStart(2, "0");
    return Math.floor(seconds / 3600) + ":" + pad(Math.floor(seconds / 60) % 60) + ":" + pad(seconds % 60);
  }

  async function fetchJson(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      let text = "the broker answered " + response.status;
      try {
        text = (await response.json()).error || text;
      } catch (_) {}
      throw new Error(text);
    }
    return response;
  }

  // Returns the records of a segment: {kind, pts, keyframe, data}.
  async function fetchSegment(number) {
    const response = await fetchJson("/recordings/" + id + "/segments/" + number);
    const buffer = await response.arrayBuffer();
    const view = new DataView(buffer);
    const records = [];
    let offset = 0;
    while (offset + 14 <= buffer.byteLength) {
      const kind = view.getUint8(offset);
      const pts = Number(view.getBigUint64(offset + 1));
      const keyframe = view.getUint8(offset + 9) === 1;
      const length = view.getUint32(offset + 10);
      const data = new Uint8Array(buffer, offset + 14, length);
      records.push({ kind, pts, keyframe, data });
      offset += 14 + length;
    }
    if (offset !== buffer.byteLength) {
      throw new Error("segment " + number + " arrived truncated");
    }
    return records;
  }

  function newDecoder() {
    if (decoder && decoder.state !== "closed") {
      decoder.close();
    }
    decoder = new VideoDecoder({
      output: (frame) => {
        const offset = frame.timestamp - index.first_pts_us;
        if (frame.timestamp <= drawLimitUs) {
          context.drawImage(frame, 0, 0, canvas.width, canvas.height);
          positionUs = offset;
          canvas.dataset.positionUs = String(offset);
          timeLabel.textContent = clock(offset);
          if (!seekBar.matches(":active")) {
            seekBar.value = String(offset / 1e6);
          }
        }
        frame.close();
      },
      error: (e) => showError("The video could not be decoded: " + e.message),
    });
    decoder.configure(decoderConfig);
  }

  function segmentAt(pts) {
    let found = 0;
    for (const segment of index.segments) {
      if (segment.start_pts_us <= pts) {
        found = segment.index;
      }
    }
    return found;
  }

  // Applies a non-packet record: a placeholder marker, or a stream configuration.
  // A new picture size resizes the canvas and reconfigures the decoder; the keyframe
  // of the new size follows the configuration.
  function applyMarker(record) {
    if (record.kind === 1) {
      placeholder.hidden = false;
    } else if (record.kind === 2) {
      placeholder.hidden = true;
    } else if (record.kind === 3) {
      const config = JSON.parse(new TextDecoder().decode(record.data));
      if (config.width === decoderConfig.codedWidth && config.height === decoderConfig.codedHeight && config.codec === decoderConfig.codec) {
        return;
      }
      decoderConfig = { codec: config.codec, codedWidth: config.width, codedHeight: config.height };
      canvas.width = config.width;
      canvas.height = config.height;
      canvas.dataset.streamSize = config.width + "x" + config.height;
      if (decoder && decoder.state !== "closed") {
        decoder.configure(decoderConfig);
      }
    }
  }

  // Shows the last frame at or before `offsetUs`: decodes from the keyframe that starts
  // its segment up to the target, so the target frame is drawn last. The "Seeking to"
  // status lasts until this seek ends, or until a later seek or playback replaces it.
  async function seek(offsetUs) {
    const mine = ++generation;
    playing = false;
    playButton.textContent = "Play";
    const target = index.first_pts_us + Math.max(0, offsetUs);
    const number = segmentAt(target);
    status.textContent = "Seeking to " + clock(offsetUs);
    status.hidden = false;
    try {
      const records = await fetchSegment(number);
      if (mine !== generation) {
        return;
      }
      newDecoder();
      drawLimitUs = target;
      placeholder.hidden = true;

      for (const record of records) {
        if (record.pts > target) {
          break;
        }
        if (record.kind !== 0) {
          applyMarker(record);
          continue;
        }
        decoder.decode(new EncodedVideoChunk({ type: record.keyframe ? "key" : "delta", timestamp: record.pts, data: record.data }));
      }
      await decoder.flush();
    } catch (e) {
      // A later seek or playback closed this seek's decoder; it owns the status now.
      if (mine !== generation) {
        return;
      }
      throw e;
    } finally {
      if (mine === generation) {
        drawLimitUs = Infinity;
        clearSeekStatus();
      }
    }
  }

  function clearSeekStatus() {
    if (status.textContent.startsWith("Seeking to")) {
      status.textContent = "";
      status.hidden = true;
    }
  }

  // Stops playback or a seek. A seek's status goes with it.
  function stop() {
    generation++;
    playing = false;
    playButton.textContent = "Play";
    clearSeekStatus();
  }

  // Plays from the frame on screen. A failure after a later seek or pause replaced
  // this playback, such as its closed decoder, is not shown.
  async function play() {
    const mine = generation + 1;
    try {
      await playFrom(mine);
    } catch (e) {
      if (mine === generation) {
        throw e;
      }
    }
  }

  // Plays as generation `mine` from the frame on screen, fetching one segment ahead.
  async function playFrom(mine) {
    generation = mine;
    playing = true;
    playButton.textContent = "Pause";
    const startPts = index.first_pts_us + positionUs;
    let number = segmentAt(startPts);
    newDecoder();
    let wallStart = performance.now();
    let speed = Number(speedSelect.value);
    let mediaStart = startPts;
    speedSelect.onchange = () => {
      // Restart the timing from the frame on screen so the new speed applies at once.
      mediaStart = index.first_pts_us + positionUs;
      wallStart = performance.now();
      speed = Number(speedSelect.value);
    };
    let next = fetchSegment(number);
    drawLimitUs = Infinity;
    while (mine === generation && number < index.segments.length) {
      const records = await next;
      next = number + 1 < index.segments.length ? fetchSegment(number + 1) : null;
      if (next) {
        next.catch(() => {});
      }
      for (const record of records) {
        if (mine !== generation) {
          return;
        }
        if (record.kind !== 0) {
          applyMarker(record);
          continue;
        }
        // Frames from the segment's keyframe up to the start are decoded at once;
        // later ones at their time.
        if (record.pts > startPts) {
          const due = wallStart + (record.pts - mediaStart) / 1000 / speed;
          const wait = due - performance.now();
          if (wait > 0) {
            await new Promise((resolve) => setTimeout(resolve, wait));
          }
          if (mine !== generation) {
            return;
          }
        }
        decoder.decode(new EncodedVideoChunk({ type: record.keyframe ? "key" : "delta", timestamp: record.pts, data: record.data }));
      }
      number++;
    }
    if (mine === generation) {
      await decoder.flush();
    }
    // The screen sent no frame after its last change, so the clock runs on to the
    // recording's end with the last frame shown.
    const endPts = index.first_pts_us + index.duration_us;
    while (mine === generation) {
      const mediaNow = mediaStart + (performance.now() - wallStart) * 1000 * speed;
      if (mediaNow >= endPts) {
        break;
      }
      timeLabel.textContent = clock(Math.max(positionUs, mediaNow - index.first_pts_us));
      await new Promise((resolve) => setTimeout(resolve, Math.min(250, (endPts - mediaNow) / 1000 / speed)));
    }
    if (mine === generation) {
      timeLabel.textContent = clock(index.duration_us);
      seekBar.value = String(index.duration_us / 1e6);
      stop();
      status.textContent = "End of the recording";
      status.hidden = false;
    }
  }

  async function start() {
    if (typeof VideoDecoder === "undefined") {
      showError("This browser cannot play recordings (no WebCodecs). Use a current Chrome, Edge, Firefox or Safari.");
      return;
    }
    index = await (await fetchJson("/recordings/" + id + "/index")).json();
    decoderConfig = { codec: index.codec, codedWidth: index.width, codedHeight: index.height };
    const support = await VideoDecoder.isConfigSupported(decoderConfig);
    if (!support.supported) {
      showError("This browser cannot decode the " + index.codec + " recording.");
      return;
    }
    canvas.width = index.width;
    canvas.height = index.height;
    canvas.dataset.streamSize = index.width + "x" + index.height;
    seekBar.max = String(index.duration_us / 1e6);
    seekBar.dataset.framesUs = String(index.frames_duration_us);
    seekBar.disabled = false;
    playButton.disabled = false;
    durationLabel.textContent = clock(index.duration_us);
    showMarkers();
    await seek(0);
    status.textContent = "Ready";
    status.hidden = false;
    player.dataset.ready = "true";

    seekBar.addEventListener("change", () => {
      seek(Number(seekBar.value) * 1e6).catch((e) => showError(e.message));
    });
    playButton.addEventListener("click", () => {
      if (playing) {
        stop();
      } else {
        status.hidden = true;
        play().catch((e) => showError(e.message));
      }
    });
  }

  // Places a button for each timeline marker above the seek bar; a click seeks to it.
  function showMarkers() {
    const container = document.getElementById("markers");
    for (const marker of index.markers || []) {
      const offsetUs = marker.pts_us - index.first_pts_us;
      const fraction = index.duration_us > 0 ? offsetUs / index.duration_us : 0;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "marker marker-" + marker.kind;
      button.dataset.kind = marker.kind;
      button.dataset.offsetUs = String(offsetUs);
      button.title = marker.label + " at " + clock(offsetUs);
      button.setAttribute("aria-label", button.title);
      button.style.position = "absolute";
      button.style.left = "calc(" + (fraction * 100).toFixed(3) + "% - 3px)";
      button.style.width = "6px";
      button.style.height = "10px";
      button.style.padding = "0";
      button.style.border = "none";
      button.style.background = MARKER_COLOURS[marker.kind] || "#888";
      button.addEventListener("click", () => {
        seekBar.value = String(offsetUs / 1e6);
        seek(offsetUs).catch((e) => showError(e.message));
      });
      container.appendChild(button);
    }
  }

  start().catch((e) => showError(e.message));
})();
