// The npm package as a user gets it: `npm pack` of pkg/, installed into a fresh scratch
// project, imported by a page there with a bare specifier ("puyu", through an import map)
// and run in Chromium: createEngine on the page's thread and createWorkerEngine in a module
// worker both give the native CLI's greedy ids; the next turn reuses the cache and gives the
// same ids as recomputing it; the named errors reach the caller.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { browser, serve, nativeIds, ROOT, TINY } from "./harness.mjs";

let scratch, server, port, b, page;

before(async () => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), "puyu-npm-"));
  const packed = execFileSync("npm", ["pack", path.join(ROOT, "pkg"), "--pack-destination", scratch, "--json", "--loglevel=error"], { encoding: "utf8" });
  const [{ filename, files }] = JSON.parse(packed);
  const names = files.map((f) => f.path);
  for (const f of ["puyu.js", "puyu.d.ts", "worker.js", "wasm/puyu_wasm.js", "wasm/puyu_wasm_bg.wasm"]) assert.ok(names.includes(f), `the package lacks ${f}`);
  assert.ok(!names.some((n) => n.startsWith("test/")), "tests are not packed");
  const app = path.join(scratch, "app");
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "scratch-app", private: true, type: "module" }));
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", path.join(scratch, filename)], { cwd: app });
  fs.cpSync(TINY, path.join(app, "models/tiny-q4"), { recursive: true });
  fs.writeFileSync(path.join(app, "index.html"), `<!doctype html>
<script type="importmap">{ "imports": { "puyu": "./node_modules/puyu/puyu.js" } }</script>
<script type="module">
  import * as puyu from "puyu";
  window.puyu = puyu;
  window.workerUrl = new URL("./node_modules/puyu/worker.js", import.meta.url).href;
</script>`);
  ({ server, port } = await serve({ root: app }));
  b = await browser();
  page = await b.context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => window.puyu);
});

after(async () => {
  await b?.close();
  server?.close();
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
});

const PROMPT = "你好";
const messages = [{ role: "user", content: PROMPT }];

test("createEngine: the native ids, OpenAI shapes, and a reused cache equals a recomputed one", async () => {
  const want = nativeIds(PROMPT, 12);
  const out = await page.evaluate(async (messages) => {
    const phases = new Set();
    const engine = await window.puyu.createEngine({ model: "models/tiny-q4/", onProgress: (p) => phases.add(p.phase) });
    const first = await engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
    const next = [...messages, { role: "assistant", content: first.choices[0].message.content }, { role: "user", content: "继续" }];
    const chunks = [];
    for await (const c of engine.chat.completions.create({ messages: next, max_tokens: 6, temperature: 0, stream: true })) chunks.push(c);
    engine.resetChat();
    const again = await engine.chat.completions.create({ messages: next, max_tokens: 6, temperature: 0 });
    const info = engine.info();
    await engine.unload();
    return { phases: [...phases], first, chunks, again, info };
  }, messages);
  assert.deepEqual(out.phases, ["fetch", "compile", "download", "ready"]);
  assert.deepEqual(out.first.puyu.token_ids, want);
  assert.equal(out.first.object, "chat.completion");
  assert.equal(out.first.choices[0].message.role, "assistant");
  assert.equal(out.first.usage.completion_tokens, want.length);
  assert.equal(out.first.usage.extra.cached_prompt_tokens, 0);

  const last = out.chunks.at(-1);
  assert.ok(out.chunks.slice(0, -1).every((c) => c.object === "chat.completion.chunk" && c.choices[0].finish_reason === null));
  assert.equal(out.chunks[0].choices[0].delta.role, "assistant");
  assert.ok(last.usage.extra.cached_prompt_tokens >= out.first.usage.prompt_tokens, "the second turn reuses the first");
  assert.equal(out.again.usage.extra.cached_prompt_tokens, 0, "after resetChat nothing is reused");
  assert.deepEqual(last.puyu.token_ids, out.again.puyu.token_ids, "reusing the cache gives what recomputing gives");
  assert.equal(out.info.f16, false);
  assert.ok(out.info.memory.weights > 0 && out.info.wasmMemoryBytes > 0);
});

