// zimage-serve playground: a plain client of the public API (no framework, no build step).
// Every URL is relative: the app may be served under a route prefix (/main/playground, /main/).
"use strict";

const $ = (id) => document.getElementById(id);

// A new element: its properties (className, textContent, dataset entries...) and its children.
function el(tag, props = {}, ...children) {
  const { dataset = {}, ...rest } = props;
  const node = Object.assign(document.createElement(tag), rest);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

const KEY_STORAGE = "zimage-serve.api-key";
const PARTIAL_IMAGES = 2;
const MASK_COLOR = "rgb(255, 72, 120)"; // painted strokes; any painted pixel is "repaint" in the mask sent
const SIZES = ["64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024", "1280x720", "720x1280",
  "1152x896", "896x1152", "1536x1024", "1024x1536", "2048x2048"];

const state = {
  run: null,            // the AbortController of the request in flight
  image: null,          // the file to edit
  maskPainted: false,
  strengthTouched: false,
  urls: [],             // blob: URLs held by the gallery (revoked when it is cleared)
};

// ---- the API key, kept in this tab's session storage ----------------------------------------------

function apiHeaders(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setupKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("input", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  input.addEventListener("change", loadModels); // a new key may list the models now
}

// ---- errors: shown as the API words them --------------------------------------------------------

function showError(message, param) {
  const box = $("error");
  box.replaceChildren(el("span", { className: "message", textContent: message }));
  if (param) box.append(" ", el("code", { className: "param", textContent: param }));
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// The {message, param} of a refused request (the API's one error shape, or whatever else answered).
async function refusal(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    if (error && error.message) return error;
  } catch (e) { /* not JSON: a proxy's page, say */ }
  return { message: `HTTP ${response.status} ${response.statusText}: ${text.slice(0, 200)}`.trim() };
}

// ---- what the server serves: models and adapters, sizes ------------------------------------------

async function loadModels() {
  const info = $("model-info");
  const response = await fetch("v1/models", { headers: apiHeaders() }).catch(() => null);
  if (!response || !response.ok) {
    info.textContent = !response ? "The server did not answer."
      : response.status === 401 ? "An API key is needed." : (await refusal(response)).message;
    return;
  }
  const models = (await response.json()).data || [];
  const base = models.find((m) => !m.parent);
  const adapters = models.filter((m) => m.parent);
  info.textContent = base ? base.id : "";
  if (base && base.random_weights) info.textContent += " · random weights (images are noise)";
  const select = $("adapter");
  const chosen = select.value;
  select.replaceChildren(new Option(base ? `none (${base.id})` : "none", ""));
  for (const a of adapters) select.append(new Option(a.id, a.id, false, a.id === chosen));
  $("adapter-field").hidden = adapters.length === 0;
  loadSizes();
}

// The size field suggests the common sizes the server accepts (its size pattern, from /openapi.json).
async function loadSizes() {
  try {
    const response = await fetch("openapi.json", { headers: apiHeaders() });
    if (!response.ok) return;
    const spec = await response.json();
    const body = spec.paths["/v1/images/generations"].post.requestBody.content["application/json"];
    const accepted = new RegExp(body.schema.properties.size.pattern);
    const list = $("sizes");
    list.replaceChildren(new Option("auto"));
    for (const size of SIZES.filter((s) => accepted.test(s))) list.append(new Option(size));
  } catch (e) { /* suggestions only */ }
}

// ---- the request -----------------------------------------------------------------------------------

// The form's values as the API's fields: left empty, a field is left out (the server's default).
function fields() {
  const value = (id) => $(id).value.trim();
  const out = { prompt: $("prompt").value, size: value("size") || "auto", n: value("n") || "1" };
  if (value("negative-prompt")) out.negative_prompt = $("negative-prompt").value;
  if (value("steps")) out.num_inference_steps = value("steps");
  if (value("seed")) out.seed = value("seed");
  if (value("guidance")) out.guidance_scale = value("guidance");
  out.output_format = value("format");
  if (value("adapter")) {
    out.model = value("adapter");
    if (value("lora-scale")) out.lora_scale = value("lora-scale");
  }
  return out;
}

// The JSON body. The form's numbers are written as typed (JSON.stringify of a Number would round a seed past
// 2**53); what is not a number stays text, for the API to refuse in its words.
function generationBody(f) {
  const body = { ...f, stream: true, partial_images: PARTIAL_IMAGES, progress_events: true };
  return JSON.stringify(body).replace(/"(n|num_inference_steps|seed|guidance_scale|lora_scale)":"(-?\d+(?:\.\d+)?)"/g,
    '"$1":$2');
}

async function editBody(f) {
  const form = new FormData();
  if (state.image) form.append("image", state.image, state.image.name || "image.png");
  if (state.maskPainted) form.append("mask", await maskBlob(), "mask.png");
  for (const [k, v] of Object.entries(f)) form.append(k, v);
  form.append("strength", $("strength").value);
  form.append("stream", "true");
  form.append("partial_images", String(PARTIAL_IMAGES));
  form.append("progress_events", "true");
  return form;
}

// ---- the stream: server-sent events read from fetch's body (EventSource can't POST) -------------

async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
    if (done) return;
  }
}

