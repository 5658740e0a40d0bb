#!/usr/bin/env node
// The kernel lab in Chromium (WebGPU on SwiftShader): times q4 matrix-product variants of
// shaders/matmul.wgsl alone at one shape, in turns (variant 1, 2, …, then again), and checks
// every variant's output against a double-precision product computed here in JS.
//
//   node tools/bench-kernels-browser.mjs --rows R --cols K [--tokens T] [--repeat N] [VARIANT …]
//
// VARIANT: matmul.wgsl defines joined by '+', Q4 implied (default: the engine's choices on
// SwiftShader and their neighbours; TEXELS puts the weights in a texture); FILE.wgsl:DEFINES takes another file with matmul.wgsl's
// bindings and dispatch (a kernel being tried out). The same random inputs go to every variant: weights
// (random nibbles, scales of 2^-7), and activations as 8-bit blocks (XQ8 variants) or as the
// floats those blocks stand for (the others), so both kinds compute the same product.
// Needs playwright-core (tests/browser: npm ci) and Debian's chromium.

import fs from "node:fs";
import path from "node:path";

import { browser, serve, ROOT } from "../tests/browser/harness.mjs";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const rows = Number(arg("--rows", 2048));
const cols = Number(arg("--cols", 8192));
const tokens = Number(arg("--tokens", 1));
const repeat = Number(arg("--repeat", 9));
const flags = new Set(["--rows", "--cols", "--tokens", "--repeat"]);
const named = process.argv.slice(2).filter((a, i, all) => !flags.has(a) && !flags.has(all[i - 1]));
const defaults = tokens > 1
  ? ["ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8+TILE8+TEXELS", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8+TILE8", "ROW_PER_LANE+ROWS2+ROWS4+XQ8+TILE8", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+TILE8", "ROW_PER_LANE+ROWS2+ROWS4+TILE8"]
  : ["ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8+TEXELS", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+XQ8", "ROW_PER_LANE+ROWS2+ROWS4+XQ8", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8+TEXELS", "ROW_PER_LANE+ROWS2+ROWS4+ROWS8", ""];
if (cols % 32 || !(rows > 0) || !(tokens > 0)) throw new Error("--cols must be a multiple of 32; --rows and --tokens positive");

// matmul.wgsl's preprocessor (crate/src/gpu/preprocess.rs): #if A | B, #else, #endif.
function preprocess(source, defines) {
  const out = [];
  const stack = [];
  let keep = true;
  for (const line of source.split("\n")) {
    const d = line.trimStart();
    if (d.startsWith("#if ")) {
      const on = d.slice(4).split("|").some((n) => defines.includes(n.trim()));
      stack.push([on, keep]);
      keep = keep && on;
    } else if (d.startsWith("#else")) {
      const [on, outer] = stack.pop();
      stack.push([!on, outer]);
      keep = outer && !on;
    } else if (d.startsWith("#endif")) {
      keep = stack.pop()[1];
    } else if (keep) out.push(line);
  }
  return out.join("\n");
}

const variants = (named.length ? named : defaults).map((name) => {
  const [file, list] = name.includes(".wgsl:") ? name.split(".wgsl:").map((s, i) => (i ? s : `${s}.wgsl`)) : ["shaders/matmul.wgsl", name];
  const source = fs.readFileSync(path.resolve(ROOT, file), "utf8");
  const defines = ["Q4", ...list.split("+").filter(Boolean)];
  const perLane = defines.includes("ROWS8") ? 8 : defines.includes("ROWS4") ? 4 : defines.includes("ROWS2") ? 2 : 1;
  return {
    name: name || "WORKGROUP",
    code: preprocess(source, defines),
    xq8: defines.includes("XQ8"),
    // TEXELS: the weights as an rgba32uint texture, a texel per 32-weight group.
    texels: defines.includes("TEXELS"),
    // Workgroups: a lane per row (64 · rows per lane to a workgroup) or a workgroup per row.
    groups: defines.includes("ROW_PER_LANE") ? Math.ceil(rows / (64 * perLane)) : rows,
    tile: defines.includes("TILE8") ? 8 : defines.includes("TILE4") ? 4 : 1,
  };
});

