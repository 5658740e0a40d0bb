// The facade's pure parts, in Node: request validation, the OpenAI chunk and response
// shapes, error classes, and the shard streaming loop (with a fake wasm Loader).

import { test } from "node:test";
import assert from "node:assert/strict";

import { validateRequest, completionHead, tokenChunk, finalChunk, completion, usage } from "../openai.js";
import * as errors from "../errors.js";
import { load, sourceOf } from "../loader.js";

const user = [{ role: "user", content: "hi" }];

test("a minimal request gets the defaults, unknown fields are dropped from messages", () => {
  const r = validateRequest({ messages: [{ role: "user", content: "hi", name: "x" }] });
  assert.deepEqual(r, { messages: user, stream: false });
  const full = validateRequest({ messages: user, stream: true, max_tokens: 8, temperature: 0, top_p: 1, top_k: 0, seed: 7, stop: "END", repetition_penalty: 1.1 });
  assert.deepEqual(full, { messages: user, stream: true, max_tokens: 8, temperature: 0, top_p: 1, top_k: 0, seed: 7, stop: ["END"], repetition_penalty: 1.1 });
});

test("bad options are InvalidOptionError naming the option", () => {
  const bad = [
    [{}, /messages/],
    [{ messages: [] }, /messages/],
    [{ messages: [{ role: "robot", content: "x" }] }, /messages\[0\]\.role/],
    [{ messages: [{ role: "user", content: 3 }] }, /messages\[0\]\.content/],
    [{ messages: [{ role: "assistant", content: "x" }] }, /last message/],
    [{ messages: user, temperature: -1 }, /temperature/],
    [{ messages: user, temperature: "hot" }, /temperature/],
    [{ messages: user, top_p: 0 }, /top_p/],
    [{ messages: user, top_p: 1.5 }, /top_p/],
    [{ messages: user, top_k: 1.5 }, /top_k/],
    [{ messages: user, max_tokens: 0 }, /max_tokens/],
    [{ messages: user, max_tokens: -3 }, /max_tokens/],
    [{ messages: user, seed: -1 }, /seed/],
    [{ messages: user, stop: [""] }, /stop/],
    [{ messages: user, stop: ["a", "b", "c", "d", "e"] }, /stop/],
    [{ messages: user, repetition_penalty: 0 }, /repetition_penalty/],
    [{ messages: user, n: 2 }, /n must be 1/],
    [{ messages: user, stream: "yes" }, /stream/],
    [{ messages: user, frequency_penalty: 1 }, /frequency_penalty is not supported: use repetition_penalty/],
    [{ messages: user, temprature: 1 }, /unknown option temprature/],
  ];
  for (const [request, message] of bad) {
    assert.throws(() => validateRequest(request), (e) => {
      assert.ok(e instanceof errors.InvalidOptionError, `${JSON.stringify(request)}: ${e}`);
      assert.ok(e instanceof errors.PuyuError);
      assert.equal(e.name, "InvalidOptionError");
      assert.match(e.message, message);
      return true;
    });
  }
});

test("chunks and responses have OpenAI's shape", () => {
  const head = completionHead("tiny-q4");
  assert.match(head.id, /^chatcmpl-/);
  assert.ok(Number.isInteger(head.created));
  const first = tokenChunk(head, "你", 1001, true);
  assert.deepEqual(first, {
    id: head.id, object: "chat.completion.chunk", created: head.created, model: "tiny-q4",
    choices: [{ index: 0, delta: { role: "assistant", content: "你" }, logprobs: null, finish_reason: null }],
    puyu: { token_ids: [1001] },
  });
  assert.deepEqual(tokenChunk(head, "", 7, false).choices[0].delta, { content: "" });

  const result = { ids: [1001, 7, 2], text: "你", finish_reason: "stop", prompt_tokens: 10, cached_tokens: 4 };
  const timing = { start: 1000, firstToken: 1500, end: 2500 };
  const last = finalChunk(head, result, timing);
  assert.equal(last.choices[0].finish_reason, "stop");
  assert.deepEqual(last.choices[0].delta, {});
  assert.deepEqual(last.puyu.token_ids, [1001, 7, 2]);
  // 6 new prompt tokens in 0.5 s; 2 more tokens in 1 s after the first.
  assert.deepEqual(last.usage, {
    prompt_tokens: 10, completion_tokens: 3, total_tokens: 13,
    extra: { cached_prompt_tokens: 4, time_to_first_token_s: 0.5, prefill_tokens_per_s: 12, decode_tokens_per_s: 2 },
  });
  const whole = completion(head, result, timing);
  assert.equal(whole.object, "chat.completion");
  assert.deepEqual(whole.choices, [{ index: 0, message: { role: "assistant", content: "你" }, logprobs: null, finish_reason: "stop" }]);
  assert.equal(usage({ ...result, ids: [5] }, timing).extra.decode_tokens_per_s, 0);
});

