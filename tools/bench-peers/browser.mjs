#!/usr/bin/env node
// puyu against wllama in Chromium, side by side on the same random weights (issue 8): puyu's
// bench page (www/bench.html, WebGPU on SwiftShader) on the q4 folder, and wllama (llama.cpp
// in wasm, @wllama/wllama from npm, its CPU path: see wllama.html) on the Q4_0 GGUF, in
// alternating fresh pages of one headless Chromium; prints the table with the ratios.
//
//   node tools/bench-peers/browser.mjs Q4_DIR GGUF [--prompt 64] [--gen 16] [--repeat 3] [--context 512]
//
// tools/bench-peers/run.sh --browser makes both files and calls this. Needs `bash tools/web.sh
// build` and tests/browser's playwright-core (npm ci). wllama's package is fetched from the npm
// registry once into ${PUYU_PEERS_CACHE:-~/.cache/puyu-peers}/wllama-VERSION (never committed).
// Everything is served from 127.0.0.1 with COOP/COEP headers, so wllama gets its threads.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { browser, serve, ROOT as root } from "../../tests/browser/harness.mjs";

const WLLAMA = "3.13.0";
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const [q4Dir, gguf] = process.argv.slice(2, 4).map((p) => p && path.resolve(p));
if (!q4Dir || !gguf || !fs.existsSync(path.join(q4Dir, "manifest.json")) || !fs.existsSync(gguf)) {
  console.error("usage: node tools/bench-peers/browser.mjs Q4_DIR GGUF [--prompt N] [--gen N] [--repeat N] [--context N]");
  process.exit(2);
}
const prompt = Number(arg("--prompt", 64)), gen = Number(arg("--gen", 16)), repeat = Number(arg("--repeat", 3));
const context = arg("--context", "512");

// ---- wllama from the npm registry, once ------------------------------------------------------
const cache = process.env.PUYU_PEERS_CACHE ?? path.join(os.homedir(), ".cache/puyu-peers");
const pkg = path.join(cache, `wllama-${WLLAMA}`, "package");
if (!fs.existsSync(path.join(pkg, "esm/wasm/wllama.wasm"))) {
  fs.mkdirSync(path.dirname(pkg), { recursive: true });
  console.error(`peers: fetching @wllama/wllama ${WLLAMA} from npm`);
  const tgz = execFileSync("npm", ["pack", `@wllama/wllama@${WLLAMA}`, "--silent"], { cwd: path.dirname(pkg), encoding: "utf8" }).trim();
  execFileSync("tar", ["xzf", tgz], { cwd: path.dirname(pkg) });
}

// ---- what the pages load, linked into the served tree ------------------------------------------
const web = path.join(root, "target/peers-web");
fs.rmSync(web, { recursive: true, force: true });
fs.mkdirSync(web, { recursive: true });
fs.symlinkSync(pkg, path.join(web, "wllama"));
fs.symlinkSync(gguf, path.join(web, "model.gguf"));
const link = path.join(root, "www/models/bench-peers");
fs.rmSync(link, { recursive: true, force: true });
fs.symlinkSync(q4Dir, link);

const { server, port } = await serve({
  root,
  headers: { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" },
});
const b = await browser();
const runPage = async (url) => {
  const page = await b.context.newPage();
  try {
    await page.goto(url);
    await page.waitForFunction(() => window.benchResult, null, { timeout: 0, polling: 1000 });
    const r = await page.evaluate(() => window.benchResult);
    if (r.error) throw new Error(`${url}: ${r.error}`);
    return r;
  } finally {
    await page.close();
  }
};
const puyu = [], wllama = [];
let adapter = "";
try {
  for (let r = 1; r <= repeat; r++) {
    console.error(`peers: run ${r}/${repeat}: puyu (bench.html)`);
    // The chat template adds 15 tokens to the user's words.
    const p = await runPage(`http://127.0.0.1:${port}/www/bench.html?${new URLSearchParams({
      model: "models/bench-peers/", prompt: String(Math.max(prompt - 15, 1)), gen: String(gen), repeat: "1", context, cache: "0",
    })}`);
    puyu.push(p);
    adapter = p.adapter;
    console.error(`  puyu: prompt ${p.prompt_tokens} tokens at ${p.prefill_median.toFixed(2)} tok/s, decode ${p.decode_median.toFixed(2)} tok/s`);
    console.error(`peers: run ${r}/${repeat}: wllama ${WLLAMA} (wasm CPU)`);
    const w = await runPage(`http://127.0.0.1:${port}/tools/bench-peers/wllama.html?${new URLSearchParams({
      model: "../../target/peers-web/model.gguf", prompt: String(p.prompt_tokens), gen: String(gen), repeat: "1", context,
    })}`);
    wllama.push(w);
    console.error(`  wllama: prompt ${w.prompt_tokens} tokens at ${w.prefill_median.toFixed(2)} tok/s, decode ${w.decode_median.toFixed(2)} tok/s`);
  }
} finally {
  await b.close();
  server.close();
  fs.rmSync(link, { force: true });
  fs.rmSync(web, { recursive: true, force: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const cell = (xs) => `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
const pick = (runs, key) => runs.map((x) => x[key]);
const w = wllama[0];
console.log(`\n${path.basename(q4Dir)} / ${path.basename(gguf)} in Chromium (headless, ${os.cpus().length} cores), ` +
  `${puyu[0].prompt_tokens}-token prompt (wllama ${w.prompt_tokens}), ${gen} generated, ${repeat} alternating runs each\n`);
console.log("| engine | load s | prefill tok/s | decode tok/s |");
console.log("|---|---|---|---|");
console.log(`| wllama ${WLLAMA}, wasm CPU, ${w.threads} threads${w.cross_origin_isolated ? "" : " (not isolated!)"} | ` +
  `${median(pick(wllama, "load_s")).toFixed(1)} | ${cell(pick(wllama, "prefill_median"))} | ${cell(pick(wllama, "decode_median"))} |`);
console.log(`| puyu, WebGPU${adapter.includes("Cpu") ? " on SwiftShader (CPU)" : ""}, ${adapter.split(";")[1]?.trim() ?? ""} | ${median(pick(puyu, "load_s")).toFixed(1)} | ` +
  `${cell(pick(puyu, "prefill_median"))} | ${cell(pick(puyu, "decode_median"))} |`);
console.log(`| puyu / wllama | | ${(median(pick(puyu, "prefill_median")) / median(pick(wllama, "prefill_median"))).toFixed(2)}× | ` +
  `${(median(pick(puyu, "decode_median")) / median(pick(wllama, "decode_median"))).toFixed(2)}× |`);
console.log(`\npuyu wasm memory peak ${Math.max(...pick(puyu, "wasm_memory_bytes"))} bytes; GPU memory ${JSON.stringify(puyu[0].gpu_memory)}`);
