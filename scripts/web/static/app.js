// The page: the served models, a photo sent to the chosen one with its parameters, the
// answer shown as views.js draws it; the video tab. Every request goes to this page's own
// server (scripts/web/app.py), which holds TorchServe's keys.

import { element, showClassification, showDetections, showFaces } from "./views.js";

const $ = (selector) => document.querySelector(selector);
// The page's token, which its server wants on every call that changes something
// (scripts/web/access.py): another website can neither read it nor send the header.
const TOKEN = document.querySelector("meta[name='zoo-token']").content;
const state = { models: [], model: null, file: null, redraw: null, requested: null };

function setStatus(text, isError = false, target = $("#status")) {
  target.textContent = text;
  target.classList.toggle("error", isError);
}

// An error answer's message, as the server wrote it ({"error", "detail"}), else its text.
async function errorOf(response) {
  const text = await response.text();
  try {
    const answer = JSON.parse(text);
    return answer.detail ? `${answer.error}: ${answer.detail}` : answer.error || text;
  } catch {
    return `${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
  }
}

async function loadModels() {
  const response = await fetch("/api/models");
  if (!response.ok) {
    $("#model-list").replaceChildren(element("p", { class: "status error", text: await errorOf(response) }));
    return;
  }
  state.models = await response.json();
  $("#model-list").replaceChildren(...state.models.map(modelCard));
  $("#model").replaceChildren(...state.models.map((m) => element("option", { value: m.name, text: m.name })));
  choose(state.models[0]?.name);
  const pixelizer = state.models.find((m) => m.name === "face_pixelizer");
  for (const name of ["preset", "shape", "mode", "blocks", "margin", "enlarged_view"]) {  // the video tab's defaults: the pixelizer's own
    if (pixelizer?.parameters?.[name] !== undefined) $(`#video-${name}`).value = pixelizer.parameters[name];
  }
}

function modelCard(model) {
  // Random weights are said once, by the badge (their name is "random").
  const named = model.random_weights ? "" : ` · ${model.weights ?? "?"}`;
  const weights = element("div", { class: "meta", text: `${model.task ?? "?"}${named}` });
  if (model.random_weights) weights.append(" ", element("span", { class: "badge", text: "random weights" }));
  const card = element("div", { class: "card", "data-model": model.name },
    element("div", { class: "name", text: model.name }), weights,
    element("div", { class: "meta", text: `${model.workers} worker(s) ready · batch ${model.batch_size}` }));
  card.addEventListener("click", () => choose(model.name));
  return card;
}

function choose(name) {
  state.model = state.models.find((m) => m.name === name) ?? null;
  $("#model").value = name ?? "";
  document.querySelectorAll(".card").forEach((card) => card.classList.toggle("selected", card.dataset.model === name));
  showParameters(state.model);
  if (state.file) send();
}

// One control per request parameter the model takes: a list for a choice, a slider for a
// detector's confidence (it re-filters the boxes already received), a number or text field.
function showParameters(model) {
  const controls = [];
  for (const [name, value] of Object.entries(model?.parameters ?? {})) {
    let input;
    if (model.choices?.[name]) {
      input = element("select", {}, ...model.choices[name].map((c) => element("option", { value: c, text: c })));
      input.value = value;
    } else if (name === "confidence" && model.task === "detection") {
      input = element("input", { type: "range", min: "0.01", max: "1", step: "0.01", value: String(value) });
    } else if (typeof value === "number") {
      input = element("input", { type: "number", step: Number.isInteger(value) ? "1" : "0.01", value: String(value) });
    } else {
      input = element("input", { type: "text", value: Array.isArray(value) ? value.join(",") : String(value),
        placeholder: name === "classes" ? "all classes, or e.g. person,car" : "" });
    }
    input.id = `param-${name}`;
    input.dataset.param = name;
    input.dataset.default = input.value;
    input.addEventListener("change", () => parameterChanged(name));
    if (input.type === "range") input.addEventListener("input", () => parameterChanged(name, true));
    controls.push(element("label", { text: name }, input));
  }
  const compare = detectors().length > 1 && model?.task === "detection";
  if (compare) {
    const button = element("button", { type: "button", id: "compare", text: `Compare ${detectors().map((m) => m.name).join(" / ")}` });
    button.addEventListener("click", compareDetectors);
    controls.push(button);
  }
  $("#parameters").replaceChildren(...controls);
}

function detectors() {
  return state.models.filter((m) => m.task === "detection");
}

function parameterChanged(name, live = false) {
  const confidence = Number($("#param-confidence")?.value);
  // A higher confidence only hides boxes already received: no new request.
  if (name === "confidence" && state.redraw && state.requested && confidence >= state.requested) {
    state.redraw(confidence);
  } else if (!live && state.file) {
    send();
  }
}

// The parameters that differ from the model's defaults (a detector's confidence always: it
// is what the boxes shown were requested with).
function parameters() {
  const params = {};
  for (const input of document.querySelectorAll("#parameters [data-param]")) {
    if (input.value !== input.dataset.default || input.dataset.param === "confidence") {
      params[input.dataset.param] = input.value;
    }
  }
  return params;
}

