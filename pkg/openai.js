// The OpenAI chat-completions shapes: request validation, streamed chunks, the final
// response and usage. Pure functions, tested in Node (test/openai.test.mjs).

import { InvalidOptionError } from "./errors.js";

const ROLES = new Set(["system", "user", "assistant"]);
const KNOWN = new Set([
  "messages", "stream", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
  "repetition_penalty", "model", "n", "stream_options",
]);
const UNSUPPORTED = {
  frequency_penalty: "use repetition_penalty",
  presence_penalty: "use repetition_penalty",
  logprobs: "not available",
  tools: "put tool schemas in a system message",
  response_format: "not available",
};

function fail(message) {
  throw new InvalidOptionError(message);
}

function nonNegativeInteger(v, key) {
  if (!Number.isSafeInteger(v) || v < 0) fail(`${key} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Checks a request and returns it in the engine's form (defaults filled in). Throws
 * InvalidOptionError naming the option at fault.
 */
export function validateRequest(request) {
  if (request === null || typeof request !== "object") fail("the request must be an object with `messages`");
  for (const key of Object.keys(request)) {
    if (key in UNSUPPORTED) fail(`${key} is not supported: ${UNSUPPORTED[key]}`);
    if (!KNOWN.has(key)) fail(`unknown option ${key} (known: ${[...KNOWN].join(", ")})`);
  }
  const { messages } = request;
  if (!Array.isArray(messages) || messages.length === 0) fail("messages must be a non-empty array");
  messages.forEach((m, i) => {
    if (m === null || typeof m !== "object") fail(`messages[${i}] must be an object`);
    if (!ROLES.has(m.role)) fail(`messages[${i}].role must be system, user or assistant, got ${JSON.stringify(m.role)}`);
    if (typeof m.content !== "string") fail(`messages[${i}].content must be a string`);
  });
  if (messages[messages.length - 1].role === "assistant") fail("the last message must not be the assistant's: there is nothing to answer");
  const out = { messages: messages.map(({ role, content }) => ({ role, content })), stream: false };
  if (request.stream !== undefined) {
    if (typeof request.stream !== "boolean") fail("stream must be true or false");
    out.stream = request.stream;
  }
  if (request.n !== undefined && request.n !== 1) fail("n must be 1: one choice per request");
  if (request.max_tokens != null) {
    nonNegativeInteger(request.max_tokens, "max_tokens");
    if (request.max_tokens === 0) fail("max_tokens must be at least 1");
    out.max_tokens = request.max_tokens;
  }
  if (request.temperature != null) {
    const t = request.temperature;
    if (typeof t !== "number" || !Number.isFinite(t) || t < 0) fail(`temperature must be a number ≥ 0, got ${JSON.stringify(t)}`);
    out.temperature = t;
  }
  if (request.top_p != null) {
    const p = request.top_p;
    if (typeof p !== "number" || !(p > 0 && p <= 1)) fail(`top_p must be in (0, 1], got ${JSON.stringify(p)}`);
    out.top_p = p;
  }
  if (request.top_k != null) out.top_k = nonNegativeInteger(request.top_k, "top_k");
  if (request.seed != null) out.seed = nonNegativeInteger(request.seed, "seed");
  if (request.repetition_penalty != null) {
    const r = request.repetition_penalty;
    if (typeof r !== "number" || !Number.isFinite(r) || r <= 0) fail(`repetition_penalty must be a number > 0, got ${JSON.stringify(r)}`);
    out.repetition_penalty = r;
  }
  if (request.stop != null) {
    const stop = typeof request.stop === "string" ? [request.stop] : request.stop;
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== "string" || s === "")) fail("stop must be a non-empty string or an array of them");
    if (stop.length > 4) fail("stop takes at most 4 strings");
    out.stop = stop;
  }
  return out;
}

let counter = 0;

/** Identity of one completion: its id, creation time and model name, shared by its chunks. */
export function completionHead(model) {
  counter += 1;
  return { id: `chatcmpl-puyu-${Date.now().toString(36)}-${counter}`, created: Math.floor(Date.now() / 1000), model };
}

/** One streamed token: `content` is the text it completes (may be ""). */
export function tokenChunk(head, content, tokenId, first) {
  const delta = first ? { role: "assistant", content } : { content };
  return {
    id: head.id, object: "chat.completion.chunk", created: head.created, model: head.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: null }],
    puyu: { token_ids: [tokenId] },
  };
}

/** Usage with puyu's timing figures (as WebLLM reports them, in `extra`). */
export function usage(result, timing) {
  const completion = result.ids.length;
  const prefillTokens = result.prompt_tokens - result.cached_tokens;
  const prefillS = Math.max(timing.firstToken - timing.start, 1e-6) / 1000;
  const decodeS = Math.max(timing.end - timing.firstToken, 1e-6) / 1000;
  return {
    prompt_tokens: result.prompt_tokens,
    completion_tokens: completion,
    total_tokens: result.prompt_tokens + completion,
    extra: {
      cached_prompt_tokens: result.cached_tokens,
      time_to_first_token_s: prefillS,
      prefill_tokens_per_s: prefillTokens / prefillS,
      decode_tokens_per_s: completion > 1 ? (completion - 1) / decodeS : 0,
    },
  };
}

/** The last chunk: no content, the finish reason, usage, and every sampled id. */
export function finalChunk(head, result, timing) {
  return {
    id: head.id, object: "chat.completion.chunk", created: head.created, model: head.model,
    choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: result.finish_reason }],
    usage: usage(result, timing),
    puyu: { token_ids: result.ids },
  };
}

/** The whole response of a request with `stream: false`. */
export function completion(head, result, timing) {
  return {
    id: head.id, object: "chat.completion", created: head.created, model: head.model,
    choices: [{ index: 0, message: { role: "assistant", content: result.text }, logprobs: null, finish_reason: result.finish_reason }],
    usage: usage(result, timing),
    puyu: { token_ids: result.ids },
  };
}
