"use strict";
// The studio page: uploads files, starts jobs (preprocess, fit, render, eval) and shows the server's job list and
// the selected job's progress, pictures, curve and video. Everything lives on the server (GET /api/jobs): a reload
// shows the same jobs. State for the browser test: window.studio.

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const studio = window.studio = {jobs: [], info: null, selected: null, errors: [], uploads: 0};
const KIND_TITLE = {preprocess: "Preprocess", fit: "Fit", render: "Render", eval: "Evaluate"};

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "status error" : "status";
  if (isError) studio.errors.push(text);
}

function refusal(j) {  // the server's UserError, as the command line prints it
  return j.hint ? `${j.problem}\n  -> ${j.hint}` : j.problem;
}

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let j = null;
  try { j = await r.json(); } catch (e) { /* not JSON: e.g. a 403 text */ }
  if (!r.ok) throw new Error(j && j.problem ? refusal(j) : `${r.status} ${r.statusText}`);
  return j;
}

function fill(select, items, keep = true) {  // items: [{value, text}]
  const old = select.value;
  select.replaceChildren(...items.map(({value, text}) => {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    return o;
  }));
  if (keep && items.some((i) => i.value === old)) select.value = old;
}

async function loadInfo() {
  const info = studio.info = await api("/api/studio");
  fill($("video-pick"), [{value: "", text: "-"}].concat(info.uploads.filter((u) => u.kind === "video").reverse()
    .map((u) => ({value: u.id, text: `${u.label} (${u.duration} s)`}))));
  const sets = info.datasets.filter((d) => d.done).reverse()
    .map((d) => ({value: d.id, text: `${d.video || d.id} (${d.size} px)`}));
  fill($("fit-dataset"), sets);
  fill($("eval-dataset"), sets);
  const avatars = info.avatars.slice().reverse().map((a) => ({value: a.name, text: a.name}));
  fill($("render-avatar"), avatars);
  fill($("eval-avatar"), avatars);
  if (!$("recipe").options.length) {
    fill($("recipe"), info.recipes.map((r) => ({value: r, text: r === "auto" ? "auto (this machine's default)" : r})));
    fill($("crop"), info.crop_sizes.map((s) => ({value: String(s), text: `${s} px`})));
    $("crop").value = "512";
    fill($("voice"), info.voices.map((v) => ({value: v.id, text: v.name})));
    $("voice").value = "en-us";
  }
  pickEvalDataset();
}

function pickEvalDataset() {  // an avatar is evaluated on the dataset it was fitted from, when the server knows it
  const a = studio.info && studio.info.avatars.find((x) => x.name === $("eval-avatar").value);
  if (a && a.dataset && [...$("eval-dataset").options].some((o) => o.value === a.dataset)) $("eval-dataset").value = a.dataset;
}