test("wasm errors become their classes; unknown names stay PuyuError", () => {
  for (const name of ["WebGPUUnavailableError", "DeviceLimitsError", "DeviceLostError", "ContextLengthError", "ModelLoadError", "InvalidOptionError"]) {
    const raw = new Error(`${name} happened`);
    raw.name = name;
    const e = errors.fromError(raw);
    assert.ok(e instanceof errors[name]);
    assert.ok(e instanceof errors.PuyuError);
    assert.equal(e.name, name);
    assert.equal(e.message, `${name} happened`);
    // Through a worker: {name, message} and back.
    const back = errors.fromError(errors.toPlain(raw));
    assert.ok(back instanceof errors[name]);
  }
  const other = errors.fromError(new TypeError("x"));
  assert.equal(other.constructor, errors.PuyuError);
  assert.equal(errors.fromError("plain").message, "plain");
});

// A fake wasm Loader that records the calls and checks what a real one would.
function fakeWasm(manifest, { failOnShard = -1 } = {}) {
  const calls = [];
  class Loader {
    static async create(config, manifestText, tokenizer, options) {
      calls.push(["create", JSON.parse(options)]);
      assert.deepEqual(JSON.parse(manifestText), manifest);
      return new Loader();
    }
    begin_shard(i) { calls.push(["begin", i]); this.shard = i; this.bytes = 0; }
    push(chunk) { this.bytes += chunk.byteLength; }
    end_shard() {
      calls.push(["end", this.shard, this.bytes]);
      if (this.shard === failOnShard) {
        const e = new Error("shard x is corrupt: sha256 a, the manifest says b");
        e.name = "ModelLoadError";
        throw e;
      }
    }
    finish() { calls.push(["finish"]); return "engine"; }
    free() { calls.push(["free"]); }
  }
  return { Loader, calls };
}

function fakeSource(files) {
  const forgotten = [];
  return {
    name: "fake",
    forgotten,
    async open(file, sha256, { optional = false } = {}) {
      const bytes = files[file];
      if (!bytes && optional) return null;
      if (!bytes) throw new errors.ModelLoadError(`no ${file}`);
      // Delivered in 3-byte chunks, as a network might.
      let pos = 0;
      const body = new ReadableStream({
        pull(c) {
          if (pos >= bytes.length) return c.close();
          c.enqueue(bytes.slice(pos, pos + 3));
          pos += 3;
        },
      });
      return { body, network: true, stored: Promise.resolve(), forget: () => forgotten.push(file) };
    },
  };
}

const manifest = { shards: [{ file: "a.safetensors", size: 10, sha256: "x" }, { file: "b.safetensors", size: 5, sha256: "y" }] };
const files = {
  "config.json": new TextEncoder().encode("{}"),
  "manifest.json": new TextEncoder().encode(JSON.stringify(manifest)),
  "tokenizer.json": new Uint8Array([1, 2]),
  "a.safetensors": new Uint8Array(10),
  "b.safetensors": new Uint8Array(5),
};

test("shards stream chunk by chunk into the loader, with progress", async () => {
  const { Loader, calls } = fakeWasm(manifest);
  const progress = [];
  const out = await load({ Loader }, fakeSource(files), { context: 64, progress: (p) => progress.push(p) });
  assert.equal(out.engine, "engine");
  assert.equal(out.bytes, 15);
  assert.deepEqual(calls, [["create", { context: 64, f16: true, kernels: null }], ["begin", 0], ["end", 0, 10], ["begin", 1], ["end", 1, 5], ["finish"]]);
  assert.deepEqual(progress.map((p) => p.phase).filter((p, i, a) => a.indexOf(p) === i), ["fetch", "compile", "download"]);
  const downloads = progress.filter((p) => p.phase === "download");
  assert.deepEqual(downloads.map((p) => p.loaded), [3, 6, 9, 10, 13, 15]);
  assert.ok(downloads.every((p) => p.total === 15));
});

test("a corrupt shard is forgotten from the cache and the loader freed", async () => {
  const { Loader, calls } = fakeWasm(manifest, { failOnShard: 1 });
  const source = fakeSource(files);
  await assert.rejects(load({ Loader }, source, {}), (e) => e.name === "ModelLoadError" && /corrupt/.test(e.message));
  assert.deepEqual(source.forgotten, ["b.safetensors"]);
  assert.deepEqual(calls.at(-1), ["free"]);
});

test("a missing file and a non-JSON manifest are ModelLoadError", async () => {
  const { Loader } = fakeWasm(manifest);
  const { "tokenizer.json": _, ...noTokenizer } = files;
  await assert.rejects(load({ Loader }, fakeSource(noTokenizer), {}), errors.ModelLoadError);
  const garbled = { ...files, "manifest.json": new TextEncoder().encode("<html>") };
  await assert.rejects(load({ Loader }, fakeSource(garbled), {}), /manifest.json of fake is not JSON/);
});

test("model sources: URLs get a trailing slash, files are found by name", async () => {
  const s = sourceOf("http://127.0.0.1:1/models/tiny-q4", { useCache: false });
  assert.equal(s.base, "http://127.0.0.1:1/models/tiny-q4/");
  assert.equal(s.name, "tiny-q4");
  const file = new File(["{}"], "config.json");
  const local = sourceOf([file]);
  assert.equal(await new Response((await local.open("config.json")).body).text(), "{}");
  await assert.rejects(local.open("manifest.json"), (e) => e instanceof errors.ModelLoadError && /pick the whole model folder/.test(e.message));
  assert.throws(() => sourceOf(42), errors.ModelLoadError);
});
