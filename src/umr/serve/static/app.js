// The umr search page: text and/or image queries against /v1/search, results as a grid.
// No framework, no CDN: it works offline from the files the package ships.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, results: [], open: -1, blobs: [] };

function token() { return sessionStorage.getItem("umr-token") || ""; }
function headers() { return token() ? { Authorization: "Bearer " + token() } : {}; }

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (res.status === 401) {
    $("token-row").hidden = false;
    $("token").focus();
    throw new Error("This server needs a token: enter it above and search again.");
  }
  return res;
}

async function errorOf(res) {
  try { return (await res.json()).error.message; } catch { return res.status + " " + res.statusText; }
}

function setImage(file) {
  if (!file || !isMedia(file)) return;
  state.image = file;
  $("chip-img").src = file.type.startsWith("image/") ? URL.createObjectURL(file) : "";
  $("chip").hidden = false;
  search();
}

function clearImage() {
  state.image = null;
  $("chip").hidden = true;
  $("file").value = "";
  $("q").focus();
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function search(event) {
  if (event) event.preventDefault();
  const text = $("q").value.trim();
  if (!text && !state.image) { status("Type a query or drop an image anywhere on the page."); return; }
  const form = new FormData();
  if (text) form.append("text", text);
  if ($("instruction").value.trim()) form.append("instruction", $("instruction").value.trim());
  if ($("modality").value) form.append("modality", $("modality").value);
  form.append("k", String(Math.max(1, Math.min(200, parseInt($("k").value, 10) || 24))));
  if ($("rerank").checked) form.append("rerank", "true");
  if (state.image) form.append("image", state.image, state.image.name || "query.png");  // an image or a video
  status("Searching…");
  const started = performance.now();
  try {
    const res = await api("/v1/search", { method: "POST", body: form });
    if (!res.ok) { status(await errorOf(res), true); return; }
    const body = await res.json();
    state.results = body.results;
    render();
    const ms = Math.round(performance.now() - started);
    status(body.results.length ? `${body.results.length} results in ${ms} ms` : "No results.");
  } catch (err) {
    status(err.message, true);
  }
}

async function imageInto(img, url) {
  // thumbnails are fetched with the token (an <img src> cannot send it)
  const res = await api(url);
  if (!res.ok) { img.replaceWith(Object.assign(document.createElement("span"), { textContent: "no preview" })); return; }
  const blob = URL.createObjectURL(await res.blob());
  state.blobs.push(blob);
  img.src = blob;
}

function render() {
  state.blobs.forEach(URL.revokeObjectURL);
  state.blobs = [];
  const list = $("results");
  list.replaceChildren();
  state.results.forEach((r, i) => {
    const li = document.createElement("li");
    const card = document.createElement("article");
    card.className = "card";
    card.tabIndex = 0;
    card.setAttribute("role", "button");
    card.setAttribute("aria-label", `Result ${i + 1}: ${r.id}, score ${r.score.toFixed(3)}`);
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    if (r.thumbnail_url || r.poster_url) {
      const img = document.createElement("img");
      img.alt = r.id;
      img.loading = "lazy";
      thumb.append(img);
      imageInto(img, r.thumbnail_url || r.poster_url);
    } else {
      thumb.classList.add("text");
      thumb.append(Object.assign(document.createElement("p"), { textContent: r.text || "" }));
    }
    const info = document.createElement("div");
    info.className = "info";
    const row = document.createElement("div");
    row.className = "row";
    row.append(Object.assign(document.createElement("span"), { className: "id", textContent: r.id, title: r.id }),
               Object.assign(document.createElement("span"), { className: "score", textContent: r.score.toFixed(3) }));
    const row2 = document.createElement("div");
    row2.className = "row";
    row2.append(Object.assign(document.createElement("span"), { className: "tag", textContent: r.modality }));
    if (r.video_url) row2.append(Object.assign(document.createElement("span"), { className: "tag", textContent: span(r) }));
    info.append(row, row2);
    if (r.thumbnail_url && r.text) info.append(Object.assign(document.createElement("p"), { className: "snippet", textContent: r.text }));
    card.append(thumb, info);
    card.addEventListener("click", () => openDetail(i));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(i); } });
    li.append(card);
    list.append(li);
  });
}

