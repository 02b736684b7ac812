// VarGpt.NET web page: plain JS against the server's OpenAI-compatible API (no build step).
"use strict";
const $ = (id) => document.getElementById(id);
let modelId = null, chatHistory = [], chatAbort = null;

const keyInput = $("api-key");
keyInput.value = localStorage.getItem("vargpt-api-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("vargpt-api-key", keyInput.value); loadModel(); });
function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => showTab(t.dataset.tab)));
function showTab(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.tab === name));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === name));
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers(false) });
    const body = await r.json();
    if (!r.ok) { $("model").textContent = body.error ? body.error.message : "error " + r.status; if (r.status === 503) setTimeout(loadModel, 1000); return; }
    const m = body.data[0];
    modelId = m.id;
    $("model").textContent = `${m.id} · context ${m.context_length} · ${m.image_sizes.map((s) => s.size).join(", ")}`;
    const sel = $("gen-size");
    sel.innerHTML = "";
    for (const s of m.image_sizes) sel.add(new Option(`${s.size} (${s.scales} scales)`, s.size));
  } catch (e) { $("model").textContent = "server not reachable"; setTimeout(loadModel, 2000); }
}

// ---- server-sent events over fetch (EventSource cannot POST)
async function* sse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { event, data };
    }
  }
}

async function errorText(r) {
  try { const b = await r.json(); return b.error ? b.error.message : JSON.stringify(b); } catch { return "HTTP " + r.status; }
}

function fileToDataUri(file) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = () => reject(fr.error);
    fr.readAsDataURL(file);
  });
}

// ---- chat
let chatImage = null;
$("chat-image").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  chatImage = f ? await fileToDataUri(f) : null;
  $("chat-image-preview").src = chatImage || "";
  $("chat-image-preview").classList.toggle("hidden", !chatImage);
});
$("chat-clear").addEventListener("click", () => { chatHistory = []; $("messages").innerHTML = ""; });
$("chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());

function bubble(role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  const t = document.createElement("span");
  t.textContent = text;
  d.appendChild(t);
  $("messages").appendChild(d);
  d.scrollIntoView({ block: "end" });
  return { root: d, text: t };
}

$("chat-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text && !chatImage) return;
  const content = [];
  if (chatImage) content.push({ type: "image_url", image_url: { url: chatImage } });
  content.push({ type: "text", text });
  const user = bubble("user", text);
  if (chatImage) { const img = document.createElement("img"); img.src = chatImage; user.root.appendChild(img); }
  chatHistory.push({ role: "user", content });
  chatImage = null; $("chat-image").value = ""; $("chat-image-preview").classList.add("hidden");
  $("chat-input").value = "";
  const answer = bubble("assistant", "");
  answer.root.dataset.testid = "assistant";
  $("chat-send").disabled = true; $("chat-stop").classList.remove("hidden");
  chatAbort = new AbortController();
  let reply = "";
  try {
    const body = { model: modelId, messages: chatHistory, stream: true, stream_options: { include_usage: true },
      max_tokens: Number($("chat-max").value) || 128, temperature: Number($("chat-temp").value) };
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: chatAbort.signal });
    if (!r.ok) throw new Error(await errorText(r));
    let img = null, meta = null;
    for await (const { data } of sse(r)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.image_preview) {
        img = img || answer.root.appendChild(document.createElement("img"));
        img.src = chunk.image_preview.url;
      }
      const c = chunk.choices && chunk.choices[0];
      if (c && c.delta) {
        if (c.delta.content) { reply += c.delta.content; answer.text.textContent = reply; }
        if (c.delta.images) {
          img = img || answer.root.appendChild(document.createElement("img"));
          img.src = c.delta.images[0].image_url.url;
          img.dataset.testid = "chat-image";
          meta = meta || answer.root.appendChild(document.createElement("div"));
          meta.className = "meta"; meta.textContent = "seed " + c.delta.images[0].seed;
        }
      }
      if (chunk.usage) {
        const u = document.createElement("div");
        u.className = "meta"; u.textContent = `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
        answer.root.appendChild(u);
      }
    }
    chatHistory.push({ role: "assistant", content: reply });
    answer.root.dataset.done = "true";
  } catch (err) {
    answer.root.classList.add("error");
    answer.text.textContent = reply + (err.name === "AbortError" ? " [stopped]" : " [error: " + err.message + "]");
    answer.root.dataset.done = "true";
    if (err.name === "AbortError") chatHistory.push({ role: "assistant", content: reply });
  } finally {
    $("chat-send").disabled = false; $("chat-stop").classList.add("hidden");
  }
});

// ---- images (generation and editing share the streaming display)
async function drawStream(url, init, out) {
  const { image, status, scales, meta } = out;
  scales.innerHTML = ""; meta.innerHTML = ""; status.textContent = "waiting…"; image.classList.add("hidden");
  delete image.dataset.final;
  const started = performance.now();
  const r = await fetch(url, init);
  if (!r.ok) { status.textContent = "error: " + (await errorText(r)); return null; }
  let final = null;
  for await (const { event, data } of sse(r)) {
    const ev = JSON.parse(data);
    if (event === "error" || ev.error) { status.textContent = "error: " + (ev.error ? ev.error.message : data); return null; }
    const src = "data:image/png;base64," + ev.b64_json;
    image.src = src; image.classList.remove("hidden");
    const fig = document.createElement("figure");
    const thumb = document.createElement("img"); thumb.src = src;
    const cap = document.createElement("figcaption");
    if (ev.type.endsWith("partial_image")) {
      cap.textContent = `scale ${ev.scale_index + 1}/${ev.scales}`;
      fig.dataset.testid = "preview";
      status.textContent = `scale ${ev.scale_index + 1} of ${ev.scales} · ${((performance.now() - started) / 1000).toFixed(2)} s`;
    } else {
      cap.textContent = "final";
      final = ev;
      image.dataset.final = "true";
      status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(2)} s`;
    }
    fig.append(thumb, cap); scales.appendChild(fig);
  }
  if (final) {
    meta.innerHTML = "";
    const s = document.createElement("div"); s.textContent = `seed ${final.seed} · ${final.size}`; s.dataset.testid = "seed"; meta.appendChild(s);
    if (final.revised_prompt) { const t = document.createElement("div"); t.textContent = "model text: " + final.revised_prompt; meta.appendChild(t); }
  }
  return final;
}

