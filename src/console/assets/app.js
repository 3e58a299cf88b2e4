// camnode console: plain JavaScript, no build step, no dependencies.
//
// The hub pushes the fleet as server-sent events (/api/live) at most twice
// a second; each tile on screen fetches its view's latest image when the
// fleet says there is a newer one and the last fetch has finished, so a
// slow browser simply sees fewer frames, and a hidden page or a tile
// scrolled away fetches none. Ages and staleness tick on the hub's clock
// (the offset is measured on each push).
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const EVENTS_SHOWN = 100;

const state = {
  snapshot: null,
  offset: 0,              // hub clock minus this browser's, seconds
  events: new Map(),      // timeline event id -> event, newest kept
  tiles: new Map(),       // "fleet|node|view" or "node|node|view" -> tile
  detail: null,           // the node page's /api/node answer
  detailFor: null,
  detailAsked: 0,
  detailMessages: -1,
  signatures: {},         // list element id -> what it shows now
};

const hubNow = () => Date.now() / 1000 + state.offset;

// --- formatting -----------------------------------------------------------

function ago(seconds) {
  if (seconds < 1.5) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min`;
  return `${Math.round(seconds)} s`;
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function clock(t) {
  const date = new Date(t * 1000), today = new Date();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

const num = (x, digits) => (x === null || x === undefined ? "–" : x.toFixed(digits));
const nodeLink = (name) => `#/node/${enc(name)}`;
const storeUrl = (path) => "/store/" + path.split("/").map(enc).join("/");

// --- live connection ------------------------------------------------------

function connect() {
  const source = new EventSource("/api/live");
  source.addEventListener("fleet", (message) => receive(JSON.parse(message.data)));
  source.onopen = () => setLink(true);
  source.onerror = () => {
    setLink(false);
    // EventSource retries by itself unless the hub refused (a token that
    // expired): then the page reloads, and shows the login form if need be.
    if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 5000);
  };
}

function setLink(up) {
  const link = $("link");
  link.classList.toggle("down", !up);
  link.textContent = up ? "live" : "reconnecting";
}

function receive(snapshot) {
  state.offset = snapshot.now - Date.now() / 1000;
  state.snapshot = snapshot;
  for (const event of snapshot.events) state.events.set(event.id, event);
  if (state.events.size > EVENTS_SHOWN * 2) {
    const keep = [...state.events.keys()].sort((a, b) => b - a).slice(0, EVENTS_SHOWN);
    for (const id of [...state.events.keys()]) if (!keep.includes(id)) state.events.delete(id);
  }
  render();
}

// --- tiles ----------------------------------------------------------------

// Which tiles are on screen: the others wait until they are.
const onScreen = new IntersectionObserver((entries) => {
  for (const entry of entries) entry.target.classList.toggle("offscreen", !entry.isIntersecting);
});

function tileFor(key, parent, index) {
  let tile = state.tiles.get(key);
  if (!tile) {
    const element = $("tile").content.firstElementChild.cloneNode(true);
    tile = { element, img: element.querySelector("img"), shown: 0, loading: false, url: null };
    state.tiles.set(key, tile);
    onScreen.observe(element);
  }
  if (parent.children[index] !== tile.element) parent.insertBefore(tile.element, parent.children[index] || null);
  return tile;
}

function fillTile(tile, node, view, now) {
  const e = tile.element;
  const age = now - node.last_seen;
  const stale = age > node.stale_after;
  e.classList.toggle("stale", stale);
  e.classList.toggle("moving", !stale && !!view && view.moving);
  e.dataset.node = node.name;
  e.dataset.view = view ? view.view : "";
  e.querySelector(".shot").href = nodeLink(node.name);
  e.querySelector(".node").textContent = node.name;
  e.querySelector(".view").textContent = view ? view.view : "";
  e.querySelector(".badge").textContent = stale ? `stale · ${ago(age).replace(" ago", "")}` : view && view.moving ? "motion" : "still";
  e.querySelector(".seen").textContent = `seen ${ago(age)}`;
  e.querySelector(".rate").textContent = view ? `${num(view.rate, 1)} img/s` : "";
  e.querySelector(".score").textContent = view && view.score !== null ? `score ${num(view.score, 1)}` : "";
  if (view) loadImage(tile, node.name, view);
}

