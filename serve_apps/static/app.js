// The try-it page: plain JavaScript, no build step. It talks to the same API as any client.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "backdrop-api-key";

function apiKey() {
  return $("api-key").value.trim();
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// A readable message from an error answer: {"error": {"code", "message", "request_id"}}.
async function describeError(response) {
  let text = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body.error) {
      text = `${response.status} ${body.error.code}: ${body.error.message}`;
      if (body.error.request_id) text += `\n(request id ${body.error.request_id})`;
    }
  } catch (_) { /* not JSON */ }
  const retry = response.headers.get("Retry-After");
  if (retry) text += `\nThe service is busy: try again in ${retry} s.`;
  if (response.status === 401) text += "\nCheck the API key above.";
  return text;
}

async function connect() {
  const key = apiKey();
  sessionStorage.setItem(KEY_STORAGE, key);
  const status = $("key-status");
  if (!key) {
    status.textContent = "Enter a key to load the categories.";
    return;
  }
  status.textContent = "connecting…";
  const response = await fetch("/v1/models", { headers: { "X-API-Key": key } });
  if (!response.ok) {
    status.textContent = "not connected";
    showError(await describeError(response));
    return;
  }
  showError("");
  const info = await response.json();
  const select = $("category");
  replaceOptions(select, info.default.categories.map((c) => new Option(c, c)));
  status.textContent = `connected: ${info.model}, version ${info.default.version}` +
    (info.aliases && Object.keys(info.aliases).length
      ? ` (${Object.entries(info.aliases).map(([a, v]) => `${a}→v${v}`).join(", ")})` : "");
  select.dataset.ready = "true";
  await loadStyles(key);
}

async function loadStyles(key) {
  // the brand style kits this key may use (GET /v1/styles): one option per kit
  const response = await fetch("/v1/styles", { headers: { "X-API-Key": key } });
  const select = $("style");
  const none = select.options[0];
  if (!response.ok) {
    select.replaceChildren(none);
    return;
  }
  const { styles } = await response.json();
  replaceOptions(select, [none, ...styles.map((kit) => new Option(
    `${kit.name} (v${kit.aliases.current || kit.versions[0].version}, ` +
    `${kit.versions[0].references} reference${kit.versions[0].references === 1 ? "" : "s"})`, kit.name))]);
  select.dataset.ready = "true";
}

function replaceOptions(select, options) {
  // a second connect (the key field's change event, then the button) must not undo a choice
  const chosen = select.value;
  select.replaceChildren(...options);
  if (options.some((o) => o.value === chosen)) select.value = chosen;
}

function tile(src, caption, download) {
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  figure.append(img);
  const figcaption = document.createElement("figcaption");
  figcaption.append(caption);
  if (download) {
    const link = document.createElement("a");
    link.href = src;
    link.download = download;
    link.textContent = "download";
    figcaption.append(link);
  }
  figure.append(figcaption);
  return { figure, img };
}

// What one result says about itself: placement, size, seed, QA verdict and the kept candidate.
function caption(image) {
  const lines = [`${image.placement} · ${image.width}×${image.height} · seed ${image.seed}`];
  if (image.qa_score !== null && image.qa_score !== undefined) {
    lines.push(`QA ${image.qa_score.toFixed(2)} ${image.qa_passed ? "passed" : "flagged for review"}`);
  }
  if (image.candidates && image.candidates.length > 1) {
    const kept = image.candidates.findIndex((c) => c.kept);
    const scores = image.candidates.map((c, i) =>
      `${i === kept ? "▶" : ""}${c.scores ? c.scores.qa_score.toFixed(2) : "failed"}`).join(" ");
    lines.push(`kept candidate ${kept + 1} of ${image.candidates.length} (${scores})`);
  }
  lines.push(`${image.device_seconds.toFixed(2)} device-s`);
  const span = document.createElement("span");
  span.className = "caption";
  span.textContent = lines.join("\n");
  return span;
}

function showInputs() {
  const tiles = [];
  for (const [id, label] of [["product", "product"], ["product-mask", "product mask"],
                             ["reference", "reference"], ["reference-mask", "reference mask"]]) {
    const file = $(id).files[0];
    if (file) tiles.push(tile(URL.createObjectURL(file), label).figure);
  }
  $("inputs").replaceChildren(...tiles);
}

async function generate(event) {
  event.preventDefault();
  showError("");
  if (!apiKey()) return showError("Enter your API key first.");
  if (!$("product").files[0]) return showError("Choose a product photo.");
  if (!$("category").value) return showError("Choose a category (connect with your key to load them).");

  const form = new FormData();
  for (const [id, field] of [["product", "image"], ["product-mask", "mask"],
                             ["reference", "reference"], ["reference-mask", "reference_mask"]]) {
    const file = $(id).files[0];
    if (file) form.append(field, file);
  }
  for (const [id, field] of [["category", "category"], ["prompt", "prompt"], ["num-images", "num_images"],
                             ["steps", "steps"], ["guidance", "guidance"], ["scheduler", "scheduler"],
                             ["seed", "seed"], ["style", "style"]]) {
    const value = $(id).value.trim();
    if (value) form.append(field, value);
  }
  const placements = [...document.querySelectorAll("input[name=placement]:checked")].map((box) => box.value);
  if (placements.length) form.append("placements", placements.join(","));
  const candidates = $("candidates").value.trim();
  if (candidates && candidates !== "1") form.append("candidates", candidates);
  form.append("format", "json");

  showInputs();
  $("results").replaceChildren();
  $("meta").textContent = "";
  $("generate").disabled = true;
  $("busy").hidden = false;
  try {
    const response = await fetch("/v1/generate", {
      method: "POST", body: form, headers: { "X-API-Key": apiKey() },
    });
    if (!response.ok) return showError(await describeError(response));
    const answer = await response.json();
    const version = answer.model.version;
    $("results").replaceChildren(...answer.images.map((image) => {
      const name = image.placement === "photo" ? "" : `${image.placement.replace(":", "x")}-`;
      const { figure, img } = tile(`data:${image.media_type};base64,${image.data}`, caption(image),
                                   `backdrop-v${version}-${name}seed${image.seed}.png`);
      img.classList.add("result");
      figure.dataset.placement = image.placement;
      return figure;
    }));
    $("meta").textContent = `${answer.model.name}, version ${version}` +
      ` · ${answer.device_seconds.toFixed(2)} device-s` +
      (answer.model.alias ? ` (${answer.model.alias})` : "") +
      (answer.style ? ` · style ${answer.style}` : "") +
      ` · ${answer.steps} ${answer.scheduler} steps · ${answer.timing_ms.total} ms · batched with ${answer.batch_size - 1} other request(s)`;
  } catch (err) {
    showError(`The service could not be reached: ${err.message}`);
  } finally {
    $("generate").disabled = false;
    $("busy").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("connect").addEventListener("click", connect);
  $("api-key").addEventListener("change", connect);
  $("generate-form").addEventListener("submit", generate);
  if (apiKey()) connect();
});
