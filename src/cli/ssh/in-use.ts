/**
 * `agentlab ssh` runs its session from the CLI, so the daemon would not see it: it says so with
 * sandbox.touch when the session opens and again while it lasts, well within the sandbox's idle window,
 * so idle stop never stops a sandbox someone is logged in to. A touch that fails (an older daemon, a token
 * without operate scope) only costs that protection, never the session.
 */
import { sandboxTouch } from "../../protocol/wire.js";
import type { CommandContext } from "../context.js";

/** Touch at most this often, and at least three times per idle window. */
const MAX_EVERY_MS = 60_000;
const MIN_EVERY_MS = 1_000;

/** How often to touch for an idle window of `afterMs` (0: idle stop does not apply: never). */
export function touchEveryMs(afterMs: number): number | undefined {
  if (afterMs <= 0) return undefined;
  return Math.min(MAX_EVERY_MS, Math.max(MIN_EVERY_MS, Math.floor(afterMs / 3)));
}

/** Mark the sandbox in use now and until the returned function is called. */
export async function keepInUse(ctx: CommandContext, vmid: number): Promise<() => void> {
  const touch = () => ctx.call(sandboxTouch, { vmid }, { background: true, timeoutMs: 10_000 });
  let every: number | undefined;
  try {
    every = touchEveryMs((await touch()).idle_stop_after_ms);
  } catch {
    return () => {};
  }
  if (every === undefined) return () => {};
  const timer = setInterval(() => {
    touch().catch(() => {});
  }, every);
  timer.unref();
  return () => clearInterval(timer);
}
