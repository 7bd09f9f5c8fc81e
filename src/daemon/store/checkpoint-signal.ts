/**
 * What the checkpointer's two threads share (./checkpointer.ts and ./checkpoint-worker.ts): the
 * worker's start-up data and a SharedArrayBuffer of two 32-bit cells, read and written with Atomics
 * only, through which the main thread stops the worker and learns, without its event loop, that the
 * worker's connection is closed.
 */

export interface CheckpointWorkerData {
  path: string;
  intervalMs: number;
  busyTimeoutMs: number;
  signal: SharedArrayBuffer;
}

/** Cell index: 0 while the worker should run, 1 once the main thread asked it to stop. */
export const STOP = 0;
/** Cell index: where the worker's connection is, one of the states below. */
export const STATE = 1;

/** The worker has not opened its connection yet. */
export const STARTING = 0;
/** The worker is opening or has opened its connection. */
export const OPEN = 1;
/** The worker's connection is closed (or never opened because it failed): it holds nothing. */
export const CLOSED = 2;
/** The main thread stopped the worker before it opened a connection: it never will. */
export const CANCELLED = 3;

export function newSignal(): SharedArrayBuffer {
  return new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
}

export function signalView(signal: SharedArrayBuffer): Int32Array {
  return new Int32Array(signal);
}

export function stopped(sig: Int32Array): boolean {
  return Atomics.load(sig, STOP) !== 0;
}
