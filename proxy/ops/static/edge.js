"use strict";
// The edge's own page: stats from /_edge/metrics, listings, uploads, purges, a player.
// Everything goes to this same origin; writes carry the token field as a bearer token.

const $ = (id) => document.getElementById(id);

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(text) {
  $("error").textContent = text;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

// Sums of a metric's samples, by the value of one label.
function sums(text, name, label) {
  const out = {};
  const pattern = new RegExp("^" + name + "\\{([^}]*)\\} (\\S+)$");
  for (const line of text.split("\n")) {
    const m = pattern.exec(line);
    if (!m) continue;
    const l = new RegExp(label + '="([^"]*)"').exec(m[1]);
    const key = l ? l[1] : "";
    out[key] = (out[key] || 0) + Number(m[2]);
  }
  return out;
}

function single(text, name) {
  const m = new RegExp("^" + name + " (\\S+)$", "m").exec(text);
  return m ? Number(m[1]) : null;
}

// Hit ratios over time: the counters' growth between two refreshes, the last HISTORY points.
const HISTORY = 150;
const history = { last: null, bytes: [], requests: [] };

function ratio(hit, all) {
  return all > 0 ? hit / all : null;
}

function track(totals) {
  const last = history.last;
  history.last = totals;
  if (last === null || totals.looked < last.looked) return;  // first sample, or the edge restarted
  history.bytes.push(ratio(totals.cacheBytes - last.cacheBytes,
    totals.cacheBytes + totals.originBytes - last.cacheBytes - last.originBytes));
  history.requests.push(ratio(totals.hits - last.hits, totals.looked - last.looked));
  for (const series of [history.bytes, history.requests]) {
    if (series.length > HISTORY) series.shift();
  }
  drawSeries("hit-bytes", history.bytes);
  drawSeries("hit-requests", history.requests);
}

// A polyline in the chart's 300 x 100 box; intervals without traffic leave gaps at the bottom.
function drawSeries(id, series) {
  const step = 300 / (HISTORY - 1);
  const offset = HISTORY - series.length;
  const points = series.map((value, i) =>
    ((offset + i) * step).toFixed(1) + "," + (100 - 100 * (value === null ? 0 : value)).toFixed(1));
  $(id).setAttribute("points", points.join(" "));
}

async function refreshStats() {
  const response = await fetch("/_edge/metrics", { cache: "no-store" });
  if (!response.ok) return;
  const text = await response.text();
  const requests = sums(text, "edgecache_requests_total", "cache");
  const hits = (requests.hit || 0) + (requests.stale || 0);
  const looked = hits + (requests.miss || 0);
  $("hit-ratio").textContent = looked ? (100 * hits / looked).toFixed(1) + " %" : "–";
  $("requests").textContent = String(Object.values(requests).reduce((a, b) => a + b, 0));
  const served = sums(text, "edgecache_response_bytes_total", "source");
  $("bytes-cache").textContent = bytes(served.cache || 0);
  $("bytes-origin").textContent = bytes(served.origin || 0);
  track({ hits, looked, cacheBytes: served.cache || 0, originBytes: served.origin || 0 });
  const share = single(text, "edgecache_policy_recency_share");
  $("policy-share").textContent = share === null ? "" : "(recency share " + (100 * share).toFixed(0) + " %)";
  const size = single(text, "edgecache_store_size_bytes");
  const entries = single(text, "edgecache_store_entries");
  $("store-size").textContent = size === null ? "off" : bytes(size) + " / " + entries + " entries";
}

function play(url) {
  const player = $("player");
  player.src = url;
  let shown = url;
  try { shown = decodeURI(url); } catch (e) { /* not UTF-8 (%FF): shown as it is */ }
  $("playing").textContent = shown;
  player.play().catch(() => {});  // autoplay may be refused; the controls remain
}

function button(label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", action);
  return b;
}

function row(cells, actions) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  const td = document.createElement("td");
  actions.forEach((a) => td.appendChild(a));
  tr.appendChild(td);
  return tr;
}

// A paged listing: fills `table`, shows `more` while the server has a next page.
function listing(endpoint, table, more, cells, actions) {
  let cursor = "";
  async function load(reset) {
    if (reset) { cursor = ""; $(table).tBodies[0].replaceChildren(); }
    const query = "?limit=50" + (cursor ? "&after=" + encodeURIComponent(cursor) : "");
    const response = await fetch(endpoint + query, { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) { showError(endpoint + ": " + (await response.text())); return; }
    const data = await response.json();
    for (const item of data.items) $(table).tBodies[0].appendChild(row(cells(item), actions(item)));
    cursor = data.next || "";
    $(more).hidden = !data.next;
  }
  $(more).addEventListener("click", () => load(false));
  return load;
}

const loadCached = listing("/_edge/objects", "cached", "cached-more",
  (o) => [o.key, bytes(o.size), o.blocks_cached + " / " + o.blocks, String(o.hits), o.age + " s"],
  (o) => [button("play", () => play(o.url)), button("purge", () => purge(o.key))]);
const loadFiles = listing("/_edge/files", "files", "files-more",
  (f) => [f.path, bytes(f.size)],
  (f) => [button("play", () => play(f.url))]);

async function purge(path) {
  const response = await fetch("/_edge/purge?path=" + encodeURIComponent(path),
    { method: "POST", headers: authHeaders() });
  const text = await response.text();
  $("purge-status").textContent = response.ok
    ? "purged " + JSON.parse(text).count + " (" + path + ")" : response.status + " " + text;
  await loadCached(true);
}

function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const folder = $("upload-folder").value.replace(/\/*$/, "/");
  const path = folder.split("/").map(encodeURIComponent).join("/") + encodeURIComponent(file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", path);
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  if (file.type) xhr.setRequestHeader("Content-Type", file.type);
  const progress = $("upload-progress");
  progress.value = 0;
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    progress.value = e.loaded / e.total;
    $("upload-status").textContent = bytes(e.loaded) + " of " + bytes(e.total);
  });
  xhr.addEventListener("load", () => {
    if (xhr.status >= 200 && xhr.status < 300) {
      progress.value = 1;
      const answer = JSON.parse(xhr.responseText);
      $("upload-status").textContent = xhr.status + ": " + answer.path + " (" + bytes(answer.size) + ")";
      loadFiles(true);
    } else {
      $("upload-status").textContent = xhr.status + " " + xhr.responseText;
    }
  });
  xhr.addEventListener("error", () => { $("upload-status").textContent = "the upload failed (connection)"; });
  xhr.send(file);
}

document.addEventListener("DOMContentLoaded", () => {
  $("upload-form").addEventListener("submit", upload);
  $("purge-form").addEventListener("submit", (e) => { e.preventDefault(); purge($("purge-path").value.trim()); });
  $("cached-refresh").addEventListener("click", () => loadCached(true));
  $("token").addEventListener("change", () => { loadCached(true); loadFiles(true); });
  loadCached(true);
  loadFiles(true);
  refreshStats();
  setInterval(refreshStats, 2000);
});
