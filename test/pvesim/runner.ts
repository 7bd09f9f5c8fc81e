/**
 * Runs one API call against the shared state: authentication, route lookup, parameter validation,
 * settling due tasks, the handler — and the waits real Proxmox would do (config flock, agent ping)
 * done outside the state lock.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { type AuthId, authenticate } from "./access.js";
import type { Ctx } from "./context.js";
import { readControl } from "./control.js";
import { DelayedError, FlockBusy, lockTimeout, PveError } from "./errors.js";
import { haltVm } from "./power.js";
import { observeQemus } from "./qemu.js";
import { matchRoute, type RouteResult } from "./routes.js";
import { type RawParams, validate } from "./schema.js";
import { withState } from "./store.js";
import { settle } from "./tasks.js";
import type { SimState } from "./types.js";

export class AuthFailure extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = "AuthFailure";
  }
}

export interface ApiCall {
  method: string;
  /** Path below /api2/json, starting with `/`. */
  path: string;
  params: RawParams;
  /** An authenticated identity (CLIs act as root@pam) or the Authorization header to check. */
  auth: AuthId | { header: string | undefined };
  localNode: string;
}

function newCtx(dir: string, state: SimState): Ctx {
  return { dir, state, control: readControl(dir), now: Date.now() };
}

/** Runs `fn` with a settled model; the same lock-and-settle step every face uses. */
export async function withModel<T>(dir: string, fn: (ctx: Ctx) => T): Promise<T> {
  return withState(dir, (state) => {
    const ctx = newCtx(dir, state);
    // pvestatd's view of real guests first: a QEMU that has gone makes its VM stopped.
    observeQemus(ctx, (vm) => haltVm(vm));
    settle(ctx);
    return fn(ctx);
  });
}

export async function callApi(dir: string, call: ApiCall): Promise<RouteResult> {
  let auth: AuthId;
  if ("header" in call.auth) {
    const header = call.auth.header;
    const result = await withState(dir, (state) => {
      return authenticate(state, header, readControl(dir).pve_version, Date.now());
    });
    if (!result.ok) throw new AuthFailure(result.reason);
    auth = result.auth;
  } else {
    auth = call.auth;
  }

  const match = matchRoute(call.method, call.path);
  if (!match) {
    throw new PveError(501, `Method '${call.method} ${call.path}' not implemented`);
  }
  const raw: RawParams = { ...call.params };
  const conflicts: Record<string, string> = {};
  for (const [key, value] of Object.entries(match.pathParams)) {
    const given = raw[key];
    if (given !== undefined && String(given) !== value) {
      conflicts[key] = "duplicate parameter (already defined in URI) with conflicting values!";
    }
    raw[key] = value;
  }
  if (Object.keys(conflicts).length > 0) {
    throw new PveError(400, "duplicate parameter (already defined in URI) with conflicting values!", {
      errors: conflicts,
    });
  }
  const params = validate({ params: match.route.params, additional: match.route.additional }, raw);

  const started = Date.now();
  for (;;) {
    try {
      const result = await withModel(dir, (ctx) =>
        match.route.handler({ ctx, auth, params, localNode: call.localNode }),
      );
      // Waits on sockets (a real guest agent) happen here, with the state unlocked.
      return result.deferred ? await result.deferred() : result;
    } catch (err) {
      if (err instanceof DelayedError) {
        await sleep(err.delayMs);
        throw err.error;
      }
      if (!(err instanceof FlockBusy)) throw err;
      const deadline = started + err.timeoutMs;
      if (err.untilMs > deadline) {
        await sleep(Math.max(0, deadline - Date.now()));
        throw lockTimeout(err.vmid);
      }
      await sleep(Math.max(1, err.untilMs - Date.now()));
    }
  }
}
