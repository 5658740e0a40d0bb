#!/usr/bin/env node
// The browser bench page (www/bench.html) in Debian's Chromium (WebGPU on SwiftShader),
// driven headless; prints its JSON result. The model folder is served beside the page.
//
//   node tools/bench-browser.mjs MODEL_DIR [--prompt WORDS] [--gen TOKENS] [--repeat N] [--context N]
// Needs `bash tools/web.sh build` first and playwright-core (tests/browser: npm ci).

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

import { serve } from "./serve.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { chromium } = createRequire(path.join(root, "tests/browser/package.json"))("playwright-core");
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
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "puyu-bench-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--enable-unsafe-webgpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await context.newPage();
  const q = new URLSearchParams({
    model: `models/${path.basename(link)}/`, prompt: arg("--prompt", "32"), gen: arg("--gen", "16"),
    repeat: arg("--repeat", "3"), context: arg("--context", "512"), cache: "0",
  });
  await page.goto(`http://127.0.0.1:${port}/www/bench.html?${q}`);
  await page.waitForFunction(() => window.benchResult, null, { timeout: 0, polling: 1000 });
  console.log(JSON.stringify(await page.evaluate(() => window.benchResult), null, 1));
} finally {
  await context.close();
  server.close();
  fs.rmSync(link, { force: true });
  fs.rmSync(profile, { recursive: true, force: true });
}