test("createWorkerEngine: the same ids from a module worker, streamed", async () => {
  const want = nativeIds(PROMPT, 12);
  const out = await page.evaluate(async (messages) => {
    const worker = new Worker(window.workerUrl, { type: "module" });
    const engine = await window.puyu.createWorkerEngine(worker, { model: "models/tiny-q4/" });
    const ids = [];
    let last;
    for await (const c of engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0, stream: true })) {
      if (c.choices[0].finish_reason === null) ids.push(...c.puyu.token_ids);
      last = c;
    }
    await engine.unload();
    worker.terminate();
    return { ids, all: last.puyu.token_ids, finish: last.choices[0].finish_reason, model: engine.model };
  }, messages);
  assert.deepEqual(out.all, want);
  assert.deepEqual(out.ids, out.finish === "stop" ? want.slice(0, -1) : want);
  assert.equal(out.model, "tiny-q4");
});

test("kernels: other matrix-product variants give the native ids; profile times dispatches; a bad one is named", async () => {
  const want = nativeIds(PROMPT, 12);
  const out = await page.evaluate(async (messages) => {
    const { createEngine } = window.puyu;
    const ids = [];
    const profiles = [];
    const activations = [];
    const storage = [];
    // SwiftShader is a CPU adapter: attention runs a lane per query or split unless told.
    for (const kernels of [{ rowsPerLane: 1, prefillTile: 1 }, { schedule: "lane", attention: "workgroup", rowsPerLane: 2, prefillTile: 4, profile: true }, { weightStorage: "buffer" }]) {
      const engine = await createEngine({ model: "models/tiny-q4/", kernels });
      ids.push((await engine.chat.completions.create({ messages, max_tokens: 12, temperature: 0 })).puyu.token_ids);
      profiles.push(engine.info().profile);
      activations.push(engine.info().activations);
      storage.push(engine.info().weight_storage);
      await engine.unload();
    }
    let bad = null;
    try {
      await createEngine({ model: "models/tiny-q4/", kernels: { rowsPerLane: 3 } });
    } catch (e) {
      bad = { name: e.name, message: e.message };
    }
    let badActivations = null;
    try {
      await createEngine({ model: "models/tiny-q4/", kernels: { activations: "int4" } });
    } catch (e) {
      badActivations = { name: e.name, message: e.message };
    }
    let badStorage = null;
    try {
      await createEngine({ model: "models/tiny-q4/", kernels: { weightStorage: "image" } });
    } catch (e) {
      badStorage = { name: e.name, message: e.message };
    }
    return { ids, bad, badActivations, badStorage, profiles, activations, storage };
  }, messages);
  for (const ids of out.ids) assert.deepEqual(ids, want);
  // Timestamps only when asked; then the prompt step and the last decode step, by dispatch
  // kind (SwiftShader has timestamp-query; Chromium rounds the times, so only their shape
  // and signs are checked).
  assert.equal(out.profiles[0], null);
  // Summed over the request's steps: one prompt step, a decode step a token after the first.
  const { prefill, decode } = out.profiles[1];
  assert.equal(prefill.steps, 1);
  assert.ok(prefill.tokens > 1, JSON.stringify(prefill));
  assert.equal(decode.tokens, decode.steps);
  assert.ok(decode.steps >= 1 && decode.steps <= 11, JSON.stringify(decode));
  // SwiftShader is a CPU adapter: the q4 products take 8-bit activations, quantized first, in
  // decode and in prefill: all 9 (4 a layer and the output) each step.
  assert.deepEqual(out.activations, ["int8", "int8", "int8"]);
  // and its q4 matrices go to textures unless told (the tiny model's output matrix, 92,544
  // rows, over several: more rows than a texture may have).
  assert.deepEqual(out.storage, ["texture", "texture", "buffer"]);
  for (const step of [prefill, decode]) {
    assert.deepEqual(step.rows.map((r) => r.name).filter((n) => n !== "quantize"), ["embed", "attention_norm", "wqkv", "rope", "attend",
      "combine", "wo", "ffn_norm", "w1+w3", "w2", "final_norm", "output", "sample"]);
    assert.equal(step.rows.find((r) => r.name === "quantize").dispatches, 9 * step.steps);
    assert.equal(step.rows.find((r) => r.name === "w2").dispatches, 2 * step.steps);
    assert.ok(step.rows.every((r) => r.ms >= 0) && step.wall_ms > 0, JSON.stringify(step));
  }
  assert.equal(out.bad?.name, "InvalidOptionError");
  assert.match(out.bad.message, /rowsPerLane must be 1, 2, 4 or 8/);
  assert.equal(out.badActivations?.name, "InvalidOptionError");
  assert.match(out.badActivations.message, /activations must be auto, f32, int8 or int8-decode, not `int4`/);
  assert.equal(out.badStorage?.name, "InvalidOptionError");
  assert.match(out.badStorage.message, /weight storage must be auto, buffer or texture, not `image`/);
});

