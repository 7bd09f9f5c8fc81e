import { ParameterStructures, RequestType } from "vscode-jsonrpc";
import type { z } from "zod";
import type { ErrorCode } from "./errors.js";

/**
 * One RPC method as it travels, without schemas (wire.ts declares every one): its name, whether it
 * reports progress, and the error codes it may answer with. A client calls through these; the name
 * never appears as a string literal anywhere else.
 */
export interface Wire<N extends string = string> {
  method: N;
  /** True when the method sends `$/progress` notifications for the request's progress token. */
  progress: boolean;
  errors: readonly ErrorCode[];
  type: RequestType<unknown, unknown, unknown>;
}

export function wire<N extends string>(
  method: N,
  spec: { progress: boolean; errors: readonly ErrorCode[] },
): Wire<N> {
  return { method, ...spec, type: new RequestType(method, ParameterStructures.byName) };
}

/**
 * A method with what it is for and the zod schemas of its params and result. The daemon registers
 * handlers from these and validates params with them; MCP derives its tools from them.
 */
export interface Method<
  P extends z.ZodType = z.ZodType,
  R extends z.ZodType = z.ZodType,
  N extends string = string,
> extends Wire<N> {
  summary: string;
  params: P;
  result: R;
}

export function defineMethod<N extends string, P extends z.ZodType, R extends z.ZodType>(
  wire: Wire<N>,
  spec: { summary: string; params: P; result: R },
): Method<P, R, N> {
  return { ...wire, ...spec };
}
