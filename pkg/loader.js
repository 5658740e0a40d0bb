// Model files from a base URL (fetch with progress, kept in the Cache API so a second visit
// downloads nothing) or from local files (a folder picked or dropped on the page). Shards
// stream chunk by chunk into the wasm Loader, which writes each chunk to its GPU buffers
// and hashes it: no shard is ever held whole, in JS or in wasm memory.

import { ModelLoadError } from "./errors.js";

export const CACHE_NAME = "puyu-models-v1";

/** Where the files of a model come from. */
class UrlSource {
  constructor(base, useCache) {
    this.base = base.endsWith("/") ? base : `${base}/`;
    this.name = decodeURIComponent(this.base.split("/").filter(Boolean).pop() ?? "model");
    this.useCache = useCache && typeof caches !== "undefined";
    this.cache = null;
  }
  /**
   * A shard (`sha256` given) comes from the cache when it is there, keyed by its hash, so
   * that a changed model never meets a stale shard; the small files (config, manifest,
   * tokenizer) come from the network when it answers, else from the cache (offline).
   */
  async open(file, sha256, { optional = false } = {}) {
    const url = new URL(file, this.base).href;
    const key = sha256 ? `${url}?sha256=${sha256}` : url;
    if (this.useCache) this.cache ??= await caches.open(CACHE_NAME);
    const cached = async () => {
      const hit = this.useCache ? await this.cache.match(key) : undefined;
      return hit && { body: hit.body, network: false, forget: () => this.cache.delete(key) };
    };
    if (sha256) {
      const hit = await cached();
      if (hit) return hit;
    }
    let response;
    try {
      response = await fetch(url);
    } catch (e) {
      const hit = await cached();
      if (hit) return hit;
      throw new ModelLoadError(`cannot fetch ${url}: ${e.message}; check the address and that the server is running`, { cause: e });
    }
    if (optional && response.status === 404) return null;
    if (!response.ok) throw new ModelLoadError(`cannot fetch ${url}: HTTP ${response.status}; check the model address`);
    // The copy is written while the original streams on, and forgotten if it proves corrupt.
    const stored = this.useCache ? this.cache.put(key, response.clone()).catch(() => {}) : Promise.resolve();
    return { body: response.body, network: true, stored, forget: () => this.useCache && this.cache.delete(key) };
  }
}

class FileSource {
  constructor(files) {
    this.files = new Map();
    for (const f of files) this.files.set(f.name, f);
    const first = files[0];
    const rel = first && first.webkitRelativePath;
    this.name = rel ? rel.split("/")[0] : "local model";
  }
  async open(file, sha256, { optional = false } = {}) {
    const f = this.files.get(file);
    if (!f && optional) return null;
    if (!f) throw new ModelLoadError(`the chosen files have no ${file}: pick the whole model folder (manifest.json, config.json, tokenizer.json and the shards)`);
    return { body: f.stream(), network: false, forget: () => {} };
  }
}

/** A model source from what the user gave: a base URL (string or URL) or files. */
export function sourceOf(model, { useCache = true } = {}) {
  if (typeof model === "string" || model instanceof URL) {
    const base = new URL(String(model), globalThis.location?.href).href;
    return new UrlSource(base, useCache);
  }
  if (model && typeof model[Symbol.iterator] === "function") return new FileSource([...model]);
  if (model && typeof model.length === "number") return new FileSource(Array.from(model));
  throw new ModelLoadError("model must be a base URL or a list of files (a picked or dropped folder)");
}

async function readAll(body) {
  return new Uint8Array(await new Response(body).arrayBuffer());
}

/**
 * Loads a model into a wasm Loader and returns the engine. `progress({phase, loaded, total,
 * text})`: phase "fetch" (config, manifest, tokenizer), "compile" (GPU buffers and shaders),
 * "download" (from the network) or "upload" (from the cache or files; both go to the GPU).
 */
export async function load(wasm, source, { context, f16, kernels, progress = () => {}, signal } = {}) {
  progress({ phase: "fetch", loaded: 0, total: 3, text: `reading ${source.name}: config, manifest, tokenizer` });
  const text = async (file) => new TextDecoder().decode(await readAll((await source.open(file)).body));
  const config = await text("config.json");
  const manifestText = await text("manifest.json");
  // tokenizer.model (sentencepiece) when the folder has it: the tokenizer built from it
  // takes ~40 MB of wasm memory at its peak, from tokenizer.json ~100 MB.
  const sentencepiece = await source.open("tokenizer.model", null, { optional: true });
  const tokenizer = await readAll((sentencepiece ?? (await source.open("tokenizer.json"))).body);
  let manifest;
  try {
    manifest = JSON.parse(manifestText);
  } catch (e) {
    throw new ModelLoadError(`manifest.json of ${source.name} is not JSON (${e.message}): is this a puyu model folder?`);
  }
  progress({ phase: "compile", loaded: 0, total: 1, text: "preparing GPU buffers and compiling shaders" });
  const loader = await wasm.Loader.create(config, manifestText, tokenizer, JSON.stringify({ context: context ?? null, f16: f16 ?? true, kernels: kernels ?? null }));
  const total = manifest.shards.reduce((n, s) => n + s.size, 0);
  let loaded = 0;
  try {
    for (const [index, shard] of manifest.shards.entries()) {
      const file = await source.open(shard.file, shard.sha256);
      const phase = file.network ? "download" : "upload";
      loader.begin_shard(index);
      const reader = file.body.getReader();
      try {
        for (;;) {
          if (signal?.aborted) throw new ModelLoadError("loading was cancelled");
          const { done, value } = await reader.read();
          if (done) break;
          loader.push(value);
          loaded += value.byteLength;
          progress({ phase, loaded, total, text: `${phase === "download" ? "downloading" : "uploading"} ${shard.file}` });
        }
        loader.end_shard();
      } catch (e) {
        reader.cancel().catch(() => {});
        await file.stored;
        await file.forget();
        throw e;
      }
      await file.stored;
    }
  } catch (e) {
    loader.free();
    throw e;
  }
  return { engine: loader.finish(), name: source.name, bytes: total };
}
