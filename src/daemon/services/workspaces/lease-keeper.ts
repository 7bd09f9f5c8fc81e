/**
 * The lease keeper (design §9.3): one daemon-wide timer that keeps the workspace leases of live owners
 * from expiring and gives up the leases of owners that are gone. "Held" is read from the database, not
 * from memory, so a restart changes nothing: the first pass runs before the socket opens and re-extends
 * the leases of live owners even if they expired while the daemon was down (no client could have taken
 * them meanwhile: clients reach leases only through this daemon).
 */
import type { DaemonContext, Scheduler } from "../../context.js";
import type { Store } from "../../store/db.js";
import { type LeaseOwnerKind, parseLeaseOwner, TEMP_LEASE_TTL_MS } from "../../store/leases.js";
import type { Workspace } from "../../store/workspaces.js";
import { PeriodicTask } from "../periodic.js";

/** The keeper never waits longer than this between passes (design §9.3: every 30 s). */
export const KEEPER_MAX_INTERVAL_MS = 30_000;

export type LeaseLiveness =
  /** The owner still holds the workspace: renew. */
  | { state: "live"; reason: string }
  /** The owner no longer exists or no longer uses the workspace: release. */
  | { state: "gone"; reason: string }
  /** Not an owner string this daemon makes: leave it alone. */
  | { state: "foreign"; reason: string };

/**
 * Whether the owner of `ws`'s lease still holds the workspace, from the database alone:
 * - while an operation row exists on the workspace, whatever lease it has is that operation's (an
 *   attach between its lease and its commit, a session being provisioned, an op recovery still has to
 *   settle), so it is live;
 * - `sandbox:S` while sandbox S is not DESTROYED and is the workspace's attached VM;
 * - `session:X` while session X has a current sandbox;
 * - a temporary lease (`snapshot:…`, `fsck:…`, …) only while its operation row exists.
 */
export function leaseLiveness(store: Store, ws: Workspace): LeaseLiveness {
  const owner = ws.lease_owner;
  if (!owner) return { state: "foreign", reason: "no lease" };
  const parsed = parseLeaseOwner(owner);
  if (!parsed) return { state: "foreign", reason: `${owner} is not an owner agentlab makes` };
  const op = store.workspaceOps.getByWorkspace(ws.id);
  if (op) return { state: "live", reason: `a ${op.kind} operation is in flight` };
  switch (parsed.kind) {
    case "sandbox": {
      const vmid = Number(parsed.id);
      const sandbox = store.sandboxes.get(vmid);
      if (!sandbox) return { state: "gone", reason: `sandbox ${vmid} does not exist` };
      if (sandbox.state === "DESTROYED") return { state: "gone", reason: `sandbox ${vmid} is DESTROYED` };
      if (ws.attached_vmid !== vmid) {
        return {
          state: "gone",
          reason:
            ws.attached_vmid === null
              ? `the workspace is not attached to sandbox ${vmid}`
              : `the workspace is attached to sandbox ${ws.attached_vmid}, not ${vmid}`,
        };
      }
      return { state: "live", reason: `attached to sandbox ${vmid}` };
    }
    case "session": {
      const session = store.sessions.get(parsed.id);
      if (!session) return { state: "gone", reason: `session ${parsed.id} does not exist` };
      if (session.current_vmid === null)
        return { state: "gone", reason: `session ${session.name} is stopped` };
      return { state: "live", reason: `session ${session.name} runs in sandbox ${session.current_vmid}` };
    }
    default:
      return { state: "gone", reason: `no ${parsed.kind} operation is in flight` };
  }
}

/** Attachment leases live for workspace_lease_ttl; the temporary leases of operations for 10 min. */
export function leaseTtlMs(ctx: DaemonContext, kind: LeaseOwnerKind): number {
  return kind === "sandbox" || kind === "session" ? ctx.config.workspace_lease_ttl_ms : TEMP_LEASE_TTL_MS;
}

