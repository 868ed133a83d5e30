// The prom3e page: plain JS over the JSON API (no build step, nothing fetched from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { schema: null, mods: {}, key: sessionStorage.getItem("prom3e-key") || "", exampleMeta: null };
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  const res = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (e) { data = { detail: `${res.status} ${res.statusText}` }; }
  if (!res.ok) {
    const err = new Error(data && data.detail ? data.detail : `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

// --- the map ----------------------------------------------------------------------------
function drawGrid() {
  const g = $("grid");
  for (let lon = -150; lon <= 150; lon += 30) {
    const l = document.createElementNS(SVGNS, "line");
    l.setAttribute("x1", lon + 180); l.setAttribute("x2", lon + 180); l.setAttribute("y1", 0); l.setAttribute("y2", 180);
    l.setAttribute("class", lon === 0 ? "grid eq" : "grid");
    g.append(l);
  }
  for (let lat = -60; lat <= 60; lat += 30) {
    const l = document.createElementNS(SVGNS, "line");
    l.setAttribute("y1", 90 - lat); l.setAttribute("y2", 90 - lat); l.setAttribute("x1", 0); l.setAttribute("x2", 360);
    l.setAttribute("class", lat === 0 ? "grid eq" : "grid");
    g.append(l);
  }
}

function setMarker(lat, lon) {
  const m = $("marker");
  if (lat === null || lon === null || !isFinite(lat) || !isFinite(lon)) { m.setAttribute("hidden", ""); return; }
  m.removeAttribute("hidden");
  m.setAttribute("transform", `translate(${(+lon + 180).toFixed(2)},${(90 - lat).toFixed(2)})`);
}

function latlonModality() {
  return state.schema.modalities.find((m) => m.raw && m.raw.kind === "latlon") || null;
}

function onMapClick(ev) {
  const mod = latlonModality();
  if (!mod) return;
  const svg = $("map");
  const pt = svg.createSVGPoint();
  pt.x = ev.clientX; pt.y = ev.clientY;
  const p = pt.matrixTransform(svg.getScreenCTM().inverse());
  const lat = Math.max(-90, Math.min(90, 90 - p.y)), lon = Math.max(-180, Math.min(180, p.x - 180));
  const s = state.mods[mod.name];
  s.lat.value = lat.toFixed(2); s.lon.value = lon.toFixed(2);
  setMode(mod.name, "raw");
  setVisible(mod.name, true);
  setMarker(lat, lon);
}

// --- the modality cards -----------------------------------------------------------------
const RAW_LABEL = { latlon: "coordinates", text: "text", date: "date" };

function setVisible(name, on) {
  const s = state.mods[name];
  s.check.checked = on;
  s.card.classList.toggle("off", !on);
}

function setMode(name, mode) {
  const s = state.mods[name];
  if (!s.modeSel) return;
  s.modeSel.value = mode;
  s.rawBox.hidden = mode !== "raw";
  s.vecBox.hidden = mode !== "vector";
}

function buildCard(mod) {
  const id = `vis-${mod.name}`;
  const check = el("input", { type: "checkbox", id });
  const head = el("div", { class: "mod-head" }, check, el("label", { for: id, text: mod.name }),
    el("span", { class: "muted small kind", text: `${mod.dim}-d` }));
  const s = { check, vector: null };
  const body = el("div", { class: "mod-body" });
  s.vecArea = el("textarea", { placeholder: `a JSON list of ${mod.dim} numbers`, "aria-label": `${mod.name} vector` });
  s.vecNote = el("span", { class: "muted small" });
  s.vecEdit = el("details", {}, el("summary", { class: "small", text: "paste a vector" }), s.vecArea);
  s.vecBox = el("div", { class: "mod-body vec" }, s.vecNote, s.vecEdit);
  if (mod.raw) {
    s.modeSel = el("select", { "aria-label": `${mod.name} input` },
      el("option", { value: "raw", text: RAW_LABEL[mod.raw.kind] }), el("option", { value: "vector", text: "vector" }));
    s.modeSel.addEventListener("change", () => setMode(mod.name, s.modeSel.value));
    head.insertBefore(s.modeSel, head.lastChild);
    s.rawBox = el("div", { class: "mod-body" });
    if (mod.raw.kind === "latlon") {
      s.lat = el("input", { type: "number", step: "0.01", min: "-90", max: "90", placeholder: "latitude", "aria-label": "latitude" });
      s.lon = el("input", { type: "number", step: "0.01", min: "-180", max: "180", placeholder: "longitude", "aria-label": "longitude" });
      const sync = () => { setVisible(mod.name, s.lat.value !== "" && s.lon.value !== ""); setMarker(parseFloat(s.lat.value), parseFloat(s.lon.value)); };
      s.lat.addEventListener("input", sync); s.lon.addEventListener("input", sync);
      s.rawBox.append(s.lat, s.lon, el("span", { class: "muted small", text: "or click the map" }));
    } else {
      s.text = el("input", { type: mod.raw.kind === "date" ? "date" : "text", "aria-label": `${mod.name} ${mod.raw.kind}`,
        placeholder: mod.raw.kind === "text" ? "e.g. a taxonomic name or a call type" : "" });
      s.text.addEventListener("input", () => setVisible(mod.name, s.text.value.trim() !== ""));
      s.rawBox.append(s.text);
    }
    body.append(s.rawBox, s.vecBox);
  } else {
    body.append(s.vecBox);
    s.vecNote.textContent = "vectors only";
    s.vecNote.title = mod.raw_unavailable || "";
  }
  s.vecArea.addEventListener("input", () => { s.vector = null; setVisible(s.name, s.vecArea.value.trim() !== ""); });
  s.name = mod.name;
  s.card = el("div", { class: "mod off" }, head, body);
  check.addEventListener("change", () => s.card.classList.toggle("off", !check.checked));
  state.mods[mod.name] = s;
  if (mod.raw) setMode(mod.name, "raw");
  return s.card;
}

function rowValue(mod) {
  const s = state.mods[mod.name];
  if (!s.check.checked) return undefined;
  if (s.modeSel && s.modeSel.value === "raw") {
    if (mod.raw.kind === "latlon") {
      if (s.lat.value === "" || s.lon.value === "") throw new Error(`${mod.name}: enter latitude and longitude`);
      return [parseFloat(s.lat.value), parseFloat(s.lon.value)];
    }
    if (!s.text.value.trim()) throw new Error(`${mod.name}: enter a ${mod.raw.kind}`);
    return s.text.value.trim();
  }
  if (s.vector) return s.vector;
  const txt = s.vecArea.value.trim();
  if (!txt) throw new Error(`${mod.name}: no vector (pick an example, or paste ${mod.dim} numbers)`);
  try { return JSON.parse(txt); } catch (e) { throw new Error(`${mod.name}: the vector is not valid JSON`); }
}

// --- examples ---------------------------------------------------------------------------
function metaLatLon(meta) {
  if (!meta) return [null, null];
  const lat = meta.lat ?? meta.latitude, lon = meta.lon ?? meta.lng ?? meta.longitude;
  return typeof lat === "number" && typeof lon === "number" ? [lat, lon] : [null, null];
}

function exampleLabel(r) {
  const m = r.meta || {};
  const name = m.species ?? m.label ?? m.name ?? m.id ?? "";
  return `#${r.row} ${name} (${r.modalities.join(", ")})`;
}

async function pickExample(row) {
  if (row === "") { $("example-note").textContent = ""; return; }
  const ex = await api(`/examples/${encodeURIComponent(row)}`);
  state.exampleMeta = ex.meta;
  for (const mod of state.schema.modalities) {
    const s = state.mods[mod.name];
    const v = ex.values[mod.name];
    s.vector = v || null;
    s.vecArea.value = "";
    if (v) {
      s.vecNote.textContent = `${v.length} numbers from example #${ex.row}`;
      setMode(mod.name, "vector");
    } else {
      s.vecNote.textContent = mod.raw ? "" : "vectors only";
    }
    setVisible(mod.name, Boolean(v));
  }
  const [lat, lon] = metaLatLon(ex.meta);
  const ll = latlonModality();
  if (ll && lat !== null) { state.mods[ll.name].lat.value = lat.toFixed(2); state.mods[ll.name].lon.value = lon.toFixed(2); }
  setMarker(lat, lon);
  const sp = ex.meta && (ex.meta.species ?? ex.meta.label);
  $("example-note").textContent = sp ? `true label: ${sp}` : "";
}

// --- answers ----------------------------------------------------------------------------
function bars(container, items, opts = {}) {
  container.replaceChildren();
  const max = Math.max(...items.map((i) => i.value), 1e-12);  // bars for positive values only
  items.forEach((it, k) => {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${Math.max(0, (opts.scale ? opts.scale(it.value) : it.value / max)) * 100}%`;
    const row = el("div", { class: "bar" + (k === (opts.best ?? -1) ? " best" : "") + (it.value < 0 ? " neg" : "") },
      el("span", { class: "name", text: it.name, title: it.name }), el("div", { class: "track" }, fill),
      el("span", { class: "val", text: opts.format ? opts.format(it.value) : it.value.toFixed(3) }));
    container.append(row);
  });
}

function note(container, cls, text) { container.replaceChildren(el("p", { class: cls, text })); }

async function showSpecies(row) {
  const box = $("species");
  if (!state.schema.prototypes) {
    note(box, "missing", "Needs class prototypes: start the server with --prototypes TABLE (a labelled table with the class modality).");
    return;
  }
  const res = (await api("/classify", { rows: [row], k: 5 })).results[0];
  bars(box, res.labels.map((l) => ({ name: l.label, value: l.probability })),
    { best: 0, scale: (v) => v, format: (v) => `${(100 * v).toFixed(1)}%` });
}

async function showSigma(row) {
  const res = (await api("/encode", { rows: [row], subsets: true })).results[0];
  const all = res.subsets.slice().sort((a, b) => a.sigma_l1 - b.sigma_l1);
  // at most 12 bars: the most certain subsets, the single modalities and the full visible set
  const full = res.visible.join(" + ");
  const keep = all.filter((s, k) => k < 8 || s.visible.length === 1 || s.visible.join(" + ") === full).slice(0, 12);
  const subs = keep.length < all.length ? keep : all;
  $("sigma-note").textContent = subs.length < all.length ? `${subs.length} of ${all.length} subsets shown: the most certain, each single modality and all visible together` : "";
  const hi = Math.max(...subs.map((s) => s.sigma_l1)), lo = Math.min(...subs.map((s) => s.sigma_l1));
  bars($("sigma"), subs.map((s) => ({ name: s.visible.join(" + "), value: s.sigma_l1 })),
    { best: 0, scale: (v) => (hi === lo ? 1 : 0.15 + 0.85 * (v - lo) / (hi - lo)), format: (v) => v.toFixed(2) });
}

async function showNext(row) {
  const box = $("next");
  const res = (await api("/next-modality", { rows: [row] })).results[0];
  box.replaceChildren();
  if (!res.next) { note(box, "muted", "Every modality is already visible."); return; }
  const gain = res.ranking[0].expected_reduction;
  box.append(el("p", { class: "next-pick" }, "Collect ", el("strong", { text: res.next }),
    el("span", { class: "muted small", text: gain > 0 ? `  (‖σ‖₁ expected to drop by ${gain.toFixed(3)})`
      : "  (no modality is expected to lower ‖σ‖₁)" })));
  const list = el("div", { class: "bars" });
  box.append(list);
  bars(list, res.ranking.map((r) => ({ name: r.modality, value: r.expected_reduction })),
    { best: 0, format: (v) => v.toFixed(3) });
}

async function showItems(row) {
  const box = $("items");
  const target = $("target").value;
  if (!target) {
    note(box, "missing", "Needs a gallery index: start the server with --gallery TABLE or --index NAME=FILE.");
    return;
  }
  const res = (await api("/retrieve", { rows: [row], target, k: 8 })).results[0];
  const metaKeys = [...new Set(res.items.flatMap((i) => Object.keys(i.meta || {})))]
    .filter((k) => ["species", "label", "name", "lat", "lon", "day_of_year"].includes(k)).slice(0, 4);
  const head = el("tr", {}, el("th", { text: "row" }), ...metaKeys.map((k) => el("th", { text: k })), el("th", { text: "score" }));
  const rows = res.items.map((i) => el("tr", {}, el("td", { text: String(i.id) }),
    ...metaKeys.map((k) => { const v = (i.meta || {})[k]; return el("td", { text: typeof v === "number" ? (+v.toFixed(3)).toString() : String(v ?? "") }); }),
    el("td", { class: "num", text: i.score.toFixed(3) })));
  box.replaceChildren(el("table", { class: "items" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function submit() {
  const btn = $("submit");
  const row = {};
  try {
    for (const mod of state.schema.modalities) {
      const v = rowValue(mod);
      if (v !== undefined) row[mod.name] = v;
    }
    if (!Object.keys(row).length) throw new Error("make at least one modality visible");
  } catch (e) { $("status").textContent = e.message; return; }
  btn.disabled = true;
  $("answers").removeAttribute("data-ready");
  $("status").textContent = "asking…";
  const t0 = performance.now();
  const parts = [["species", showSpecies], ["sigma", showSigma], ["next", showNext], ["items", showItems]];
  const out = await Promise.allSettled(parts.map(([, f]) => f(row)));
  let failed = 0;
  out.forEach((r, k) => { if (r.status === "rejected") { failed++; note($(parts[k][0]), "error", r.reason.message); } });
  $("status").textContent = failed ? `${failed} of ${parts.length} answers failed` : `answered in ${Math.round(performance.now() - t0)} ms`;
  btn.disabled = false;
  $("answers").setAttribute("data-ready", failed ? "error" : "ok");
}

// --- start ------------------------------------------------------------------------------
async function start() {
  drawGrid();
  $("map").addEventListener("click", onMapClick);
  $("submit").addEventListener("click", submit);
  $("example").addEventListener("change", (e) => pickExample(e.target.value).catch((err) => { $("status").textContent = err.message; }));
  $("key-save").addEventListener("click", () => { state.key = $("api-key").value; sessionStorage.setItem("prom3e-key", state.key); load(); });
  await load();
}

async function load() {
  try {
    state.schema = await api("/schema");
  } catch (e) {
    if (e.status === 401) { $("key-row").hidden = false; $("model").textContent = "this server needs an API key"; return; }
    $("model").textContent = `cannot read the schema: ${e.message}`;
    return;
  }
  $("key-row").hidden = !state.key;
  const sc = state.schema;
  const cfg = sc.model.config;
  $("model").textContent = `${sc.model.path} · ${sc.modalities.length} modalities · E = ${cfg.embed_dim}`;
  const cards = $("modalities");
  cards.replaceChildren(...sc.modalities.map(buildCard));
  const missing = [];
  if (!sc.prototypes) missing.push("class prototypes (--prototypes)");
  if (!Object.keys(sc.indexes).length) missing.push("a gallery index (--gallery / --index)");
  if (!sc.modalities.some((m) => m.raw)) missing.push("stage-1 encoders for raw coordinates or text (--aligner / --encoders)");
  if (!sc.examples) missing.push("example rows (--examples)");
  const banner = $("banner");
  banner.hidden = !missing.length;
  banner.textContent = missing.length ? `This server was started without ${missing.join(", ")}; those parts of the page say what they need.` : "";
  const ll = latlonModality();
  $("map").classList.toggle("inactive", !ll);
  $("map-note").textContent = ll ? `Click the map to set '${ll.name}' (lat, lon), or type the numbers below.`
    : "No modality of this model takes raw coordinates here" + (sc.examples ? "; the pin shows the picked example's location." : ".");
  const target = $("target");
  target.replaceChildren(...Object.keys(sc.indexes).map((k) => el("option", { value: k, text: `${k} (${sc.indexes[k].size})` })));
  target.hidden = !Object.keys(sc.indexes).length;
  const pick = $("example");
  if (sc.examples) {
    const ex = await api("/examples");
    pick.replaceChildren(el("option", { value: "", text: "— none —" }), ...ex.rows.map((r) => el("option", { value: String(r.row), text: exampleLabel(r) })));
  } else {
    $("example-row").hidden = true;
  }
  $("query").setAttribute("data-ready", "1");
}

start();