function addButton(parent, label, onClick) {
  const b = document.createElement("button"); b.type = "button"; b.textContent = label; b.addEventListener("click", onClick); parent.appendChild(b); return b;
}

let editSource = null;   // data URI of the image to edit
function setEditSource(uri) {
  editSource = uri;
  $("edit-source").src = uri || ""; $("edit-source").classList.toggle("hidden", !uri);
}
$("edit-image").addEventListener("change", async (e) => { const f = e.target.files[0]; setEditSource(f ? await fileToDataUri(f) : null); });

function numberOrUndefined(id) { const v = $(id).value; return v === "" ? undefined : Number(v); }

$("gen-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("gen-send").disabled = true;
  try {
    const body = { model: modelId, prompt: $("gen-prompt").value, size: $("gen-size").value, stream: true, response_format: "b64_json",
      seed: numberOrUndefined("gen-seed"), cfg: Number($("gen-cfg").value), tau: Number($("gen-tau").value),
      top_k: Number($("gen-topk").value), top_p: Number($("gen-topp").value), force_image_start: $("gen-force").checked };
    const out = { image: $("gen-image"), status: $("gen-status"), scales: $("gen-scales"), meta: $("gen-meta") };
    const final = await drawStream("/v1/images/generations", { method: "POST", headers: headers(), body: JSON.stringify(body) }, out);
    if (final) {
      addButton(out.meta, "reuse seed", () => { $("gen-seed").value = final.seed; });
      addButton(out.meta, "edit this image", () => { setEditSource("data:image/png;base64," + final.b64_json); showTab("edit"); });
    }
  } finally { $("gen-send").disabled = false; }
});

$("edit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = { image: $("edit-image-out"), status: $("edit-status"), scales: $("edit-scales"), meta: $("edit-meta") };
  if (!editSource) { out.status.textContent = "choose an image first"; return; }
  $("edit-send").disabled = true;
  try {
    const form = new FormData();
    form.append("image", await (await fetch(editSource)).blob(), "image.png");
    form.append("prompt", $("edit-prompt").value);
    form.append("model", modelId);
    form.append("stream", "true");
    form.append("force_image_start", $("edit-force").checked ? "true" : "false");
    const seed = numberOrUndefined("edit-seed");
    if (seed !== undefined) form.append("seed", String(seed));
    const final = await drawStream("/v1/images/edits", { method: "POST", headers: headers(false), body: form }, out);
    if (final) {
      addButton(out.meta, "reuse seed", () => { $("edit-seed").value = final.seed; });
      addButton(out.meta, "edit the result", () => setEditSource("data:image/png;base64," + final.b64_json));
    }
  } finally { $("edit-send").disabled = false; }
});

loadModel();
