// The dalle page: no dependencies, nothing fetched from anywhere but this server.
"use strict";
const $ = (id) => document.getElementById(id);
let info = { image_grid: 4, limits: {} };
let tab = "generate";
let busy = false;

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text, done, total) {
  $("status").hidden = !text;
  $("status-text").textContent = text || "";
  const bar = $("progress");
  if (total > 0) { bar.max = total; bar.value = done; } else { bar.removeAttribute("value"); }
}

function switchTab(name) {
  tab = name;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  $("tab-generate").hidden = name !== "generate";
  $("tab-edit").hidden = name !== "edit";
  $("submit").textContent = name === "generate" ? "Generate" : "Edit";
  $("results-generate").hidden = name !== "generate";
  $("results-edit").hidden = name !== "edit";
  $("warnings").hidden = true;
  if (!busy) setStatus("");
  showError("");
}

// The codes an edit keeps, in raster order, as the server counts them (dalle.pipeline.keep_count).
function keptCodes(grid, mode, rows, fraction) {
  if (mode === "rows") return Math.max(0, Math.min(grid - 1, Math.floor(rows))) * grid;
  return Math.round(Math.max(0, Math.min(0.999, fraction)) * grid * grid);
}

// Shade the region that is sampled again: the rest of the partial row, then every row below.
function drawOverlay(overlay, grid, kept) {
  overlay.textContent = "";
  const r = Math.floor(kept / grid), c = kept % grid, cell = 100 / grid;
  const add = (top, left, width, height) => {
    const d = document.createElement("div");
    Object.assign(d.style, { top: top + "%", left: left + "%", width: width + "%", height: height + "%" });
    overlay.appendChild(d);
  };
  if (c > 0) add(r * cell, c * cell, 100 - c * cell, cell);
  const below = c > 0 ? r + 1 : r;
  if (below < grid) add(below * cell, 0, 100, 100 - below * cell);
}

function keepSettings() {
  const mode = document.querySelector("input[name=keep_mode]:checked").value;
  return { mode, rows: parseFloat($("keep-rows").value), fraction: parseFloat($("keep-fraction").value) };
}

function updatePreview() {
  const k = keepSettings();
  const kept = keptCodes(info.image_grid, k.mode, k.rows || 0, k.fraction || 0);
  drawOverlay(document.querySelector("#edit-preview-box .overlay"), info.image_grid, kept);
  const total = info.image_grid * info.image_grid;
  $("keep-help").textContent = `Keeps ${kept} of ${total} codes (${info.image_grid}×${info.image_grid} grid); ` +
    "the shaded part is sampled again.";
}

function onFile() {
  const file = $("edit-file").files[0];
  const box = $("edit-preview-box");
  $("edit-preview-note").textContent = "";
  if (!file) { box.hidden = true; return; }
  const img = $("edit-preview");
  img.onload = () => { box.hidden = false; updatePreview(); };
  img.onerror = () => { box.hidden = true; $("edit-preview-note").textContent = "This browser cannot show the file; the server will check it."; };
  img.src = URL.createObjectURL(file);
}

function sampling() {
  const out = {};
  for (const id of ["n", "seed", "temperature", "top_k", "top_p", "guidance", "candidates"]) out[id] = $(id).value;
  return out;
}

async function submitJob(event) {
  event.preventDefault();
  if (busy) return;
  showError("");
  $("warnings").hidden = true;
  let response;
  try {
    if (tab === "generate") {
      response = await fetch("/api/generate", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompts: $("prompts").value, ...sampling() }),
      });
    } else {
      const form = new FormData();
      const file = $("edit-file").files[0];
      if (file) form.append("image", file, file.name);
      form.append("prompt", $("edit-prompt").value);
      const k = keepSettings();
      form.append("keep_mode", k.mode);
      form.append("keep_rows", $("keep-rows").value);
      form.append("keep_fraction", $("keep-fraction").value);
      for (const [key, value] of Object.entries(sampling())) form.append(key, value);
      response = await fetch("/api/edit", { method: "POST", body: form });
    }
  } catch (e) {
    showError("The server cannot be reached: is `dalle serve` still running?");
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    showError(body.error || `request refused (HTTP ${response.status})`);
    return;
  }
  setBusy(true);
  poll(body.url);
}

function setBusy(on) {
  busy = on;
  $("submit").disabled = on;
}

async function poll(url) {
  let job;
  try {
    const r = await fetch(url);
    job = await r.json();
    if (!r.ok) throw new Error(job.error || `HTTP ${r.status}`);
  } catch (e) {
    setBusy(false); setStatus("");
    showError(`Lost the request: ${e.message}`);
    return;
  }
  if (job.state === "queued") {
    setStatus(`waiting: ${job.ahead} request(s) ahead`, 0, 0);
  } else if (job.state === "running") {
    const pct = job.total ? Math.round(100 * job.done / job.total) : 0;
    setStatus(`sampling: ${job.done} / ${job.total} codes (${pct}%)`, job.done, job.total);
  }
  if (job.state === "queued" || job.state === "running") { setTimeout(() => poll(url), 150); return; }
  setBusy(false);
  if (job.state === "error") { setStatus(""); showError(job.error); return; }
  setStatus(`done: ${job.images.length} image(s) in ${job.seconds.toFixed(1)} s`, 1, 1);
  if (job.warnings && job.warnings.length) {
    const ul = $("warnings");
    ul.textContent = "";
    for (const w of job.warnings) { const li = document.createElement("li"); li.textContent = w; ul.appendChild(li); }
    ul.hidden = false;
  }
  render(job);
}

