// The demo page: picks a model, loads it into the engine in a Web Worker (the page only
// renders), and chats with streaming output. `window.demo` exposes the engine and the last
// result for the browser tests and for curious users.

import { createWorkerEngine } from "../pkg/puyu.js";

const $ = (id) => document.getElementById(id);
const demo = { engine: null, messages: [], lastResult: null, state: "idle", tokens: [] };
window.demo = demo;

function showError(e) {
  const box = $("error");
  box.hidden = false;
  box.dataset.name = e.name ?? "Error";
  box.textContent = `${e.name ?? "Error"}: ${e.message}`;
  demo.state = "error";
}

function clearError() {
  $("error").hidden = true;
  delete $("error").dataset.name;
  $("error").textContent = "";
}

function setBusy(generating) {
  const loaded = demo.engine !== null;
  $("prompt").disabled = !loaded;
  $("send").disabled = !loaded || generating;
  $("stop").disabled = !generating;
  $("new-chat").disabled = !loaded || generating;
  $("load").disabled = generating;
}

function fmtBytes(n) {
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// ---- loading -------------------------------------------------------------------------

async function listModels() {
  try {
    const res = await fetch("models/index.json");
    if (!res.ok) return;
    const { models } = await res.json();
    for (const m of models) $("model-list").add(new Option(m.name, m.url));
  } catch {
    // No list on this server: the URL field and local folders still work.
  }
}

async function load(model) {
  clearError();
  demo.state = "loading";
  if (demo.engine) {
    await demo.engine.unload().catch(() => {});
    demo.engine = null;
  }
  demo.worker?.terminate();
  setBusy(false);
  const bar = $("progress");
  bar.hidden = false;
  const started = performance.now();
  try {
    demo.worker = new Worker(new URL("../pkg/worker.js", import.meta.url), { type: "module" });
    demo.engine = await createWorkerEngine(demo.worker, {
      model,
      context: Number($("context").value) || undefined,
      onProgress: (p) => {
        bar.max = p.total || 1;
        bar.value = p.loaded;
        const amount = p.phase === "download" || p.phase === "upload" ? ` ${fmtBytes(p.loaded)} / ${fmtBytes(p.total)}` : "";
        $("progress-text").textContent = `${p.text}${amount}`;
        demo.lastProgress = p;
      },
    });
    const info = await demo.engine.info();
    demo.info = info;
    $("adapter").textContent = `${info.model} on ${info.description} · context ${info.context} · GPU memory ${fmtBytes(info.memory.weights)} weights + ${fmtBytes(info.memory.kv_cache)} KV cache`;
    $("progress-text").textContent = `loaded ${info.model} in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    demo.messages = [];
    $("log").replaceChildren();
    demo.state = "ready";
  } catch (e) {
    demo.engine = null;
    showError(e);
  } finally {
    bar.hidden = true;
    setBusy(false);
  }
}

$("load").addEventListener("click", () => {
  const url = $("model-url").value.trim() || $("model-list").value;
  if (!url) return showError({ name: "InvalidOptionError", message: "choose a model from the list, give a URL, or pick a local folder" });
  load(url);
});
$("folder").addEventListener("change", (e) => e.target.files.length && load(e.target.files));

// A dropped folder: its files, read through the entries API.
async function filesOf(entry) {
  if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (batch.length === 0) return out;
    for (const e of batch) out.push(...(await filesOf(e)));
  }
}
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry()).filter(Boolean);
  const files = (await Promise.all(entries.map(filesOf))).flat();
  if (files.length) load(files);
});

// ---- chatting ------------------------------------------------------------------------

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : "InternLM2";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return body;
}

function request() {
  const num = (id) => Number($(id).value);
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...demo.messages);
  return {
    messages,
    stream: true,
    max_tokens: num("max-tokens"),
    temperature: num("temperature"),
    top_p: num("top-p"),
    top_k: num("top-k"),
    repetition_penalty: num("penalty"),
    seed: num("seed"),
  };
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || !demo.engine) return;
  clearError();
  $("prompt").value = "";
  bubble("user", text);
  demo.messages.push({ role: "user", content: text });
  const out = bubble("assistant", "");
  demo.state = "generating";
  demo.tokens = [];
  setBusy(true);
  let reply = "";
  try {
    for await (const chunk of demo.engine.chat.completions.create(request())) {
      const choice = chunk.choices[0];
      if (choice.finish_reason === null) {
        demo.tokens.push(...chunk.puyu.token_ids);
        reply += choice.delta.content ?? "";
        out.textContent = reply;
        $("log").scrollTop = $("log").scrollHeight;
      } else {
        const u = chunk.usage;
        demo.lastResult = { ids: chunk.puyu.token_ids, streamed: demo.tokens, finish_reason: choice.finish_reason, usage: u, text: reply };
        $("stats").textContent =
          `prompt ${u.prompt_tokens} tokens (${u.extra.cached_prompt_tokens} reused), ${u.extra.prefill_tokens_per_s.toFixed(1)} tok/s · ` +
          `${u.completion_tokens} tokens at ${u.extra.decode_tokens_per_s.toFixed(1)} tok/s · first token ${(u.extra.time_to_first_token_s * 1000).toFixed(0)} ms · ${choice.finish_reason}`;
      }
    }
    demo.messages.push({ role: "assistant", content: reply });
    demo.state = "ready";
  } catch (e) {
    demo.messages.pop();
    showError(e);
    if (e.name === "DeviceLostError") {
      // Load again (no page reload needed).
      demo.engine = null;
      $("progress-text").textContent = "the GPU was lost: press Load to load the model again";
    }
  } finally {
    setBusy(false);
  }
}

$("ask").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => demo.engine?.interrupt());
$("new-chat").addEventListener("click", async () => {
  demo.messages = [];
  $("log").replaceChildren();
  $("stats").textContent = "";
  await demo.engine?.resetChat();
});

await listModels();
const params = new URLSearchParams(location.search);
if (params.get("model")) {
  $("model-url").value = params.get("model");
  if (params.has("autoload")) load(params.get("model"));
}
demo.booted = true;