// ---- one run: previews and progress while it streams, then the gallery ----------------------------

async function run(event) {
  event.preventDefault();
  if (state.run) return;
  clearError();
  const edit = $("mode-edit").checked;
  const f = fields();
  const n = Math.max(1, parseInt(f.n, 10) || 1);
  const mode = edit ? (state.maskPainted ? "inpaint" : "image to image") : "generate";
  const job = { f, n, mode, steps: {}, done: 0, group: null, started: performance.now() };
  const controller = new AbortController();
  state.run = controller;
  setRunning(true);
  startPreviews(n);
  setProgress(job);
  try {
    const url = edit ? "v1/images/edits" : "v1/images/generations";
    const init = edit ? { body: await editBody(f), headers: apiHeaders() }
      : { body: generationBody(f), headers: apiHeaders({ "Content-Type": "application/json" }) };
    const response = await fetch(url, { method: "POST", signal: controller.signal, ...init });
    if (!response.ok) {
      const e = await refusal(response);
      showError(e.message, e.param);
      setStatus(`Refused (${response.status}).`);
      return;
    }
    let failed = false;
    for await (const { name, data } of readEvents(response)) {
      if (name === "error" || data.error) {
        showError(data.error.message, data.error.param);
        failed = true;
      } else {
        onEvent(job, data);
      }
    }
    if (!failed && job.done < n) {
      showError(`the stream ended after ${job.done} of ${n} images`);
      failed = true;
    }
    const seconds = ((performance.now() - job.started) / 1000).toFixed(1);
    setStatus(failed ? "Failed." : `Done: ${n} image${n > 1 ? "s" : ""} in ${seconds} s.`);
  } catch (e) {
    if (e.name === "AbortError") setStatus("Stopped.");
    else {
      showError(`The request failed: ${e.message}`);
      setStatus("Failed.");
    }
  } finally {
    state.run = null;
    setRunning(false);
    if (!$("progress").hasAttribute("value")) $("progress").value = 0; // no longer indeterminate
    $("previews").querySelectorAll(".slot:not(:has(img))").forEach((slot) => slot.remove()); // never began
  }
}

function onEvent(job, e) {
  const i = e.image_index || 0;
  if (e.type.endsWith(".completed")) {
    const total = (job.steps[i] || {}).total || 1;
    job.steps[i] = { step: total, total };
    job.done += 1;
    previewSlot(i).classList.add("done");
    addResult(job, e);
  } else if ("step" in e) {
    job.steps[i] = { step: e.step, total: e.total_steps };
    if (e.type.endsWith(".partial_image")) showPreview(i, e);
  }
  setProgress(job);
}

// Progress: steps done over all steps of the n images (an image not yet started counts as many as the others).
function setProgress(job) {
  const bar = $("progress");
  const seen = Object.values(job.steps);
  if (!seen.length) {
    bar.removeAttribute("value"); // indeterminate: queued
    bar.max = 1;
    setStatus(`Waiting for ${job.n > 1 ? `${job.n} images` : "the image"}…`);
    return;
  }
  const each = Math.max(...seen.map((s) => s.total));
  const total = each * job.n;
  const done = seen.reduce((sum, s) => sum + s.step * (each / s.total), 0);
  bar.max = total;
  bar.value = Math.min(done, total);
  bar.setAttribute("aria-valuenow", String(bar.value));
  if (job.done < job.n) setStatus(`Step ${Math.round(done)} of ${total}…`);
}

function setStatus(text) {
  $("status").textContent = text;
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").hidden = !running;
  document.body.classList.toggle("running", running);
}

// ---- previews: the latest preview of each image, kept until the next run ---------------------------

function startPreviews(n) {
  $("previews").replaceChildren();
  for (let i = 0; i < Math.min(n, 16); i++) previewSlot(i); // (n is the API's to bound)
}

// Image i's place in the live area, made when first asked for.
function previewSlot(i) {
  const found = $("previews").querySelector(`.slot[data-index="${i}"]`);
  if (found) return found;
  const slot = el("figure", { className: "slot", dataset: { index: i } }, el("figcaption", { textContent: "waiting" }));
  $("previews").append(slot);
  return slot;
}

function showPreview(i, e) {
  const slot = previewSlot(i);
  let img = slot.querySelector("img.preview");
  if (!img) {
    img = el("img", { className: "preview", alt: `preview of image ${i + 1}` });
    slot.prepend(img);
  }
  img.src = `data:image/${e.output_format || "png"};base64,${e.b64_json}`;
  img.dataset.step = String(e.step);
  img.dataset.partialIndex = String(e.partial_image_index);
  // the step the preview shows; once the image is done (.done) the caption says so after it
  slot.querySelector("figcaption").textContent = `seed ${e.seed} · preview ${e.step}/${e.total_steps}`;
}

