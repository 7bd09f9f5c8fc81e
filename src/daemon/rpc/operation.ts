import type { Operation } from "../services/operation.js";
import type { CallContext } from "./server.js";

/** A service operation driven by an RPC call: its cancellation, its progress, its request log. */
export function operation(call: CallContext): Operation {
  return { signal: call.signal, log: call.log, step: (step, message) => call.progress({ step, message }) };
}
