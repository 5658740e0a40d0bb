#!/usr/bin/env node
// A static file server for the demo page and the browser tests, on 127.0.0.1 only (a
// secure context, so WebGPU and the Cache API work). No dependencies.
//
//   node tools/serve.mjs [--root DIR] [--port 8080]
//
// Tests import `serve` to get a server on a free port with a log of the paths requested and
// an optional `corrupt(path)` hook that may change a file's bytes on the way out; `headers`
// are added to every response (the peers' browser bench sends COOP/COEP, which wasm threads
// need).

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ts": "text/plain; charset=utf-8",
};

export function serve({ root, port = 0, log = [], corrupt = () => null, headers = {} } = {}) {
  root = path.resolve(root);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    let file = path.join(root, decodeURIComponent(url.pathname));
    if (!file.startsWith(root)) {
      res.writeHead(403).end();
      return;
    }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    log.push(url.pathname);
    fs.readFile(file, (err, data) => {
      if (err) {
        res.writeHead(404, { "content-type": "text/plain", ...headers }).end(`not found: ${url.pathname}\n`);
        return;
      }
      data = corrupt(url.pathname, data) ?? data;
      res.writeHead(200, {
        "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
        "content-length": data.length,
        "cache-control": "no-cache",
        ...headers,
      });
      res.end(data);
    });
  });
  return new Promise((resolve) => {
    server.listen(port, "127.0.0.1", () => resolve({ server, port: server.address().port, log }));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const root = arg("--root", path.join(path.dirname(fileURLToPath(import.meta.url)), ".."));
  const { port } = await serve({ root, port: Number(arg("--port", 8080)) });
  console.log(`serving ${root} on http://127.0.0.1:${port}/www/ (Ctrl-C stops)`);
}