// One fetch at a time per tile, only for an image newer than the one shown,
// and only for a tile that can be seen (its first image comes anyway).
function loadImage(tile, node, view) {
  if (tile.loading || view.images <= tile.shown) return;
  if (tile.shown && (document.hidden || tile.element.classList.contains("offscreen"))) return;
  tile.loading = true;
  const wanted = view.images;
  fetch(`/api/frame/${enc(node)}/${enc(view.view)}?n=${wanted}`, { cache: "no-store" })
    .then((response) => (response.ok ? response.blob() : Promise.reject(response.status)))
    .then(async (blob) => {
      const url = URL.createObjectURL(blob);
      const next = new Image();
      next.src = url;
      try { await next.decode(); } catch (_) { /* shown as it is */ }
      tile.img.src = url;
      if (tile.url) URL.revokeObjectURL(tile.url);
      tile.url = url;
      tile.element.dataset.shown = wanted;
      tile.element.dataset.loads = Number(tile.element.dataset.loads || 0) + 1;
    })
    .catch(() => {})
    .finally(() => {
      tile.shown = wanted;
      tile.loading = false;
    });
}

function renderGrid(snapshot, now) {
  const grid = $("grid");
  const keys = new Set();
  let index = 0;
  for (const node of snapshot.nodes) {
    // A node that sent only heartbeats so far still gets its tile.
    for (const view of node.views.length ? node.views : [null]) {
      const key = `fleet|${node.name}|${view ? view.view : ""}`;
      keys.add(key);
      fillTile(tileFor(key, grid, index++), node, view, now);
    }
  }
  dropTiles("fleet|", keys);
  $("empty").hidden = snapshot.nodes.length > 0;
}

function dropTiles(prefix, keep) {
  for (const [key, tile] of state.tiles) {
    if (key.startsWith(prefix) && !keep.has(key)) {
      onScreen.unobserve(tile.element);
      tile.element.remove();
      if (tile.url) URL.revokeObjectURL(tile.url);
      state.tiles.delete(key);
    }
  }
}

function renderSummary(snapshot, now) {
  const nodes = snapshot.nodes;
  const stale = nodes.filter((n) => now - n.last_seen > n.stale_after).length;
  const rate = nodes.reduce((sum, n) => sum + n.views.reduce((s, v) => s + v.rate, 0), 0);
  const moving = nodes.reduce((sum, n) => sum + n.views.filter((v) => v.moving).length, 0);
  const summary = $("summary");
  summary.replaceChildren();
  const part = (text, cls) => {
    const span = document.createElement("span");
    span.textContent = text;
    if (cls) span.className = cls;
    if (summary.children.length) summary.append(" · ");
    summary.append(span);
  };
  part(`${nodes.length} node${nodes.length === 1 ? "" : "s"}`);
  if (stale) part(`${stale} stale`, "warn");
  if (moving) part(`${moving} in motion`);
  part(`${rate.toFixed(1)} img/s`);
}

// --- events ---------------------------------------------------------------

function renderEvents(listId, emptyId, events, withNode) {
  const list = $(listId);
  const signature = events.map((e) => `${e.id}:${e.image || ""}`).join(",");
  $(emptyId).hidden = events.length > 0;
  if (state.signatures[listId] === signature) return;
  state.signatures[listId] = signature;
  list.replaceChildren(...events.map((event) => {
    const item = $("event").content.firstElementChild.cloneNode(true);
    const kind = item.querySelector(".kind");
    kind.textContent = event.what;
    kind.classList.add(event.what);
    const who = item.querySelector(".who");
    who.textContent = (withNode ? event.node : "") + (event.view ? `${withNode ? " · " : ""}${event.view}` : "");
    who.href = nodeLink(event.node);
    if (event.score !== null) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `score ${event.score.toFixed(1)}`;
      item.querySelector(".what").append(score);
    }
    if (event.image) {
      const thumb = item.querySelector(".thumb");
      thumb.href = storeUrl(event.image);
      thumb.target = "_blank";
      thumb.querySelector("img").src = storeUrl(event.image);
    }
    const time = item.querySelector("time");
    time.textContent = clock(event.time);
    time.dateTime = new Date(event.time * 1000).toISOString();
    return item;
  }));
}

// --- the node page --------------------------------------------------------