export interface KeeperReport {
  renewed: Array<{ workspace: string; owner: string; expires_at: string }>;
  released: Array<{ workspace: string; owner: string; reason: string }>;
  lost: Array<{ workspace: string; owner: string }>;
}

export interface LeaseKeeperOptions {
  scheduler: Scheduler;
}

export class LeaseKeeper {
  /** Made at start(): the interval comes from the config, which a bare test context lacks. */
  private loop: PeriodicTask | undefined;
  private stopped = false;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly options: LeaseKeeperOptions,
  ) {}

  /**
   * min(30 s, ttl/2) of the attachment TTL: a lease is renewed when half its TTL or less is left, so
   * one tick per half TTL never lets it run out.
   */
  get intervalMs(): number {
    return Math.max(
      1,
      Math.min(KEEPER_MAX_INTERVAL_MS, Math.floor(this.ctx.config.workspace_lease_ttl_ms / 2)),
    );
  }

  /**
   * One pass, database only, synchronous: every leased workspace row is looked at once. A live owner's
   * lease is renewed when half its TTL or less is left (or it already expired); a gone owner's lease is
   * released (event workspace.lease.released, reason owner gone). A renew that changes no row means the
   * lease was cleared or taken over since it was read: event workspace.lease.lost.
   */
  pass(): KeeperReport {
    const { store, clock } = this.ctx;
    const report: KeeperReport = { renewed: [], released: [], lost: [] };
    const now = clock.now();
    for (const ws of store.workspaces.listLeased()) {
      const owner = ws.lease_owner;
      const nonce = ws.lease_nonce;
      const parsed = owner ? parseLeaseOwner(owner) : undefined;
      if (!owner || !nonce || !parsed) continue;
      const liveness = leaseLiveness(store, ws);
      if (liveness.state === "foreign") continue;
      if (liveness.state === "gone") {
        store.tx(() => {
          if (!store.workspaceLeases.release(ws.id, owner, nonce)) return;
          report.released.push({ workspace: ws.name, owner, reason: liveness.reason });
          store.events.append({
            kind: "workspace.lease.released",
            workspace_id: ws.id,
            msg: `lease of ${owner} released: owner gone (${liveness.reason})`,
            payload: { owner, reason: "owner gone", detail: liveness.reason },
          });
        });
        continue;
      }
      const ttl = leaseTtlMs(this.ctx, parsed.kind);
      const left = ws.lease_expires_at === null ? 0 : ws.lease_expires_at.getTime() - now.getTime();
      if (left > ttl / 2) continue;
      const expires = store.workspaceLeases.renew(ws.id, owner, nonce, ttl, now);
      if (expires) {
        report.renewed.push({ workspace: ws.name, owner, expires_at: expires.toISOString() });
        continue;
      }
      report.lost.push({ workspace: ws.name, owner });
      store.events.append({
        kind: "workspace.lease.lost",
        workspace_id: ws.id,
        msg: `lease of ${owner} was lost: it was cleared or taken over before the keeper could renew it`,
        payload: { owner },
      });
    }
    if (report.renewed.length + report.released.length + report.lost.length > 0) {
      this.ctx.log.debug({ ...report }, "workspace lease keeper pass");
    }
    for (const lost of report.lost) {
      this.ctx.log.warn(lost, `workspace ${lost.workspace}: lease of ${lost.owner} was lost`);
    }
    return report;
  }

  /** Start the periodic passes (the first one runs now); a second call does nothing. */
  start(): void {
    if (this.loop || this.stopped) return;
    this.loop = new PeriodicTask({
      name: "workspace lease keeper",
      intervalMs: this.intervalMs,
      scheduler: this.options.scheduler,
      log: this.ctx.log,
      run: async () => {
        this.pass();
      },
    });
    this.loop.start();
  }

  get completedPasses(): number {
    return this.loop?.completedPasses ?? 0;
  }

  async idle(): Promise<void> {
    await this.loop?.idle();
  }

  async stop(graceMs: number): Promise<boolean> {
    this.stopped = true;
    return this.loop ? this.loop.stop(graceMs) : true;
  }
}
