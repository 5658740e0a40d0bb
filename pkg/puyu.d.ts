// Types of the puyu npm package (puyu.js).

export interface Progress {
  /** fetch: small files; compile: GPU buffers and shaders; download: shards from the network;
   *  upload: shards from the cache or local files; ready: done. */
  phase: "fetch" | "compile" | "download" | "upload" | "ready";
  loaded: number;
  total: number;
  text: string;
}

export interface LoadOptions {
  /** Base URL of a puyu model folder, or its files (a picked or dropped folder). */
  model: string | URL | FileList | File[];
  onProgress?: (progress: Progress) => void;
  /** KV-cache capacity in tokens (default: the model's, at most 4096). */
  context?: number;
  /** false: use the f32 path even where the device has shader-f16. */
  f16?: boolean;
  /** Matrix-product variants, for benchmarks (default: the engine's choice for the adapter):
   *  a lane per row ("lane", with 1, 2, 4 or 8 rows per lane) or a workgroup per row, and the
   *  tokens per tile in prefill; `attention`: a lane per query in prompts and per KV split in
   *  decode ("lane", the default on CPU adapters) or a workgroup per query and split; `activations`: what the q4 products multiply the weights
   *  with ("int8": 8-bit with a scale per 32 values, the default on CPU adapters;
   *  "int8-decode": so in decode only; "f32": the reference's arithmetic); `weightStorage`: where the q4 matrices
   *  live ("texture": rgba32uint textures, a texel per 32-weight group, the default on CPU adapters, where a texel
   *  is one load and a storage vec4 four gathers; "buffer": storage buffers, the default on GPUs); `profile` times
   *  every dispatch with timestamp queries (the adapter must have timestamp-query; see EngineInfo.profile). */
  kernels?: {
    schedule?: "auto" | "lane" | "workgroup"; attention?: "auto" | "lane" | "workgroup";
    rowsPerLane?: 1 | 2 | 4 | 8; prefillTile?: 1 | 4 | 8;
    activations?: "auto" | "f32" | "int8" | "int8-decode"; weightStorage?: "auto" | "buffer" | "texture";
    profile?: boolean;
  };
  /** Keep downloaded shards in the Cache API (default true). */
  useCache?: boolean;
  signal?: AbortSignal;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface ChatRequest {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  /** 0 is greedy. Default 0.8. */
  temperature?: number;
  /** Default 0.8. */
  top_p?: number;
  /** 0 keeps all. Default 50. */
  top_k?: number;
  repetition_penalty?: number;
  seed?: number;
  stop?: string | string[];
  model?: string;
  n?: 1;
}

export type FinishReason = "stop" | "length" | "abort";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  extra: {
    cached_prompt_tokens: number;
    time_to_first_token_s: number;
    prefill_tokens_per_s: number;
    decode_tokens_per_s: number;
  };
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: [{ index: 0; delta: { role?: "assistant"; content?: string }; logprobs: null; finish_reason: FinishReason | null }];
  /** On the last chunk only. */
  usage?: Usage;
  /** The sampled ids: this chunk's token, or on the last chunk all of them (a stop id included). */
  puyu: { token_ids: number[] };
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: [{ index: 0; message: { role: "assistant"; content: string }; logprobs: null; finish_reason: FinishReason }];
  usage: Usage;
  puyu: { token_ids: number[] };
}

export type ChunkStream = AsyncIterable<ChatCompletionChunk> & PromiseLike<AsyncIterable<ChatCompletionChunk>>;

export interface EngineInfo {
  adapter: string;
  backend: string;
  description: string;
  f16: boolean;
  /** What the q4 products multiply the weights with: "f32", or 8-bit ("int8", the default on
   *  CPU adapters such as SwiftShader; "int8-decode": in decode only). */
  activations: "f32" | "int8" | "int8-decode";
  /** Where the q4 matrices live: "texture" (the default on CPU adapters) or "buffer". */
  weight_storage: "buffer" | "texture";
  context: number;
  /** GPU bytes; decode_read: the weight bytes one decode step reads (all but the embedding table). */
  memory: { weights: number; decode_read: number; kv_cache: number; scratch: number };
  layers: number;
  hidden_size: number;
  vocab_size: number;
  /** With kernels.profile: the GPU time by kind of dispatch of the prompt and decode steps
   *  since the chat was last reset, each kind summed (null until one has run); otherwise null. */
  profile: { prefill: StepProfile | null; decode: StepProfile | null } | null;
  model: string;
  wasmMemoryBytes: number;
}

export interface StepProfile {
  steps: number;
  tokens: number;
  /** From the start of each step's first dispatch to the end of its last, summed. */
  wall_ms: number;
  /** One row per kind of dispatch ("wqkv", "attend", "output", …), in the order they first
   *  run; totals over the steps. */
  rows: { name: string; dispatches: number; ms: number }[];
}

export interface ChatCompletions {
  create(request: ChatRequest & { stream: true }): ChunkStream;
  create(request: ChatRequest & { stream?: false }): Promise<ChatCompletion>;
}

export interface PuyuEngine {
  readonly model: string;
  readonly chat: { completions: ChatCompletions };
  /** Stops the running generation after the current token (finish_reason "abort"). */
  interrupt(): void;
  info(): EngineInfo | Promise<EngineInfo>;
  /** Forgets the conversation held in the KV cache. */
  resetChat(): void | Promise<void>;
  /** Frees the GPU memory; the engine cannot be used afterwards. */
  unload(): Promise<void>;
}

export declare class Engine implements PuyuEngine {
  readonly model: string;
  readonly chat: { completions: ChatCompletions };
  interrupt(): void;
  info(): EngineInfo;
  tokenize(text: string): number[];
  resetChat(): void;
  unload(): Promise<void>;
  run(request: ChatRequest, onToken?: (id: number, text: string) => void): Promise<{ ids: number[]; text: string; finish_reason: FinishReason; prompt_tokens: number; cached_tokens: number }>;
}

export declare function createEngine(options: LoadOptions): Promise<Engine>;
export declare function createWorkerEngine(worker: Worker, options: LoadOptions): Promise<PuyuEngine>;
export declare function validateRequest(request: ChatRequest): ChatRequest;
export declare const CACHE_NAME: string;

export declare class PuyuError extends Error {}
export declare class WebGPUUnavailableError extends PuyuError {}
export declare class DeviceLimitsError extends PuyuError {}
export declare class DeviceLostError extends PuyuError {}
export declare class ContextLengthError extends PuyuError {}
export declare class ModelLoadError extends PuyuError {}
export declare class InvalidOptionError extends PuyuError {}