function card(item) {
  const div = document.createElement("div");
  div.className = "card result";
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.src = item.url;
  img.alt = item.prompt;
  img.title = `${item.prompt} (seed ${item.seed})`;
  img.addEventListener("click", () => enlarge(item.url, `${item.prompt} · seed ${item.seed} · score ${item.score.toFixed(3)}`));
  thumb.appendChild(img);
  div.appendChild(thumb);
  const meta = document.createElement("div");
  meta.className = "meta";
  const seed = document.createElement("span");
  seed.className = "seed-label";
  seed.textContent = `seed ${item.seed}`;
  seed.title = `image seed ${item.seed} (candidate ${item.index})`;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${item.score.toFixed(2)}`;
  const dl = document.createElement("a");
  dl.className = "download";
  dl.href = item.url;
  dl.download = item.name;
  dl.textContent = "PNG";
  dl.title = "download this image (prompt, seed and settings in its metadata)";
  meta.append(seed, score, dl);
  div.appendChild(meta);
  return div;
}

function inputCard(job) {
  const div = document.createElement("div");
  div.className = "card input";
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.src = job.input_url;
  img.alt = "input";
  img.addEventListener("click", () => enlarge(job.input_url, "input as the model sees it"));
  const overlay = document.createElement("div");
  overlay.className = "overlay";
  const mode = job.keep_rows !== null ? "rows" : "fraction";
  drawOverlay(overlay, info.image_grid, keptCodes(info.image_grid, mode, job.keep_rows || 0, job.keep_fraction || 0));
  thumb.append(img, overlay);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = mode === "rows" ? `input · keep ${job.keep_rows} row(s)` : `input · keep ${job.keep_fraction}`;
  div.append(thumb, meta);
  return div;
}

function render(job) {
  const results = $(job.kind === "edit" ? "results-edit" : "results-generate");
  results.textContent = "";
  const byPrompt = new Map();
  for (const item of job.images) {
    if (!byPrompt.has(item.prompt)) byPrompt.set(item.prompt, []);
    byPrompt.get(item.prompt).push(item);
  }
  for (const [prompt, items] of byPrompt) {
    const row = document.createElement("div");
    row.className = "row";
    const h = document.createElement("h3");
    h.textContent = prompt;
    const cards = document.createElement("div");
    cards.className = "cards";
    if (job.kind === "edit") {
      cards.appendChild(inputCard(job));
      const arrow = document.createElement("span");
      arrow.className = "arrow";
      arrow.textContent = "→";
      cards.appendChild(arrow);
    }
    for (const item of items) cards.appendChild(card(item));
    row.append(h, cards);
    results.appendChild(row);
  }
  const grid = document.createElement("a");
  grid.className = "grid-link";
  grid.href = job.grid_url;
  grid.download = "grid.png";
  grid.textContent = "Download the grid (PNG)";
  results.appendChild(grid);
}

function enlarge(url, caption) {
  $("lightbox-img").src = url;
  $("lightbox-caption").textContent = caption;
  $("lightbox").hidden = false;
}

async function init() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("controls").addEventListener("submit", submitJob);
  $("random-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2147483647); });
  $("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
  $("edit-file").addEventListener("change", onFile);
  for (const el of [$("keep-rows"), $("keep-fraction"), ...document.querySelectorAll("input[name=keep_mode]")]) {
    el.addEventListener("input", updatePreview);
    el.addEventListener("change", updatePreview);
  }
  try {
    info = await (await fetch("/api/info")).json();
  } catch (e) {
    showError("The server cannot be reached.");
    return;
  }
  $("model-name").textContent = `model ${info.model} · ${info.resolution}px · ${info.image_grid}×${info.image_grid} codes`;
  $("keep-rows").max = info.image_grid - 1;
  $("keep-rows").value = info.defaults.keep_rows;
  for (const id of ["temperature", "top_k", "top_p", "guidance"]) {   // the model's recommended settings
    if (info.defaults[id] != null) $(id).value = info.defaults[id];
  }
  const L = info.limits;
  $("limits").textContent = `Limits: n ≤ ${L.max_n}, candidates ≤ ${L.max_candidates}, ${L.max_prompts} prompts of ` +
    `${L.max_prompt_chars} characters, uploads ≤ ${(L.max_upload_bytes / 1048576).toFixed(0)} MiB.`;
  document.body.dataset.ready = "1";
}

init();
