// puyu in the browser: InternLM2 on WebGPU, with an OpenAI-shaped chat API.
//
//   import { createEngine } from "puyu";
//   const engine = await createEngine({ model: "https://host/models/internlm2-chat-1_8b-q4/",
//                                       onProgress: (p) => console.log(p.text) });
//   for await (const chunk of engine.chat.completions.create({ messages, stream: true }))
//     out.textContent += chunk.choices[0].delta.content ?? "";
//
// createWorkerEngine(new Worker(new URL("puyu/worker.js", import.meta.url), { type: "module" }))
// gives the same surface with the engine in a Web Worker, so the page stays responsive.

import init, * as wasm from "./wasm/puyu_wasm.js";
import {
  PuyuError, WebGPUUnavailableError, DeviceLimitsError, DeviceLostError, ContextLengthError,
  ModelLoadError, InvalidOptionError, fromError, toPlain,
} from "./errors.js";
import { validateRequest, completionHead, tokenChunk, finalChunk, completion } from "./openai.js";
import { load, sourceOf, CACHE_NAME } from "./loader.js";

export {
  PuyuError, WebGPUUnavailableError, DeviceLimitsError, DeviceLostError, ContextLengthError,
  ModelLoadError, InvalidOptionError, validateRequest, CACHE_NAME,
};

let ready;
/** Instantiates the wasm module once. */
function wasmReady() {
  ready ??= init().then((exports) => exports);
  return ready;
}

const LOAD_OPTIONS = new Set(["model", "onProgress", "context", "f16", "kernels", "useCache", "signal"]);

function checkLoadOptions(options) {
  if (options === null || typeof options !== "object") throw new InvalidOptionError("createEngine takes an options object with `model`");
  for (const key of Object.keys(options)) {
    if (!LOAD_OPTIONS.has(key)) throw new InvalidOptionError(`unknown option ${key} (known: ${[...LOAD_OPTIONS].join(", ")})`);
  }
  if (options.model == null) throw new InvalidOptionError("model is required: a base URL of a puyu model folder, or its files");
  if (options.context != null && (!Number.isSafeInteger(options.context) || options.context < 1)) {
    throw new InvalidOptionError(`context must be a positive integer, got ${JSON.stringify(options.context)}`);
  }
  if (options.onProgress != null && typeof options.onProgress !== "function") throw new InvalidOptionError("onProgress must be a function");
}

/** A stream of chunks that can also be awaited first (`await create(...)`, as OpenAI's SDK). */
function awaitableStream(iterable) {
  return {
    [Symbol.asyncIterator]: () => iterable[Symbol.asyncIterator](),
    then: (resolve, reject) => Promise.resolve({ [Symbol.asyncIterator]: () => iterable[Symbol.asyncIterator]() }).then(resolve, reject),
  };
}

/**
 * Runs one request on `run(request, onToken)` (the wasm engine, or a worker): returns the
 * chunk stream or the completion promise. Shared by both engine kinds.
 */
function chatCompletions(modelName, run) {
  return {
    create(request) {
      const req = validateRequest(request);
      const head = completionHead(modelName);
      const timing = { start: performance.now(), firstToken: 0, end: 0 };
      if (!req.stream) {
        return run(req, () => { timing.firstToken ||= performance.now(); }).then((result) => {
          timing.end = performance.now();
          timing.firstToken ||= timing.end;
          return completion(head, result, timing);
        });
      }
      // Chunks queue up as tokens arrive; the iterator takes them in order.
      const queue = [];
      let wake = null;
      let first = true;
      const push = (item) => {
        queue.push(item);
        if (wake) { wake(); wake = null; }
      };
      const started = run(req, (id, text) => {
        timing.firstToken ||= performance.now();
        push({ chunk: tokenChunk(head, text, id, first) });
        first = false;
      }).then(
        (result) => {
          timing.end = performance.now();
          timing.firstToken ||= timing.end;
          push({ chunk: finalChunk(head, result, timing), last: true });
        },
        (error) => push({ error: fromError(error) }),
      );
      const iterable = {
        async *[Symbol.asyncIterator]() {
          for (;;) {
            while (queue.length === 0) await new Promise((r) => { wake = r; });
            const item = queue.shift();
            if (item.error) throw item.error;
            yield item.chunk;
            if (item.last) { await started; return; }
          }
        },
      };
      return awaitableStream(iterable);
    },
  };
}

/** An engine on this thread. */
export class Engine {
  #engine;
  #stop = false;
  #busy = null;
  constructor(engine, name, wasmExports) {
    this.#engine = engine;
    this.#wasm = wasmExports;
    /** The model's name (its folder). */
    this.model = name;
    this.chat = { completions: chatCompletions(name, (req, onToken) => this.run(req, onToken)) };
  }
  #wasm;

  /**
   * Low level (the chat API and the worker use it): runs a validated request, calling
   * `onToken(id, text)` per token; resolves to `{ids, text, finish_reason, prompt_tokens,
   * cached_tokens}`.
   */
  async run(request, onToken = () => {}) {
    if (this.#engine === null) throw new PuyuError("the engine was unloaded: create a new one");
    if (this.#busy) throw new PuyuError("a request is already running: await it or call interrupt() first");
    this.#stop = false;
    const job = this.#engine.generate(JSON.stringify(request), (id, text) => {
      onToken(id, text);
      return !this.#stop;
    });
    this.#busy = job;
    try {
      return JSON.parse(await job);
    } catch (e) {
      throw fromError(e);
    } finally {
      this.#busy = null;
    }
  }