test("named errors: bad options, a prompt over the context, a missing model, a lost device (then a new engine)", async () => {
  const out = await page.evaluate(async (messages) => {
    const { createEngine, InvalidOptionError, ContextLengthError, ModelLoadError } = window.puyu;
    const caught = async (f) => {
      try { await f(); return null; } catch (e) { return { name: e.name, message: e.message, ours: e instanceof window.puyu.PuyuError }; }
    };
    const small = await createEngine({ model: "models/tiny-q4/", context: 32 });
    return {
      option: await caught(() => small.chat.completions.create({ messages, temperature: -1 })),
      context: await caught(() => small.chat.completions.create({ messages, max_tokens: 4 })),
      missing: await caught(() => createEngine({ model: "models/nothing-here/" })),
      unknown: await caught(() => createEngine({ model: "models/tiny-q4/", contxt: 5 })),
      // A KV cache of 10 M tokens needs more than the adapter's storage-binding limit.
      limits: await caught(() => createEngine({ model: "models/tiny-q4/", context: 10_000_000 })),
      lost: await (async () => {
        const victim = await createEngine({ model: "models/tiny-q4/" });
        victim.loseDeviceForTesting();
        await new Promise((r) => setTimeout(r, 50));
        const error = await caught(() => victim.chat.completions.create({ messages, max_tokens: 2 }));
        // A new engine loads without reloading the page.
        const fresh = await createEngine({ model: "models/tiny-q4/" });
        const reply = await fresh.chat.completions.create({ messages, max_tokens: 2, temperature: 0 });
        return { error, ids: reply.puyu.token_ids };
      })(),
      classes: [InvalidOptionError, ContextLengthError, ModelLoadError].map((c) => c.name),
    };
  }, messages);
  assert.deepEqual(out.classes, ["InvalidOptionError", "ContextLengthError", "ModelLoadError"]);
  assert.equal(out.option.name, "InvalidOptionError");
  assert.match(out.option.message, /temperature/);
  assert.equal(out.context.name, "ContextLengthError");
  assert.match(out.context.message, /context is full: \d+ tokens needed, room for 32/);
  assert.equal(out.missing.name, "ModelLoadError");
  assert.match(out.missing.message, /HTTP 404/);
  assert.equal(out.unknown.name, "InvalidOptionError");
  assert.ok([out.option, out.context, out.missing, out.unknown, out.limits].every((e) => e.ours));
  assert.equal(out.limits.name, "DeviceLimitsError");
  assert.match(out.limits.message, /max_storage_buffer_binding_size .* use a shorter context/);
  assert.equal(out.lost.error?.name, "DeviceLostError", JSON.stringify(out.lost.error));
  assert.match(out.lost.error.message, /device was lost .*load the model again/);
  assert.deepEqual(out.lost.ids, nativeIds(PROMPT, 12).slice(0, 2));
});

test("without WebGPU: the named error says what to do", async () => {
  const plain = await browser({ webgpu: false });
  try {
    const p = await plain.context.newPage();
    await p.goto(`http://127.0.0.1:${port}/`);
    await p.waitForFunction(() => window.puyu);
    const e = await p.evaluate(async () => {
      try {
        await window.puyu.createEngine({ model: "models/tiny-q4/" });
        return null;
      } catch (e) {
        return { name: e.name, message: e.message };
      }
    });
    assert.equal(e?.name, "WebGPUUnavailableError", JSON.stringify(e));
    assert.match(e.message, /WebGPU/);
    assert.doesNotMatch(e.message, /mesa-vulkan-drivers/, "the browser's remedy, not the native one");
  } finally {
    await plain.close();
  }
});
