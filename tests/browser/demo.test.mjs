// The demo page (www/) in Chromium: a greedy answer streams the same token ids as the native
// CLI; multi-turn reuses the cache; the second load comes from the Cache API (no shard
// request reaches the server); Stop interrupts; a corrupt or truncated shard is the named
// ModelLoadError on the page, and the page loads a good model afterwards without a reload.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";

import { browser, serve, nativeIds, ROOT, TINY, ARTIFACTS } from "./harness.mjs";

const MODELS = path.join(ROOT, "www/models");
let server, port, log, b, page;

function copyModel(name, damage) {
  const dir = path.join(MODELS, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.cpSync(TINY, dir, { recursive: true });
  const shard = path.join(dir, JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"))).shards[0].file);
  damage(shard);
}

before(async () => {
  // Copies of the tiny model whose first shard has one byte flipped, or its last 100 cut.
  copyModel("tiny-q4-corrupt", (f) => {
    const bytes = fs.readFileSync(f);
    bytes[bytes.length - 1000] ^= 0x40;
    fs.writeFileSync(f, bytes);
  });
  copyModel("tiny-q4-truncated", (f) => fs.truncateSync(f, fs.statSync(f).size - 100));
  ({ server, port, log } = await serve({ root: ROOT }));
  b = await browser();
  page = await b.context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await b?.close();
  server?.close();
  for (const name of ["tiny-q4-corrupt", "tiny-q4-truncated"]) fs.rmSync(path.join(MODELS, name), { recursive: true, force: true });
});

async function loadModel(url) {
  await page.fill("#model-url", url);
  await page.evaluate(() => { window.demo.state = "loading"; });
  await page.click("#load");
  await page.waitForFunction(() => ["ready", "error"].includes(window.demo.state), null, { timeout: 120_000 });
  return page.evaluate(() => window.demo.state);
}

async function ask(prompt, { maxTokens, stopAfter } = {}) {
  if (!(await page.isVisible("#temperature"))) await page.click("summary"); // the settings
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", String(maxTokens));
  await page.evaluate(() => { window.demo.lastResult = null; });
  await page.fill("#prompt", prompt);
  await page.click("#send");
  if (stopAfter) {
    await page.waitForFunction((n) => window.demo.tokens.length >= n, stopAfter, { timeout: 120_000 });
    await page.click("#stop");
  }
  await page.waitForFunction(() => window.demo.state !== "generating", null, { timeout: 300_000 });
  return page.evaluate(() => window.demo.lastResult);
}

const PROMPT = "书生·浦语 is";

test("a greedy answer streams exactly the native CLI's token ids", async () => {
  await page.goto(`http://127.0.0.1:${port}/www/`);
  await page.waitForFunction(() => window.demo?.booted);
  assert.equal(await loadModel("models/tiny-q4/"), "ready", await page.textContent("#error"));
  const info = await page.evaluate(() => window.demo.info);
  assert.equal(info.f16, false, "SwiftShader has no shader-f16: the f32 path");
  assert.match(await page.textContent("#adapter"), /tiny-q4/);

  const want = nativeIds(PROMPT, 24);
  const got = await ask(PROMPT, { maxTokens: 24 });
  assert.deepEqual(got.ids, want, "the same ids as `puyu run` on lavapipe");
  // Every token was streamed, but a stop id (which ends the answer) is not text.
  const streamed = got.finish_reason === "stop" ? want.slice(0, -1) : want;
  assert.deepEqual(got.streamed, streamed);
  assert.ok(got.text.length > 0);
  assert.equal(await page.locator(".msg.assistant .text").last().textContent(), got.text);
  await page.screenshot({ path: path.join(ARTIFACTS, "demo-answer.png"), fullPage: true });

  // The next turn runs after the first one's tokens, already in the cache.
  const first = got.usage.prompt_tokens;
  const second = await ask("再说一遍", { maxTokens: 4 });
  assert.ok(second.usage.extra.cached_prompt_tokens >= first, `reused ${second.usage.extra.cached_prompt_tokens} of the first turn's ${first}`);
  assert.ok(second.usage.prompt_tokens > first);
});

test("Stop interrupts a long answer", async () => {
  const got = await ask("Tell a long story", { maxTokens: 400, stopAfter: 3 });
  assert.equal(got.finish_reason, "abort");
  assert.ok(got.ids.length >= 3 && got.ids.length < 400, `${got.ids.length} tokens`);
});

test("the second load comes from the Cache API: no shard request reaches the server", async () => {
  await page.reload();
  await page.waitForFunction(() => window.demo?.booted);
  log.length = 0;
  assert.equal(await loadModel("models/tiny-q4/"), "ready", await page.textContent("#error"));
  const shards = log.filter((p) => p.endsWith(".safetensors"));
  assert.deepEqual(shards, [], "shards requested again");
  assert.ok(log.some((p) => p.endsWith("/tiny-q4/manifest.json")), "the manifest is fetched fresh");
  const progress = await page.evaluate(() => window.demo.lastProgress);
  assert.equal(progress.phase, "ready");
});

test("a corrupt or truncated shard is a named error, and a good model loads after it", async () => {
  assert.equal(await loadModel("models/tiny-q4-corrupt/"), "error");
  assert.equal(await page.getAttribute("#error", "data-name"), "ModelLoadError");
  assert.match(await page.textContent("#error"), /corrupt: sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}/);

  assert.equal(await loadModel("models/tiny-q4-truncated/"), "error");
  assert.equal(await page.getAttribute("#error", "data-name"), "ModelLoadError");
  assert.match(await page.textContent("#error"), /incomplete or corrupt/);

  // The engine can be made again without reloading the page.
  assert.equal(await loadModel("models/tiny-q4/"), "ready");
  assert.equal(await page.isHidden("#error"), true);
  const got = await ask(PROMPT, { maxTokens: 4 });
  assert.deepEqual(got.ids, nativeIds(PROMPT, 4));
});

test("a local folder (picked, no server) loads and answers the same", async () => {
  log.length = 0;
  await page.evaluate(() => { window.demo.state = "loading"; });
  await page.setInputFiles("#folder", TINY);
  await page.waitForFunction(() => ["ready", "error"].includes(window.demo.state), null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => window.demo.state), "ready", await page.textContent("#error"));
  assert.equal(await page.evaluate(() => window.demo.info.model), "tiny-q4");
  assert.deepEqual(log.filter((p) => p.includes("/models/")), [], "nothing of the model came from the server");
  const got = await ask(PROMPT, { maxTokens: 6 });
  assert.deepEqual(got.ids, nativeIds(PROMPT, 6));
});
