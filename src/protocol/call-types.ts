/**
 * The params and result types of a call, for a method with schemas or a wire descriptor alone (whose
 * types are those of the method of the same name). Apart from method.ts because the lookup needs every
 * method (index.ts), and index.ts re-exports method.ts: a type-only import back would tie them in a circle.
 */
import type { z } from "zod";
import type * as protocol from "./index.js";
import type { Method, Wire } from "./method.js";

/** The method with schemas that a wire name belongs to: where a wire descriptor's types come from. */
type Named<N extends string> = Extract<(typeof protocol)[keyof typeof protocol], Method & { method: N }>;

export type ParamsOf<M> =
  M extends Method<infer P, z.ZodType> ? z.output<P> : M extends Wire<infer N> ? ParamsOf<Named<N>> : never;
export type ResultOf<M> =
  M extends Method<z.ZodType, infer R> ? z.output<R> : M extends Wire<infer N> ? ResultOf<Named<N>> : never;
