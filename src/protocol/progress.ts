import { z } from "zod";
import { boundedString, LIMITS, numberLimit } from "./limits.js";

/**
 * Long operations report each step through `$/progress` notifications addressed by the token the
 * client put in the request's `progress_token` param. A step has a stable machine name and a line for
 * people; `done`/`total` are set when the step can count.
 */
export const ProgressValue = z.object({
  step: z.string(),
  message: z.string(),
  done: z.number().int().nonnegative().optional(),
  total: z.number().int().nonnegative().optional(),
  /** base64 bytes a step carries: sandbox exec's output (steps stdout and stderr). */
  data: z.string().optional(),
});
export type ProgressValue = z.infer<typeof ProgressValue>;

/** The param every progress-reporting method accepts. */
export const progressToken = z
  .union([
    boundedString(LIMITS.PROGRESS_TOKEN).min(1),
    z.number().int().max(LIMITS.OFFSET.max, numberLimit(LIMITS.OFFSET)),
  ])
  .optional()
  .describe("token the daemon addresses $/progress notifications to");