function renderNode(name, snapshot, now) {
  const node = snapshot.nodes.find((n) => n.name === name);
  $("node-name").textContent = name;
  if (!node) {
    $("node-where").textContent = "The hub has not heard from this node.";
    return;
  }
  askDetail(name, node);
  const age = now - node.last_seen;
  const stale = age > node.stale_after;
  const pill = $("node-state");
  pill.textContent = stale ? `stale · silent ${duration(age)}` : "online";
  pill.classList.toggle("stale", stale);
  const h = node.health || {};
  const where = [
    `last seen ${ago(age)}`,
    h.address && `address ${h.address}`,
    node.host && `host ${node.host}`,
    h.version && `camnode ${h.version}`,
    `${node.restarts} restart${node.restarts === 1 ? "" : "s"}`,
  ];
  $("node-where").textContent = where.filter(Boolean).join(" · ");
  const cards = [
    ["Uptime", h.uptime_s != null && duration(h.uptime_s + (now - node.health_at))],
    ["Capture", h.fps != null && `${num(h.fps, 1)} fps`],
    ["Frames", h.frames != null && h.frames.toLocaleString()],
    ["Dropped", h.dropped != null && h.dropped.toLocaleString()],
    ["Spool", h.spool_depth != null && `${h.spool_depth} · ${bytes(h.spool_bytes || 0)}`],
    ["CPU", h.cpu_percent != null && `${num(h.cpu_percent, 0)} %`],
    ["SoC temperature", h.temp_c != null && `${num(h.temp_c, 1)} °C`, h.temp_c >= 75],
    ["Free disk", h.disk_free_bytes != null && bytes(h.disk_free_bytes)],
    ["Heartbeat", h.heartbeat_s != null && `every ${h.heartbeat_s} s`],
  ];
  const health = $("health");
  health.replaceChildren(...cards.map(([label, value, hot]) => {
    const box = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value || "–";
    if (hot) dd.className = "hot";
    box.append(dt, dd);
    return box;
  }));
  const views = $("node-views");
  const keys = new Set();
  node.views.forEach((view, index) => {
    const key = `node|${node.name}|${view.view}`;
    keys.add(key);
    let holder = views.children[index];
    if (!holder || holder.dataset.key !== key) {
      holder = document.createElement("div");
      holder.className = "view-row";
      holder.dataset.key = key;
      holder.append(document.createElement("div"), chartBox());
      views.insertBefore(holder, views.children[index] || null);
    }
    fillTile(tileFor(key, holder.firstElementChild, 0), node, view, now);
    drawChart(holder.lastElementChild, state.detail && state.detailFor === name ? state.detail.scores[view.view] || [] : [], now);
  });
  while (views.children.length > node.views.length) views.lastElementChild.remove();
  dropTiles("node|", keys);
  const events = state.detail && state.detailFor === name ? state.detail.events : [];
  renderEvents("node-events", "node-no-events", events, false);
}

// The node's detail: when the page opens, and then at most every 2 s while it sends.
function askDetail(name, node) {
  const now = Date.now();
  const fresh = state.detailFor === name && state.detailMessages === node.messages;
  if (fresh || now - state.detailAsked < 2000) return;
  state.detailAsked = now;
  const messages = node.messages;
  fetch(`/api/node/${enc(name)}`, { cache: "no-store" })
    .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
    .then((detail) => {
      state.detail = detail;
      state.detailFor = name;
      state.detailMessages = messages;
      render();
    })
    .catch(() => {});
}

function chartBox() {
  const box = document.createElement("div");
  box.className = "chart";
  const title = document.createElement("h3");
  title.textContent = "Motion score, last 10 minutes";
  box.append(title, document.createElementNS("http://www.w3.org/2000/svg", "svg"));
  return box;
}

function drawChart(box, points, now) {
  const svg = box.querySelector("svg");
  const W = 600, H = 100, span = 600, t0 = now - span;
  const shown = points.filter(([t]) => t >= t0);
  const top = Math.max(1, ...shown.map(([, s]) => s)) * 1.15;
  let path = "", previous = null;
  for (const [t, s] of shown) {
    const x = ((t - t0) / span * W).toFixed(1), y = (H - s / top * H).toFixed(1);
    // A gap of more than 5 s (no images: a still scene) breaks the line.
    path += previous === null || t - previous > 5 ? `M${x} ${y}L${x} ${y}` : `L${x} ${y}`;
    previous = t;
  }
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 14}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.innerHTML = "";
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "path");
  line.setAttribute("class", "line");
  line.setAttribute("d", path || "M0 0");
  line.setAttribute("stroke-linecap", "round");
  const label = (x, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("class", "axis");
    t.setAttribute("x", x);
    t.setAttribute("y", H + 12);
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    return t;
  };
  svg.append(line, label(0, "10 min ago", "start"), label(W, `now · peak ${top > 1.15 ? (top / 1.15).toFixed(1) : "–"}`, "end"));
}

// --- pages ----------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/node\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function render() {
  const snapshot = state.snapshot;
  if (!snapshot) return;
  const now = hubNow();
  const name = route();
  $("fleet-page").hidden = name !== null;
  $("node-page").hidden = name === null;
  renderSummary(snapshot, now);
  const events = [...state.events.values()].sort((a, b) => b.id - a.id).slice(0, EVENTS_SHOWN);
  if (name === null) {
    renderGrid(snapshot, now);
    renderEvents("timeline", "no-events", events, true);
  } else {
    renderNode(name, snapshot, now);
  }
}

window.addEventListener("hashchange", () => {
  state.detailMessages = -1;
  state.detailAsked = 0;
  window.scrollTo(0, 0);
  render();
});
setInterval(render, 1000);
connect();