// ---- the gallery ----------------------------------------------------------------------------------

function blobOf(b64, type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function addResult(job, e) {
  const format = e.output_format || "png";
  const url = URL.createObjectURL(blobOf(e.b64_json, `image/${format}`));
  state.urls.push(url);
  const f = job.f;
  const steps = f.num_inference_steps || (job.steps[e.image_index || 0] || {}).total;

  const meta = el("div", { className: "meta" },
    el("strong", { textContent: `seed ${e.seed}` }),
    ...[e.size, steps && `${steps} steps`, f.model && `LoRA ${f.model}`].filter(Boolean)
      .map((text) => el("span", { textContent: text })),
    el("span", { className: "tag", textContent: job.mode }));
  const prompt = el("p", { className: "prompt", title: f.prompt,
    textContent: f.prompt.length > 120 ? `${f.prompt.slice(0, 117)}…` : f.prompt });
  const download = el("a", { className: "download", href: url, textContent: "Download",
    download: `zimage-${e.seed}.${format === "jpeg" ? "jpg" : format}` });
  const card = el("figure", { className: "result", dataset: { seed: e.seed, mode: job.mode, index: e.image_index || 0 } },
    el("a", { href: url, target: "_blank", rel: "noopener" }, el("img", { src: url, alt: `seed ${e.seed}: ${f.prompt}` })),
    el("figcaption", {}, meta, prompt, download));

  // newest run first (a group per run, display: contents); a run's images in their order, whichever came first
  $("gallery").querySelector(".empty")?.remove();
  if (!job.group) $("gallery").prepend((job.group = el("div", { className: "run" })));
  const next = [...job.group.children].find((c) => Number(c.dataset.index) > (e.image_index || 0));
  job.group.insertBefore(card, next || null);
}

function clearGallery() {
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  state.urls = [];
  $("gallery").replaceChildren(el("p", { className: "empty", textContent: "Generated images appear here." }));
}

// ---- edit mode: the image, a mask painted over it, the strength -----------------------------------

function setMode() {
  const edit = $("mode-edit").checked;
  $("edit-fields").hidden = !edit;
  $("generate").textContent = edit ? "Edit" : "Generate";
  $("size").title = edit ? "auto: the input image's size" : "auto: the server's default size";
}

async function loadEditImage() {
  const file = $("edit-image").files[0];
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // upright as its EXIF orientation says, as the server reads it
  } catch (e) {
    state.image = file; // not an image the browser reads: the API will say what it is
    $("mask-stage").hidden = true;
    return;
  }
  const { width, height } = bitmap;
  state.image = file;
  for (const canvas of [$("image-canvas"), $("mask-canvas")]) Object.assign(canvas, { width, height });
  $("image-canvas").getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  const stage = $("mask-stage");
  stage.style.setProperty("--aspect", String(width / height)); // (CSSOM, which the page's CSP allows)
  stage.hidden = false;
  clearMask();
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  setMaskPainted(false);
}

// The default strength follows the mask (1.0 to inpaint, 0.6 image to image) until the user sets one.
function setMaskPainted(painted) {
  state.maskPainted = painted;
  if (!state.strengthTouched) $("strength").value = painted ? "1" : "0.6";
  showStrength();
}

function showStrength() {
  $("strength-value").textContent = Number($("strength").value).toFixed(2);
}

function setupMask() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true }); // (the first call sets it)
  let last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
  };
  const paint = (from, to) => {
    ctx.strokeStyle = MASK_COLOR;
    ctx.lineCap = ctx.lineJoin = "round";
    // the brush's width is in screen pixels: scaled to the image's
    ctx.lineWidth = Number($("brush").value) * (canvas.width / canvas.getBoundingClientRect().width);
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
    if (!state.maskPainted) setMaskPainted(true);
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.image || e.button !== 0) return;
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    paint(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    paint(last, p);
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });
}

// The mask the API reads: the image's size, white (repaint) where painted, black (keep) elsewhere, no alpha.
function maskBlob() {
  const src = $("mask-canvas");
  const pixels = src.getContext("2d").getImageData(0, 0, src.width, src.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const v = d[i + 3] > 0 ? 255 : 0;
    d[i] = d[i + 1] = d[i + 2] = v;
    d[i + 3] = 255;
  }
  const out = el("canvas", { width: src.width, height: src.height });
  out.getContext("2d").putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// ---- wiring ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupMask();
  $("form").addEventListener("submit", run);
  $("stop").addEventListener("click", () => state.run && state.run.abort());
  $("clear-gallery").addEventListener("click", clearGallery);
  $("clear-mask").addEventListener("click", clearMask);
  $("edit-image").addEventListener("change", loadEditImage);
  $("strength").addEventListener("input", () => { state.strengthTouched = true; showStrength(); });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", setMode);
  // Ctrl/Cmd+Enter in a text field runs the form
  $("form").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
  });
  setMode();
  showStrength();
  loadModels();
});
