import { ParameterStructures, RequestType } from "vscode-jsonrpc";
import type { z } from "zod";
import type { ErrorCode } from "./errors.js";

/**
 * One RPC method, declared once: its wire name, what it is for, the zod schemas of its params and
 * result, whether it reports progress, and the error codes it may answer with. The daemon registers
 * handlers from these declarations and the CLI calls through them, so a method name never appears as a
 * string literal anywhere else.
 */
export interface MethodSpec<P extends z.ZodType, R extends z.ZodType> {
  method: string;
  summary: string;
  params: P;
  result: R;
  /** True when the method sends `$/progress` notifications for the request's progress token. */
  progress: boolean;
  errors: readonly ErrorCode[];
}

export interface Method<P extends z.ZodType = z.ZodType, R extends z.ZodType = z.ZodType>
  extends MethodSpec<P, R> {
  type: RequestType<z.input<P>, z.output<R>, unknown>;
}

export function defineMethod<P extends z.ZodType, R extends z.ZodType>(spec: MethodSpec<P, R>): Method<P, R> {
  return { ...spec, type: new RequestType(spec.method, ParameterStructures.byName) };
}

export type ParamsOf<M> = M extends Method<infer P, z.ZodType> ? z.output<P> : never;
export type ResultOf<M> = M extends Method<z.ZodType, infer R> ? z.output<R> : never;