async function upload(file, kind) {
  const limit = studio.info.limits.max_upload_bytes;
  if (file.size > limit) {
    throw new Error(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB, over the ${(limit / 2 ** 20).toFixed(0)} MB limit`);
  }
  status(`uploading ${file.name} (${(file.size / 2 ** 20).toFixed(1)} MB)...`);
  const u = await api(`/api/uploads?kind=${kind}&name=${encodeURIComponent(file.name)}`,
                      {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}});
  studio.uploads++;
  return u;
}

async function submit(spec) {
  const job = await api("/api/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(spec)});
  select(job.id);
  status(`${KIND_TITLE[job.kind]} job queued${job.position ? ` (${job.position} before it)` : ""}`);
  await refresh();
  return job;
}

function guarded(fn) {  // a button's action: every refusal is shown, with the server's hint
  return async () => {
    try {
      await fn();
    } catch (e) {
      status(e.message || String(e), true);
    }
  };
}

$("upload-video").addEventListener("click", guarded(async () => {
  const f = $("video-file").files[0];
  if (!f) throw new Error("choose a video file first");
  const u = await upload(f, "video");
  await loadInfo();
  $("video-pick").value = u.id;
  status(`${u.label}: ${u.duration} s, accepted. Press Preprocess.`);
}));

$("preprocess").addEventListener("click", guarded(async () => {
  const video = $("video-pick").value;
  if (!video) throw new Error("upload a video (or pick one on the server) first");
  await submit({kind: "preprocess", video, size: Number($("crop").value)});
}));

$("fit-dataset").addEventListener("change", () => suggestName());
function suggestName() {
  const d = studio.info && studio.info.datasets.find((x) => x.id === $("fit-dataset").value);
  if (!d || $("avatar-name").dataset.touched) return;
  const base = (d.video || "avatar").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]/g, "_").replace(/^[_-]+/, "") || "avatar";
  const taken = new Set(studio.info.avatars.map((a) => a.name));
  let name = base.slice(0, 60), k = 2;
  while (taken.has(name)) name = `${base.slice(0, 56)}_${k++}`;
  $("avatar-name").value = name;
}
$("avatar-name").addEventListener("input", () => { $("avatar-name").dataset.touched = "1"; });

$("fit").addEventListener("click", guarded(async () => {
  const dataset = $("fit-dataset").value;
  if (!dataset) throw new Error("preprocess a video first: a fit starts from a finished dataset");
  await submit({kind: "fit", dataset, recipe: $("recipe").value, name: $("avatar-name").value.trim()});
  delete $("avatar-name").dataset.touched;
}));

$("render").addEventListener("click", guarded(async () => {
  const avatar = $("render-avatar").value;
  if (!avatar) throw new Error("fit an avatar first");
  const spec = {kind: "render", avatar, pose: $("head").value, size: $("size").value ? Number($("size").value) : null};
  if ($("use-file").checked) {
    const f = $("speech-file").files[0];
    if (!f) throw new Error("choose a speech file first");
    spec.speech = (await upload(f, "audio")).id;
  } else {
    spec.text = $("text").value;
    spec.voice = $("voice").value;
  }
  await submit(spec);
}));
$("speech-file").addEventListener("change", () => { $("use-file").checked = true; });
$("text").addEventListener("input", () => { $("use-text").checked = true; });

$("eval-avatar").addEventListener("change", pickEvalDataset);
$("eval").addEventListener("click", guarded(async () => {
  const avatar = $("eval-avatar").value, dataset = $("eval-dataset").value;
  if (!avatar || !dataset) throw new Error("an evaluation needs an avatar and the dataset it was fitted on");
  await submit({kind: "eval", avatar, dataset});
}));

$("detail-cancel").addEventListener("click", guarded(async () => {
  if (!studio.selected) return;
  const j = await api(`/api/jobs/${studio.selected}/cancel`, {method: "POST"});
  status(j.state === "cancelling" ? "stopping the job (it keeps what the command line keeps)..." : "job cancelled");
  await refresh();
}));

function select(id) {
  studio.selected = id;
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
}

function describe(j) {
  const s = j.settings;
  if (j.kind === "preprocess") return `${s.label || s.video} at ${s.size} px`;
  if (j.kind === "fit") return `${s.name} (${s.recipe})`;
  if (j.kind === "render") return `${s.avatar}: ${s.text ? `"${s.text.slice(0, 40)}"` : s.label}`;
  return `${s.avatar}`;
}

function stateText(j) {
  if (j.state === "queued") return j.position ? `queued (${j.position} before it)` : "queued (next)";
  if (j.state === "running" && j.progress && j.progress.fraction != null) return `running ${Math.round(j.progress.fraction * 100)} %`;
  return j.state;
}

function showJobs() {
  const list = $("jobs");
  list.replaceChildren(...studio.jobs.slice().reverse().map((j) => {
    const li = document.createElement("li");
    li.className = `job ${j.state}${j.id === studio.selected ? " selected" : ""}`;
    li.dataset.id = j.id;
    const title = document.createElement("b");
    title.textContent = KIND_TITLE[j.kind];
    const what = document.createElement("span");
    what.textContent = ` ${describe(j)}`;
    const st = document.createElement("div");
    st.className = "state";
    st.textContent = stateText(j);
    li.append(title, what, st);
    li.addEventListener("click", () => { select(j.id); showDetail(); showJobs(); });
    return li;
  }));
}

function image(src, caption, kind) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.className = kind;
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

const REPORT_CAPTIONS = {landmarks: "contact sheet: landmarks and head pose", parsing: "masks (parsing)",
  torso: "torso targets", background: "background plate", curves: "pose, blink and mouth curves",
  preview: "preview at the last checkpoint: rendered | real (a held-out frame)"};

function showDetail() {
  const j = studio.jobs.find((x) => x.id === studio.selected);
  $("detail").hidden = !j;
  if (!j) return;
  $("detail-title").textContent = `${KIND_TITLE[j.kind]}: ${describe(j)} (${j.id})`;
  const p = j.progress;
  const bar = $("detail-bar");
  if (j.state === "done") bar.value = 1;
  else if (p && p.fraction != null) bar.value = p.fraction;
  else bar.removeAttribute("value");
  let msg = stateText(j);
  if (p) {
    msg += p.stage ? ` | ${p.stage}` : "";
    if (p.bar && p.bar.total) msg += `: ${p.bar.n} / ${p.bar.total}`;
    if (p.message) msg += ` | ${p.message}`;
  }
  if (j.note) msg += ` | ${j.note}`;
  $("detail-msg").textContent = msg;
  $("detail-cancel").hidden = !["queued", "running"].includes(j.state);
  $("detail-error").hidden = !j.error;
  $("detail-error").textContent = j.error ? refusal(j.error) : "";
  // Pictures: the preprocessing report as its images appear, the eval's plots.
  const imgs = Object.entries(j.files || {}).filter(([k, u]) => /\.(jpg|png)$/.test(u.split("?")[0]));
  const box = $("detail-images");
  const key = imgs.map(([k, u]) => u).join("|");
  if (box.dataset.key !== key) {
    box.dataset.key = key;
    box.replaceChildren(...imgs.map(([k, u]) => image(u, REPORT_CAPTIONS[k] || k, k)));
  }
  // The fit's curve.
  const curve = j.kind === "fit" && j.curve && j.curve.length > 1;
  $("curve").hidden = !curve;
  if (curve) drawCurve(j.curve);
  // A video: the render, or the eval's side by side.
  const video = j.files && (j.files.video || j.files["side_by_side.mp4"]);
  const v = $("detail-video");
  v.hidden = $("detail-download").hidden = !video;
  if (video && v.dataset.src !== video) {
    v.dataset.src = video;
    v.src = video;
    $("detail-download").href = video;
  }
  const summary = j.outputs && j.outputs.summary;
  $("detail-summary").hidden = !summary;
  $("detail-summary").textContent = summary || "";
}

function drawCurve(points) {  // [step, loss, psnr]: loss on a log scale (blue), PSNR in dB (orange)
  const c = $("curve"), g = c.getContext("2d");
  const W = c.width, H = c.height, L = 50, R = 50, T = 12, B = 24;
  g.clearRect(0, 0, W, H);
  g.font = "11px sans-serif";
  const steps = points.map((p) => p[0]);
  const x = (s) => L + (W - L - R) * (s - steps[0]) / Math.max(1, steps[steps.length - 1] - steps[0]);
  const series = [
    {i: 1, color: "#1f6fb4", f: (v) => Math.log10(Math.max(v, 1e-8)), label: (v) => v.toExponential(1), side: L - 4, align: "right"},
    {i: 2, color: "#d9730d", f: (v) => v, label: (v) => `${v.toFixed(1)} dB`, side: W - R + 4, align: "left"},
  ];
  for (const s of series) {
    const pts = points.filter((p) => typeof p[s.i] === "number" && isFinite(p[s.i]));
    if (pts.length < 2) continue;
    const ys = pts.map((p) => s.f(p[s.i]));
    const lo = Math.min(...ys), hi = Math.max(...ys), span = Math.max(hi - lo, 1e-9);
    const y = (v) => T + (H - T - B) * (1 - (s.f(v) - lo) / span);
    g.strokeStyle = g.fillStyle = s.color;
    g.beginPath();
    pts.forEach((p, k) => (k ? g.lineTo(x(p[0]), y(p[s.i])) : g.moveTo(x(p[0]), y(p[s.i]))));
    g.stroke();
    g.textAlign = s.align;
    const vals = pts.map((p) => p[s.i]);
    const top = vals[ys.indexOf(hi)], bottom = vals[ys.indexOf(lo)];
    g.fillText(s.label(top), s.side, T + 8);
    g.fillText(s.label(bottom), s.side, H - B);
  }
  g.fillStyle = "#444";
  g.textAlign = "center";
  g.fillText(`step ${steps[0]} .. ${steps[steps.length - 1]}   (blue: loss, log scale; orange: training PSNR)`, W / 2, H - 6);
}

let lastKinds = "";
async function refresh() {
  try {
    studio.jobs = (await api("/api/jobs")).jobs;
  } catch (e) {
    status(`cannot reach the server: ${e.message || e}`, true);
    return;
  }
  if (!studio.selected && studio.jobs.length) select(studio.jobs[studio.jobs.length - 1].id);
  // New datasets and avatars appear in the pickers when the jobs that make them end.
  const ends = studio.jobs.filter((j) => j.state === "done").map((j) => j.id).join(",");
  if (ends !== lastKinds) {
    lastKinds = ends;
    await loadInfo();
    suggestName();
  }
  showJobs();
  showDetail();
}

async function start() {
  try {
    await loadInfo();
  } catch (e) {
    status(`cannot reach the server: ${e.message || e}`, true);
    return;
  }
  if (location.hash.length > 1) studio.selected = location.hash.slice(1);
  status("ready: upload a video, or pick one already on the server.");
  await refresh();
  suggestName();
  setInterval(refresh, POLL_MS);
}
start();
