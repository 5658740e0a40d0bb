// The engine in a module Web Worker, driven by createWorkerEngine (puyu.js). Messages in:
// {type: "load" | "chat" | "info" | "reset" | "unload", id, ...} and {type: "interrupt"};
// out: {type: "progress" | "token", id, ...} while working, then {type: "done" | "error", id}.

import { createEngine, toPlain } from "./puyu.js";

let engine = null;

async function handle(msg) {
  const post = (m) => self.postMessage({ id: msg.id, ...m });
  switch (msg.type) {
    case "load": {
      if (engine) await engine.unload();
      engine = null;
      engine = await createEngine({ ...msg.options, onProgress: (progress) => post({ type: "progress", progress }) });
      return { name: engine.model };
    }
    case "chat": {
      if (!engine) throw new Error("no model loaded");
      // Tokens go out one message each; the page's side builds the OpenAI chunks.
      return engine.run(msg.request, (tokenId, text) => post({ type: "token", tokenId, text }));
    }
    case "info":
      return engine ? engine.info() : null;
    case "reset":
      engine?.resetChat();
      return null;
    case "unload":
      await engine?.unload();
      engine = null;
      return null;
    default:
      throw new Error(`unknown message ${msg.type}`);
  }
}

self.addEventListener("message", async (event) => {
  const msg = event.data;
  if (msg.type === "interrupt") {
    engine?.interrupt();
    return;
  }
  try {
    const result = await handle(msg);
    self.postMessage({ type: "done", id: msg.id, result });
  } catch (e) {
    self.postMessage({ type: "error", id: msg.id, error: toPlain(e) });
  }
});