function openDetail(i) {
  const r = state.results[i];
  if (!r) return;
  state.open = i;
  $("detail-id").textContent = r.id;
  $("detail-score").textContent = "score " + r.score.toFixed(4);
  $("detail-modality").textContent = r.modality;
  $("detail-via").textContent = r.via ? "embedded via " + r.via : "";
  const media = $("detail-media");
  media.replaceChildren();
  media.classList.toggle("text", !r.original_url && !r.video_url);
  if (r.video_url) {
    media.append(segmentPlayer(r));
    $("detail-text").textContent = r.text || "";
  } else if (r.original_url) {
    const img = document.createElement("img");
    img.alt = r.id;
    media.append(img);
    imageInto(img, r.original_url);
    $("detail-text").textContent = r.text || "";
  } else {
    media.textContent = r.text || "";
    $("detail-text").textContent = "";
  }
  const table = $("detail-meta");
  table.replaceChildren();
  for (const [key, value] of Object.entries(r.metadata || {})) {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: key }),
              Object.assign(document.createElement("td"), { textContent: typeof value === "string" ? value : JSON.stringify(value) }));
    table.append(tr);
  }
  if (!$("detail").open) $("detail").showModal();
}

// -- video segments: a poster in the grid, the segment played from its start in the detail view

function isMedia(file) { return file.type.startsWith("image/") || file.type.startsWith("video/"); }

function clock(seconds) {
  const s = Math.round(seconds * 10) / 10, h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const rest = (s % 60).toFixed(s % 1 ? 1 : 0).padStart(s % 1 ? 4 : 2, "0");
  return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + rest;
}

function span(r) { return clock(r.start) + "-" + clock(r.end); }

function segmentPlayer(r) {
  // seeks to the segment's start, plays it and stops at its end (where the browser refuses to start
  // playing by itself, the poster frame waits for the play button); without a token the file streams
  // with range requests, with one it is fetched (a <video src> cannot send the token)
  const video = Object.assign(document.createElement("video"), { controls: true, preload: "metadata" });
  api(r.poster_url).then(async (res) => {  // fetched with the token, as thumbnails are
    if (!res.ok) return;
    const blob = URL.createObjectURL(await res.blob());
    state.blobs.push(blob);
    video.poster = blob;
  });
  let stopped = false;
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = r.start;
    video.play().catch(() => {});
  }, { once: true });
  video.addEventListener("timeupdate", () => {
    if (!stopped && video.currentTime >= r.end) { stopped = true; video.pause(); }
  });
  if (token()) {
    api(r.video_url).then(async (res) => {
      if (!res.ok) return;
      const blob = URL.createObjectURL(await res.blob());
      state.blobs.push(blob);
      video.src = blob;
    });
  } else {
    video.src = r.video_url;
  }
  return video;
}

function cards() { return [...document.querySelectorAll(".card")]; }

document.addEventListener("keydown", (e) => {
  if ($("detail").open) {
    if (e.key === "ArrowRight") openDetail(Math.min(state.open + 1, state.results.length - 1));
    if (e.key === "ArrowLeft") openDetail(Math.max(state.open - 1, 0));
    return;
  }
  const inField = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (e.key === "/" && !inField) { e.preventDefault(); $("q").focus(); }
  const all = cards();
  const at = all.indexOf(document.activeElement);
  if (at >= 0 && ["ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"].includes(e.key)) {
    e.preventDefault();
    const perRow = Math.max(1, Math.round($("results").clientWidth / all[0].getBoundingClientRect().width));
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[e.key];
    all[Math.max(0, Math.min(all.length - 1, at + step))].focus();
  }
  if (e.key === "ArrowDown" && document.activeElement === $("q") && all.length) { e.preventDefault(); all[0].focus(); }
});
$("detail").addEventListener("close", () => { const c = cards()[state.open]; if (c) c.focus(); });

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { if ([...e.dataTransfer.types].includes("Files")) { dragDepth++; $("drop").hidden = false; } });
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $("drop").hidden = true; });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop").hidden = true;
  const file = [...(e.dataTransfer.files || [])].find(isMedia);
  if (file) setImage(file);
});
window.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) { e.preventDefault(); setImage(file); }
});
$("file").addEventListener("change", (e) => setImage(e.target.files[0]));
$("chip-x").addEventListener("click", clearImage);
$("search").addEventListener("submit", search);
$("token").value = token();
$("token").addEventListener("change", (e) => { sessionStorage.setItem("umr-token", e.target.value.trim()); loadStats(); });
["modality", "k", "rerank"].forEach((id) => $(id).addEventListener("change", () => { if (state.results.length) search(); }));

async function loadStats() {
  try {
    const res = await api("/v1/stats");
    if (!res.ok) return;
    const s = await res.json();
    $("rerank-row").hidden = !s.reranker;
    $("stats").textContent = `${s.model.split("/").filter(Boolean).pop()} · ${s.dim}-d` + (s.items !== undefined ? ` · ${s.items.toLocaleString()} items` : " · no index");
  } catch { /* the token prompt is already shown */ }
}
loadStats();