const { server, port } = await serve({ root: ROOT });
const b = await browser();
try {
  const page = await b.context.newPage();
  await page.goto(`http://127.0.0.1:${port}/kernel-lab`).catch(() => {}); // any page of this origin
  // Inputs, the reference product and the runs, all in the page (nothing large crosses).
  const result = await page.evaluate(async ({ rows, cols, tokens, repeat, variants }) => {
    const groups = cols / 32;
    // Fixed inputs (xorshift32).
    let state = 0x9e3779b9;
    const next = () => ((state ^= state << 13), (state ^= state >>> 17), (state ^= state << 5), state >>> 0);
    const w = new Uint32Array(rows * cols / 8).map(next);
    const scales = new Uint32Array(rows * groups / 2).fill(0x20002000); // f16 2^-7
    // 8-bit activations: per 32-value block, 8 words of q in quantize.wgsl's order (word 2j:
    // values 8j, 8j+2, 8j+4, 8j+6; word 2j+1: the odd ones), then d and Σq as f32.
    const q = new Int8Array(tokens * cols).map(() => (next() % 255) - 127);
    const d = Math.fround(0.01);
    const xq = new Uint32Array(tokens * groups * 12);
    const xqf = new Float32Array(xq.buffer);
    for (let b = 0; b < tokens * groups; b++) {
      let sum = 0;
      for (let j = 0; j < 8; j++) {
        let word = 0;
        for (let i = 0; i < 4; i++) word |= (q[b * 32 + 8 * (j >> 1) + 2 * i + (j & 1)] & 0xff) << (8 * i);
        xq[b * 12 + j] = word >>> 0;
      }
      for (let i = 0; i < 32; i++) sum += q[b * 32 + i];
      xqf[b * 12 + 8] = d;
      xqf[b * 12 + 9] = sum;
    }
    // The floats those blocks stand for (the f32 variants' input: the same product).
    const x = Float32Array.from(q, (v) => d * v);
    // The product in double precision over the first rows (all, up to 2·10^8 multiply-adds):
    // y[t, o] = Σ_k x[t, k] · (n − 8) · 2^-7.
    const checked = Math.min(rows, Math.max(64, Math.floor(2e8 / (cols * tokens))));
    const want = new Float64Array(tokens * checked);
    for (let o = 0; o < checked; o++) {
      for (let t = 0; t < tokens; t++) {
        let s = 0;
        for (let k = 0; k < cols; k++) s += x[t * cols + k] * (((w[o * cols / 8 + (k >> 3)] >>> (4 * (k & 7))) & 15) - 8);
        want[t * checked + o] = s / 128;
      }
    }

    const adapter = await navigator.gpu.requestAdapter();
    const limits = adapter.limits;
    const device = await adapter.requestDevice({ requiredLimits: { maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize, maxBufferSize: limits.maxBufferSize, maxTextureDimension2D: limits.maxTextureDimension2D } });
    if (variants.some((v) => v.texels) && rows > limits.maxTextureDimension2D) throw new Error(`TEXELS: ${rows} rows exceed the adapter's ${limits.maxTextureDimension2D}-texel textures (the engine splits such matrices)`);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
    const upload = (data, u = usage) => {
      const buffer = device.createBuffer({ size: Math.max(16, data.byteLength), usage: u, mappedAtCreation: true });
      new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      buffer.unmap();
      return buffer;
    };
    const [wb, sb, xqb, xb] = [w, scales, xq, x].map((a) => upload(a));
    const texels = device.createTexture({ size: [groups, Math.min(rows, limits.maxTextureDimension2D)], format: "rgba32uint", usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST });
    if (rows <= limits.maxTextureDimension2D) device.queue.writeTexture({ texture: texels }, w, { bytesPerRow: groups * 16 }, [groups, rows]);
    const params = upload(new Uint32Array([rows, cols, tokens, rows, 0, 0, 0, 0]), GPUBufferUsage.UNIFORM);
    const runs = [];
    for (const v of variants) {
      const module = device.createShaderModule({ code: v.code });
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error");
      if (errors.length) throw new Error(`${v.name}: ${errors[0].message} (line ${errors[0].lineNum})`);
      const pipeline = await device.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "matmul" } });
      const y = device.createBuffer({ size: tokens * rows * 4, usage });
      const bind = device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: [v.xq8 ? xqb : xb, wb, sb, y, params].map((buffer, binding) =>
          ({ binding, resource: binding === 1 && v.texels ? texels.createView() : { buffer } })),
      });
      runs.push({ v, pipeline, bind, y, ms: [] });
    }
    const time = async (r) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(r.pipeline);
      pass.setBindGroup(0, r.bind);
      pass.dispatchWorkgroups(Math.min(r.v.groups, 65535), Math.ceil(r.v.groups / 65535), Math.ceil(tokens / r.v.tile));
      pass.end();
      const t0 = performance.now();
      device.queue.submit([enc.finish()]);
      await device.queue.onSubmittedWorkDone();
      return performance.now() - t0;
    };
    for (const r of runs) await time(r); // a warm-up, whose output is checked below
    for (let i = 0; i < repeat; i++) for (const r of runs) r.ms.push(await time(r));
    const out = [];
    for (const r of runs) {
      const read = device.createBuffer({ size: tokens * rows * 4, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(r.y, 0, read, 0, tokens * rows * 4);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      const y = new Float32Array(read.getMappedRange());
      // The largest error against the double-precision product, relative to its largest value.
      let worst = 0, top = 0;
      for (let t = 0; t < tokens; t++) {
        for (let o = 0; o < checked; o++) {
          const want_ = want[t * checked + o];
          worst = Math.max(worst, Math.abs(y[t * rows + o] - want_));
          top = Math.max(top, Math.abs(want_));
        }
      }
      out.push({ name: r.v.name, ms: r.ms, error: Number.isFinite(worst) ? worst / top : Infinity });
    }
    const info = adapter.info;
    return { adapter: [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" ") || "the WebGPU adapter", checked, out };
  }, { rows, cols, tokens, repeat, variants });
  const bytes = rows * cols / 2 + rows * (cols / 32) * 2;
  const macs = rows * cols * tokens;
  console.log(`matmul q4 ${rows}x${cols}, T=${tokens}, on ${result.adapter}: median (min) of ${repeat} dispatches in turns; error on ${result.checked} rows`);
  for (const r of result.out) {
    const ms = [...r.ms].sort((a, b) => a - b);
    const median = ms[ms.length >> 1];
    // f32 sums of up to K terms (8-bit: exact integer sums) against double precision:
    // ~1e-6 of the largest output; 1e-4 leaves room and still catches a wrong group.
    const ok = r.error <= 1e-4;
    if (!ok) process.exitCode = 1;
    console.log(`  ${r.name.padEnd(34)} ${median.toFixed(1).padStart(8)} ms (${ms[0].toFixed(1)})  ${(bytes / median / 1e6).toFixed(2).padStart(6)} GB/s  ${(macs / median / 1e6).toFixed(2).padStart(7)} GMAC/s  error ${r.error.toExponential(1)}${ok ? "" : "  WRONG"}`);
  }
} finally {
  await b.close();
  server.close();
}