  /** Stops the running generation after the current token (its finish_reason is "abort"). */
  interrupt() {
    this.#stop = true;
  }

  /** Adapter, features, context, GPU memory (bytes), and wasm memory. */
  info() {
    if (this.#engine === null) throw new PuyuError("the engine was unloaded");
    return { ...JSON.parse(this.#engine.info()), model: this.model, wasmMemoryBytes: this.#wasm.memory.buffer.byteLength };
  }

  /** The token ids of `text` (no BOS). */
  tokenize(text) {
    return Array.from(this.#engine.tokenize(text));
  }

  /** Forgets the conversation held in the KV cache. */
  resetChat() {
    this.#engine.reset();
  }

  /** Tests only: destroys the GPU device as a driver reset would (see DeviceLostError). */
  loseDeviceForTesting() {
    this.#engine.lose_device_for_testing();
  }

  /** Stops any generation and frees the GPU memory; the engine cannot be used afterwards. */
  async unload() {
    this.interrupt();
    if (this.#busy) await this.#busy.catch(() => {});
    if (this.#engine) {
      this.#engine.unload();
      this.#engine.free();
      this.#engine = null;
    }
  }
}

/**
 * Loads a model on this thread. Options: `model` (base URL of a puyu model folder, or its
 * files), `onProgress({phase, loaded, total, text})`, `context` (tokens; default the
 * model's, at most 4096), `f16` (false: force the f32 path), `kernels` (matrix-product
 * variants, for benchmarks: see puyu.d.ts), `useCache` (default true).
 */
export async function createEngine(options) {
  checkLoadOptions(options);
  if (typeof navigator === "undefined" || !navigator.gpu) {
    throw new WebGPUUnavailableError(
      "this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, Edge or Safari, or Firefox with WebGPU on; " +
      "Chromium on Linux needs --enable-unsafe-webgpu; the page must be served over https or from localhost",
    );
  }
  const exports = await wasmReady();
  const progress = options.onProgress ?? (() => {});
  try {
    const source = sourceOf(options.model, { useCache: options.useCache ?? true });
    const { engine, name } = await load(wasm, source, { context: options.context, f16: options.f16, kernels: options.kernels, progress, signal: options.signal });
    progress({ phase: "ready", loaded: 1, total: 1, text: `${name} is ready` });
    return new Engine(engine, name, exports);
  } catch (e) {
    throw fromError(e);
  }
}

/**
 * The same engine in a module Web Worker running `puyu/worker.js`:
 * `createWorkerEngine(new Worker(new URL("puyu/worker.js", import.meta.url), { type: "module" }), options)`.
 */
export async function createWorkerEngine(worker, options) {
  checkLoadOptions(options);
  const { onProgress, signal, ...rest } = options;
  if (typeof rest.model === "string" || rest.model instanceof URL) {
    // Relative URLs mean the page's, not the worker's.
    rest.model = new URL(String(rest.model), globalThis.location?.href).href;
  } else {
    rest.model = Array.from(rest.model);
  }
  const engine = new WorkerEngine(worker);
  await engine.load(rest, onProgress ?? (() => {}));
  return engine;
}

/** The engine's surface, forwarded to a worker (see worker.js for the messages). */
class WorkerEngine {
  #worker;
  #next = 0;
  #pending = new Map();
  constructor(worker) {
    this.#worker = worker;
    worker.addEventListener("message", (event) => this.#receive(event.data));
    worker.addEventListener("error", (event) => {
      const error = new PuyuError(`the worker failed: ${event.message ?? "unknown error"}`);
      for (const p of this.#pending.values()) p.reject(error);
      this.#pending.clear();
    });
  }

  #receive(msg) {
    const p = this.#pending.get(msg.id);
    if (!p) return;
    if (msg.type === "progress") p.onEvent(msg.progress);
    else if (msg.type === "token") p.onEvent(msg.tokenId, msg.text);
    else {
      this.#pending.delete(msg.id);
      if (msg.type === "error") p.reject(fromError(msg.error));
      else p.resolve(msg.result);
    }
  }

  #call(type, body, onEvent = () => {}) {
    const id = ++this.#next;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onEvent });
      this.#worker.postMessage({ type, id, ...body });
    });
  }

  /** Loads the model in the worker; `chat` exists once it has (it needs the model's name). */
  async load(options, onProgress) {
    const { name } = await this.#call("load", { options }, onProgress);
    this.model = name;
    this.chat = { completions: chatCompletions(name, (req, onToken) => this.#call("chat", { request: req }, onToken)) };
  }

  interrupt() {
    this.#worker.postMessage({ type: "interrupt" });
  }

  info() {
    return this.#call("info", {});
  }

  resetChat() {
    return this.#call("reset", {});
  }

  async unload() {
    this.interrupt();
    await this.#call("unload", {});
  }
}

export { toPlain };
