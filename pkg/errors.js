// Named errors: every failure a user can meet has its own class, and its message says what
// to do. The wasm engine throws plain Errors whose `name` is one of these class names
// (web/src/lib.rs); `fromError` turns them (and errors sent from a worker) into instances.

export class PuyuError extends Error {
  constructor(message, options) {
    super(message, options);
    // Set explicitly so that minifiers renaming classes cannot change it.
    Object.defineProperty(this, "name", { value: "PuyuError", configurable: true, writable: true });
  }
}

function named(name) {
  const cls = class extends PuyuError {
    constructor(message, options) {
      super(message, options);
      this.name = name;
    }
  };
  Object.defineProperty(cls, "name", { value: name });
  return cls;
}

/** No WebGPU here: `navigator.gpu` is missing or gives no adapter. */
export const WebGPUUnavailableError = named("WebGPUUnavailableError");
/** The GPU's limits are too small for the model or the requested context. */
export const DeviceLimitsError = named("DeviceLimitsError");
/** The GPU device was lost (driver reset, tab in the background too long, unload()): load again. */
export const DeviceLostError = named("DeviceLostError");
/** The conversation does not fit the context the model was loaded with. */
export const ContextLengthError = named("ContextLengthError");
/** A model file is missing, truncated, corrupt (sha256) or not a puyu model folder. */
export const ModelLoadError = named("ModelLoadError");
/** A request or load option is out of range or unknown. */
export const InvalidOptionError = named("InvalidOptionError");

const classes = {
  PuyuError, WebGPUUnavailableError, DeviceLimitsError, DeviceLostError,
  ContextLengthError, ModelLoadError, InvalidOptionError,
};

/** An error thrown by the wasm engine, or `{name, message}` sent by a worker, as its class. */
export function fromError(e) {
  if (e instanceof PuyuError) return e;
  const name = e && typeof e === "object" ? e.name : undefined;
  const message = e && typeof e === "object" && "message" in e ? String(e.message) : String(e);
  const cls = classes[name] ?? PuyuError;
  return new cls(message, { cause: e });
}

/** What a worker posts for an error. */
export function toPlain(e) {
  const err = fromError(e);
  return { name: err.name, message: err.message };
}
