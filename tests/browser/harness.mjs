// What the browser tests share: a server, Debian's Chromium with WebGPU (SwiftShader: no
// shader-f16, so the f32 path), and the native CLI's greedy ids for the same chat prompt,
// forced onto the same path (--no-f16 --no-subgroups, 8-bit activations) on lavapipe.

import { chromium } from "playwright-core";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { serve } from "../../tools/serve.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const TINY = path.join(ROOT, "www/models/tiny-q4");
export const ARTIFACTS = path.join(ROOT, "target/browser-artifacts");

export function chromiumPath() {
  const p = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!fs.existsSync(p)) throw new Error(`no Chromium at ${p}: apt-get install chromium (see .ci/run), or set CHROMIUM`);
  return p;
}

/**
 * A persistent context (so the Cache API survives page loads) on a fresh profile; with
 * `webgpu: false`, Chromium as it starts without the flag that turns WebGPU on (Linux);
 * `args`: more command-line flags.
 */
export async function browser({ webgpu = true, args = [] } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "puyu-pw-"));
  const flags = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    args: webgpu ? ["--enable-unsafe-webgpu", ...flags, ...args] : [...flags, ...args],
  });
  const errors = [];
  context.on("weberror", (e) => errors.push(String(e.error())));
  return { context, errors, close: async () => { await context.close(); fs.rmSync(profile, { recursive: true, force: true }); } };
}

export { serve };

/** `puyu run --chat` greedy ids on lavapipe, on the path SwiftShader takes, stop id included. */
export function nativeIds(prompt, maxTokens) {
  if (!fs.existsSync(path.join(TINY, "manifest.json"))) throw new Error("no www/models/tiny-q4: run `bash tools/web.sh build` first");
  const bin = path.join(ROOT, "target/debug/puyu");
  const out = spawnSync(bin, ["run", "--model", TINY, "--chat", "--prompt", prompt, "--temperature", "0",
    "--max-tokens", String(maxTokens), "--no-f16", "--no-subgroups", "--activations", "int8", "--show-ids"], {
    encoding: "utf8",
    env: { ...process.env, WGPU_VALIDATION: "0" },
  });
  if (out.status !== 0) throw new Error(`puyu run failed (${out.status}): ${out.stderr}`);
  const line = out.stderr.split("\n").find((l) => l.startsWith("ids: "));
  return JSON.parse(line.slice(5));
}
