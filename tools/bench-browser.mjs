#!/usr/bin/env node
// The browser bench page (www/bench.html) in Debian's Chromium (WebGPU on SwiftShader),
// driven headless; prints its JSON result. The model folder is served beside the page.
//
//   node tools/bench-browser.mjs MODEL_DIR [--prompt WORDS] [--gen TOKENS] [--repeat N] [--context N]
//                                [--schedule lane|workgroup] [--attention lane|workgroup] [--rows 1|2|4|8] [--tile 1|4|8]
//                                [--activations f32|int8|int8-decode] [--weights buffer|texture] [--profile] [--sample]
// --profile: GPU time by kind of dispatch (timestamp queries, unrounded: Chromium runs with
// its WebGPU developer features on). --sample: tokens picked with the demo's sampling
// settings instead of greedily.
// Needs `bash tools/web.sh build` first and playwright-core (tests/browser: npm ci).

import fs from "node:fs";
import path from "node:path";

import { browser, serve, ROOT as root } from "../tests/browser/harness.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const modelDir = path.resolve(process.argv[2] ?? path.join(root, "www/models/tiny-q4"));
// The model is linked into the served tree under www/models/bench-<name>/.
const link = path.join(root, "www/models", `bench-${path.basename(modelDir)}`);
fs.rmSync(link, { recursive: true, force: true });
fs.mkdirSync(path.dirname(link), { recursive: true });
fs.symlinkSync(modelDir, link);
const { server, port } = await serve({ root });
const profile = process.argv.includes("--profile");
const b = await browser({ args: profile ? ["--enable-webgpu-developer-features"] : [] });
try {
  const page = await b.context.newPage();
  const q = new URLSearchParams({
    model: `models/${path.basename(link)}/`, prompt: arg("--prompt", "32"), gen: arg("--gen", "16"),
    repeat: arg("--repeat", "3"), context: arg("--context", "512"), cache: "0",
  });
  // Matrix-product variants (default: the engine's choice).
  for (const k of ["schedule", "attention", "rows", "tile", "activations", "weights"]) if (arg(`--${k}`)) q.set(k, arg(`--${k}`));
  if (profile) q.set("profile", "1");
  if (process.argv.includes("--sample")) q.set("sample", "1");
  await page.goto(`http://127.0.0.1:${port}/www/bench.html?${q}`);
  await page.waitForFunction(() => window.benchResult, null, { timeout: 0, polling: 1000 });
  console.log(JSON.stringify(await page.evaluate(() => window.benchResult), null, 1));
} finally {
  await b.close();
  server.close();
  fs.rmSync(link, { force: true });
}