async function predict(model, file, params) {
  const started = performance.now();
  const response = await fetch(`/api/predictions/${encodeURIComponent(model)}?${new URLSearchParams(params)}`,
    { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream", "X-Zoo-Token": TOKEN } });
  return { response, ms: performance.now() - started };
}

async function send() {
  const model = state.model;
  if (!model || !state.file) return;
  const params = parameters();
  setStatus(`Sending to ${model.name}…`);
  state.redraw = null;
  const { response, ms } = await predict(model.name, state.file, params);
  const result = $("#result");
  result.replaceChildren();
  if (!response.ok) {
    setStatus(`${model.name} refused it — ${await errorOf(response)}`, true);
    return;
  }
  setStatus(`${model.name} answered in ${ms.toFixed(0)} ms`);
  if (response.headers.get("Content-Type")?.startsWith("image/")) {
    showFaces(result, state.file, await response.blob(), response.headers.get("X-Faces") ?? "?");
    return;
  }
  const answer = await response.json();
  if (answer.predictions) showClassification(result, answer);
  else if (answer.detections) {
    state.requested = Number(params.confidence);
    state.redraw = await showDetections(result, state.file, answer, state.requested);
  } else if (answer.faces) {
    result.append(element("pre", { text: JSON.stringify(answer.faces, null, 1) }));
  }
}

// The photo sent to every served detector in turn, drawn side by side with each one's latency.
async function compareDetectors() {
  if (!state.file) return setStatus("Choose a photo first", true);
  const result = $("#result");
  result.replaceChildren();
  const confidence = Number($("#param-confidence").value);
  for (const model of detectors()) {
    setStatus(`Sending to ${model.name}…`);
    const { response, ms } = await predict(model.name, state.file, { confidence: String(confidence) });
    if (!response.ok) {
      result.append(element("p", { class: "status error", text: `${model.name}: ${await errorOf(response)}` }));
      continue;
    }
    const weights = model.random_weights ? ", random weights" : "";
    await showDetections(result, state.file, await response.json(), confidence, `${model.name}: ${ms.toFixed(0)} ms${weights}`);
  }
  setStatus(`Compared ${detectors().length} detectors`);
}

function accept(file) {
  if (!file) return;
  state.file = file;
  send();
}

function wirePhotoInput() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (event) => accept(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    accept(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => accept(event.clipboardData?.files?.[0]));
  $("#model").addEventListener("change", (event) => choose(event.target.value));
}

// A clip sent to this page's server, which anonymises it with scripts/client's video code
// in a process of its own; its progress polled until the file can be downloaded. Cancel
// ends that process and forgets the clip.
async function anonymiseClip() {
  const clip = $("#clip").files[0];
  const status = $("#video-status");
  if (!clip) return setStatus("Choose a clip first", true, status);
  const params = new URLSearchParams({ frame_memory: $("#frame-memory").value,
    track_frames: $("#track-frames").value, preset: $("#video-preset").value,
    shape: $("#video-shape").value, mode: $("#video-mode").value, blocks: $("#video-blocks").value,
    margin: $("#video-margin").value, enlarged_view: $("#video-enlarged_view").value });
  $("#video-download").hidden = true;
  setStatus(`Uploading ${clip.name}…`, false, status);
  const suffix = clip.name.match(/\.[A-Za-z0-9]{1,5}$/)?.[0] ?? ".mp4";  // the server needs the kind only
  const response = await fetch(`/api/videos?${params}`, { method: "POST", body: clip,
    headers: { "Content-Type": "application/octet-stream", "X-Filename": `clip${suffix}`, "X-Zoo-Token": TOKEN } });
  if (!response.ok) return setStatus(await errorOf(response), true, status);
  const { id } = await response.json();
  const bar = $("#video-progress");
  const cancel = $("#video-cancel");
  bar.hidden = cancel.hidden = false;
  cancel.onclick = () => fetch(`/api/videos/${id}`, { method: "DELETE", headers: { "X-Zoo-Token": TOKEN } });
  try {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const answer = await fetch(`/api/videos/${id}`);
      if (answer.status === 404) return setStatus("Cancelled", false, status);
      const progress = await answer.json();
      bar.max = progress.total || Math.max(progress.done, 1);
      bar.value = progress.done;
      if (progress.state === "failed") return setStatus(progress.error, true, status);
      if (progress.state === "done") {
        setStatus(`${progress.done} frames anonymised`, false, status);
        const link = $("#video-download");
        link.href = `/api/videos/${id}/file`;
        link.hidden = false;
        return;
      }
      setStatus(`${progress.done}${progress.total ? " of " + progress.total : ""} frames anonymised…`, false, status);
    }
  } finally {
    cancel.hidden = true;
  }
}

function wireTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) {
        other.setAttribute("aria-selected", String(other === tab));
        $(`#${other.dataset.tab}`).hidden = other !== tab;
      }
    });
  }
}

wireTabs();
wirePhotoInput();
$("#anonymise").addEventListener("click", anonymiseClip);
loadModels();
