/**
 * Persistence of the simulated cluster: one JSON file changed only under an exclusive lock file and
 * replaced atomically, so any number of processes (fake CLIs, the HTTPS server, tests) can share it.
 */
import { closeSync, openSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { DelayedError, FlockBusy, PveError } from "./errors.js";
import { stateLockPath, statePath } from "./paths.js";
import type { SimState } from "./types.js";

/** A holder that has not finished within this long is presumed dead even if its pid was reused. */
const STALE_AFTER_MS = 30_000;
const ACQUIRE_TIMEOUT_MS = 60_000;

interface LockInfo {
  pid: number;
  at: number;
  nonce: string;
}

function readLock(path: string): { raw: string; info: LockInfo | undefined } | undefined {
  let raw: string;
  try {
    raw = readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
  const [pid, at, nonce] = raw.trim().split(" ");
  if (!pid || !at || !nonce) return { raw, info: undefined };
  return { raw, info: { pid: Number(pid), at: Number(at), nonce } };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function tryCreate(path: string, content: string): boolean {
  try {
    const fd = openSync(path, "wx", 0o644);
    try {
      writeFileSync(fd, content);
    } finally {
      closeSync(fd);
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
}

/**
 * Removes a lock whose holder died. A second lock ("breaker") makes the check-and-remove atomic:
 * without it two waiters could both judge the same lock stale and the slower one would delete the
 * fresh lock the faster one had just taken.
 */
function breakIfStale(path: string, now: number): void {
  const seen = readLock(path);
  if (!seen) return;
  const { info } = seen;
  // A half-written lock (no content yet) is only stale once it is old.
  const stale = info ? !alive(info.pid) || now - info.at > STALE_AFTER_MS : false;
  if (!stale) return;
  const breaker = `${path}.break`;
  const breakerContent = `${process.pid} ${now} ${Math.random().toString(36).slice(2)}`;
  if (!tryCreate(breaker, breakerContent)) {
    const other = readLock(breaker);
    if (other?.info && (now - other.info.at > 5_000 || !alive(other.info.pid))) {
      try {
        unlinkSync(breaker);
      } catch {
        // someone else cleaned it
      }
    }
    return;
  }
  try {
    const again = readLock(path);
    if (again && again.raw === seen.raw) unlinkSync(path);
  } finally {
    try {
      unlinkSync(breaker);
    } catch {
      // already gone
    }
  }
}

export interface HeldLock {
  release(): void;
}

/** Takes an exclusive lock file with O_EXCL, retrying with backoff and recovering stale locks. */
export async function acquireLock(path: string, timeoutMs = ACQUIRE_TIMEOUT_MS): Promise<HeldLock> {
  const started = Date.now();
  const nonce = `${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
  let delay = 1;
  for (;;) {
    const now = Date.now();
    const content = `${process.pid} ${now} ${nonce}`;
    if (tryCreate(path, content)) {
      return {
        release: () => {
          const held = readLock(path);
          if (held?.info?.nonce === nonce) unlinkSync(path);
        },
      };
    }
    breakIfStale(path, now);
    if (now - started > timeoutMs) throw new Error(`timeout waiting for lock file ${path}`);
    await sleep(delay + Math.random() * delay);
    delay = Math.min(delay * 2, 20);
  }
}

export function readState(dir: string): SimState {
  let text: string;
  try {
    text = readFileSync(statePath(dir), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new Error(`no simulator state in ${dir} (run \`pvesim init ${dir}\` first)`);
    }
    throw err;
  }
  return JSON.parse(text) as SimState;
}

/** Writes to a temp file beside the target and renames it over, so readers never see half a file. */
export function writeFileAtomic(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

export function writeState(dir: string, state: SimState): void {
  writeFileAtomic(statePath(dir), `${JSON.stringify(state)}\n`);
}

/**
 * Runs `fn` on the current state under the lock and saves the state if `fn` changed it. `fn` is
 * synchronous on purpose: nothing may await while the whole cluster is locked.
 *
 * A Proxmox-level error still saves: handlers check before they change anything, and what did change
 * by then (tasks settled, a fault's use counted) must not be replayed by the next caller.
 */
export async function withState<T>(dir: string, fn: (state: SimState) => T): Promise<T> {
  const lock = await acquireLock(stateLockPath(dir));
  try {
    let before: string;
    try {
      before = readFileSync(statePath(dir), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        throw new Error(`no simulator state in ${dir} (run \`pvesim init ${dir}\` first)`);
      }
      throw err;
    }
    const state = JSON.parse(before) as SimState;
    const save = (): void => {
      const after = `${JSON.stringify(state)}\n`;
      if (after !== before) writeFileAtomic(statePath(dir), after);
    };
    try {
      const result = fn(state);
      save();
      return result;
    } catch (err) {
      if (err instanceof PveError || err instanceof DelayedError || err instanceof FlockBusy) save();
      throw err;
    }
  } finally {
    lock.release();
  }
}
