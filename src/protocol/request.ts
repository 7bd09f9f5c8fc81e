/**
 * One request over an open JSON-RPC connection, as every client of the daemon makes it: a progress token
 * when the caller listens for progress, cancellation from an AbortSignal, the answer checked against the
 * method's result schema when the caller holds it, and a failure rebuilt as the daemon's AgentlabError
 * (code, message, hint). The CLI's socket and WebSocket client and the daemon's own MCP endpoint both
 * send through here.
 */
import { randomUUID } from "node:crypto";
import { CancellationTokenSource, ErrorCodes, type MessageConnection, ResponseError } from "vscode-jsonrpc";
import type { ParamsOf, ResultOf } from "./call-types.js";
import { AgentlabError, type ErrorCode, isErrorCode } from "./errors.js";
import type { Method, Wire } from "./method.js";
import type { ProgressValue } from "./progress.js";
import { progressType } from "./wire.js";

/** Rebuild the daemon's error from a JSON-RPC error response, so clients show code + hint. */
export function fromResponseError(error: ResponseError<unknown>, method: string): AgentlabError {
  const data = error.data as { code?: unknown; hint?: unknown; details?: unknown } | undefined;
  if (data && isErrorCode(data.code)) {
    return new AgentlabError(data.code, error.message, {
      ...(typeof data.hint === "string" ? { hint: data.hint } : {}),
      ...(data.details && typeof data.details === "object"
        ? { details: data.details as Record<string, unknown> }
        : {}),
    });
  }
  const standard: Partial<Record<number, ErrorCode>> = {
    [ErrorCodes.MethodNotFound]: "METHOD_NOT_FOUND",
    [ErrorCodes.InvalidParams]: "INVALID_PARAMS",
  };
  return new AgentlabError(standard[error.code] ?? "PROTOCOL_MISMATCH", error.message, {
    details: { method, rpc_code: error.code },
  });
}

export interface RequestOptions {
  onProgress?: ((value: ProgressValue) => void) | undefined;
  /** Aborting sends $/cancelRequest; the daemon then answers (CANCELLED, after its rollback). */
  signal?: AbortSignal | undefined;
  /** Settles the call early (a timeout, a closed connection): whichever comes first wins. */
  failed?: Promise<never> | undefined;
}

/** Send one request on a listening connection and wait for its checked answer. */
export async function sendRequest<M extends Wire>(
  conn: MessageConnection,
  method: M,
  params: Omit<ParamsOf<M>, "progress_token">,
  options: RequestOptions = {},
): Promise<ResultOf<M>> {
  const cancel = new CancellationTokenSource();
  const onAbort = () => cancel.cancel();
  if (options.signal?.aborted) cancel.cancel();
  options.signal?.addEventListener("abort", onAbort);
  const wire: Record<string, unknown> = { ...params };
  let progress: { dispose(): void } | undefined;
  if (method.progress && options.onProgress) {
    const token = randomUUID();
    wire.progress_token = token;
    const onProgress = options.onProgress;
    progress = conn.onProgress(progressType, token, (value) => onProgress(value));
  }
  try {
    const sent = conn.sendRequest(method.type, wire, cancel.token);
    const raw = await (options.failed ? Promise.race([sent, options.failed]) : sent);
    // A caller with the schemas (the MCP endpoint) checks the answer here; the CLI calls through wire
    // descriptors, so as not to load zod to start, and checks an answer it cannot show (checkAnswer).
    if ("result" in method) checkAnswer(method as unknown as Method, raw);
    return raw as ResultOf<M>;
  } catch (error) {
    if (error instanceof ResponseError) throw fromResponseError(error, method.method);
    throw error;
  } finally {
    progress?.dispose();
    options.signal?.removeEventListener("abort", onAbort);
    cancel.dispose();
  }
}

/** A daemon's answer against the method's result schema: PROTOCOL_MISMATCH when it does not fit. */
export function checkAnswer(method: Method, raw: unknown): void {
  const parsed = method.result.safeParse(raw);
  if (!parsed.success) {
    throw new AgentlabError("PROTOCOL_MISMATCH", `unexpected answer from agentlabd to ${method.method}`, {
      details: {
        method: method.method,
        issues: parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`),
      },
    });
  }
}
