import type { Logger } from "../log.js";

/**
 * What a long service operation gets from whoever started it (an RPC call, the reaper, start-up
 * recovery): a cancellation signal, a way to report steps, and a logger. Services never see RPC types.
 */
export interface Operation {
  signal: AbortSignal;
  log: Logger;
  step(step: string, message: string): void;
}

/** For background work nobody watches: steps go to the log only. */
export function backgroundOperation(
  log: Logger,
  signal: AbortSignal = new AbortController().signal,
): Operation {
  return { signal, log, step: (step, message) => log.info({ step }, message) };
}
