/**
 * What the MCP tools need from a daemon connection: one call of a protocol method, with progress and
 * cancellation. `agentlab mcp` passes the CLI's client (local socket or a connect endpoint with its
 * token); the control listener's /mcp passes a connection into the daemon's own dispatcher under the
 * caller's token, so scopes and owners are checked exactly as for /rpc.
 */
import type { ParamsOf, ResultOf } from "../protocol/call-types.js";
import type { Wire } from "../protocol/method.js";
import type { ProgressValue } from "../protocol/progress.js";

export interface DaemonCallOptions {
  onProgress?: ((value: ProgressValue) => void) | undefined;
  signal?: AbortSignal | undefined;
}

export type DaemonCall = <M extends Wire>(
  method: M,
  params: Omit<ParamsOf<M>, "progress_token">,
  options?: DaemonCallOptions,
) => Promise<ResultOf<M>>;

/** MCP progress for the request, when its client asked for it (a progressToken in _meta). */
export type ProgressSink = (message: string) => void;
