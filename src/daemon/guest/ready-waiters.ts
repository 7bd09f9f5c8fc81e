/**
 * Guest readiness by phone-home: provisioning issues a bootstrap token for the VM (it goes into the
 * cloud-init snippet), the guest POSTs it to the guest listener as soon as it has booted, and whoever
 * waits for that VM gets the address at once, with no polling. The guest-agent query stays as the
 * fallback path: `firstGuestAddress` races the two.
 */
import { AgentlabError } from "../../protocol/errors.js";
import type { Clock } from "../clock.js";
import type { Logger } from "../log.js";
import { abortableSleep } from "../proxmox/tasks.js";
import { type BootstrapTokens, hashBootstrapToken } from "./tokens.js";

export type GuestAddressSource = "phone-home" | "guest-agent";

export interface GuestReadyReport {
  vmid: number;
  ip: string;
  via: "phone-home";
  at: Date;
  /** The guest's SSH host keys ("type base64"), when it sent them. */
  hostKeys?: string[];
}

export interface GuestAddress {
  ip: string;
  via: GuestAddressSource;
  /** The agent answered, and the awaited phone-home did not come within the grace period. */
  phoneHomeMissed?: boolean;
  /** The SSH host keys the phone-home reported (only the phone-home carries them). */
  hostKeys?: string[];
}

/** What `agentlab status` can show about the guest listener. */
export interface GuestListenerState {
  /** bootstrap_listen as configured. */
  address: string;
  listening: boolean;
  /** The URL it serves on once bound (with the real port when the config asked for port 0). */
  url?: string;
  /** Why it is not listening. */
  error?: string;
  /** What to do about it. */
  hint?: string;
}

export interface IssuedReadiness {
  token: string;
  /** The URL the guest reports to: controller_url (`<controllerUrl>/v1/guest/ready`). */
  controllerUrl: string;
  expiresAt: Date;
}

interface Entry {
  tokenHash: string;
  expiresAt: number;
  report?: GuestReadyReport;
  waiters: Set<{ resolve: (report: GuestReadyReport) => void; reject: (error: unknown) => void }>;
}

export interface GuestReadinessOptions {
  tokens: BootstrapTokens;
  clock: Clock;
  /** config.controller_url */
  controllerUrl: string;
  /** config.bootstrap_listen */
  listenAddress: string;
  log: Logger;
}

export class GuestReadiness {
  readonly #tokens: BootstrapTokens;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #configuredUrl: string;
  readonly #entries = new Map<number, Entry>();
  #listener: GuestListenerState;

  constructor(options: GuestReadinessOptions) {
    this.#tokens = options.tokens;
    this.#clock = options.clock;
    this.#log = options.log;
    this.#configuredUrl = options.controllerUrl.replace(/\/+$/, "");
    this.#listener = { address: options.listenAddress, listening: false, error: "not started" };
  }

  /** The guest listener's state, for `agentlab status`. */
  listener(): GuestListenerState {
    return { ...this.#listener };
  }

  /** Set by the daemon once it tried to bind the guest listener. */
  setListener(state: GuestListenerState): void {
    this.#listener = { ...state };
  }

  /** Whether a guest can phone home at all; when false only the guest agent tells the address. */
  get phoneHomeAvailable(): boolean {
    return this.#listener.listening;
  }

  /**
   * The controller URL guests get. A port of 0 in it (bootstrap_listen with port 0 and no controller_url,
   * which tests use to avoid port clashes) is replaced by the port the listener really got.
   */
  controllerUrl(): string {
    const bound = this.#listener.url;
    if (bound === undefined) return this.#configuredUrl;
    try {
      const url = new URL(this.#configuredUrl);
      if (url.port === "0") {
        url.port = new URL(bound).port;
        return url.toString().replace(/\/+$/, "");
      }
    } catch {
      // config.ts validated the URL; keep it as written.
    }
    return this.#configuredUrl;
  }

  /**
   * A new single-use token for `vmid`, and from now on a report with it resolves `wait(vmid)`. Issuing
   * again for the same VMID replaces the earlier token and waiter.
   */
  issue(vmid: number): IssuedReadiness {
    this.#prune();
    const issued = this.#tokens.issue(vmid);
    this.#rejectWaiters(vmid, "a newer bootstrap token was issued for this VM");
    this.#entries.set(vmid, {
      tokenHash: issued.tokenHash,
      expiresAt: issued.expiresAt.getTime(),
      waiters: new Set(),
    });
    return { token: issued.token, controllerUrl: this.controllerUrl(), expiresAt: issued.expiresAt };
  }

  /**
   * The runner's single-use token for fetching the job of `vmid` (bootstrap.json's job_token). Separate
   * from the ready token, so the phone-home cannot use it up.
   */
  issueJobToken(vmid: number): string {
    return this.#tokens.issue(vmid, "job").token;
  }

  /** Use the job token up; false when it is not a valid, unused, unexpired job token for `vmid`. */
  consumeJobToken(vmid: number, token: string): boolean {
    return this.#tokens.consume(vmid, token, "job");
  }

  /** Whether `token` is `vmid`'s unspent job token (not spent by asking). */
  jobTokenValid(vmid: number, token: string): boolean {
    return this.#tokens.valid(vmid, token, "job");
  }

  /** Forget an unused job token (the sandbox failed or was destroyed before its runner asked). */
  revokeJobToken(vmid: number): void {
    this.#tokens.revoke(vmid, "job");
  }

  /** Whether a token was issued for `vmid` and is still waited on. */
  isWaiting(vmid: number): boolean {
    return this.#entries.has(vmid);
  }

  /**
   * Resolves when the guest of `vmid` has reported with the token `issue` gave out (at once if it already
   * did). Rejects when `signal` aborts or `cancel(vmid)` is called. Never times out by itself: the caller
   * bounds it (provisioning_timeout).
   */
  wait(vmid: number, signal: AbortSignal): Promise<GuestReadyReport> {
    const entry = this.#entries.get(vmid);
    if (entry === undefined) {
      return Promise.reject(
        new AgentlabError("INTERNAL", `no bootstrap token was issued for VM ${vmid}; call issue() first`),
      );
    }
    if (entry.report) return Promise.resolve(entry.report);
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise<GuestReadyReport>((resolve, reject) => {
      const waiter = {
        resolve: (report: GuestReadyReport) => {
          signal.removeEventListener("abort", onAbort);
          resolve(report);
        },
        reject: (error: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      const onAbort = () => {
        entry.waiters.delete(waiter);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      entry.waiters.add(waiter);
    });
  }

  /**
   * Stop waiting for `vmid`: pending waits reject and its unused token is revoked, so a late report is
   * refused. Called once provisioning has its answer (from either path) or failed.
   */
  cancel(vmid: number): void {
    this.#rejectWaiters(vmid, "waiting for the guest was cancelled");
    this.#entries.delete(vmid);
    try {
      this.#tokens.revoke(vmid);
    } catch (error) {
      // Called from cleanup paths: a database error here must not hide the failure being cleaned up.
      // The token still expires within its TTL.
      this.#log.warn({ vmid, err: error }, "could not revoke the bootstrap token");
    }
  }

  /**
   * A guest's report, already checked for shape and origin by the listener. Uses the token up; false when
   * it is not a valid, unused, unexpired token for `vmid`.
   */
  report(vmid: number, token: string, ip: string, hostKeys?: string[]): boolean {
    if (!this.#tokens.consume(vmid, token)) return false;
    const report: GuestReadyReport = {
      vmid,
      ip,
      via: "phone-home",
      at: this.#clock.now(),
      ...(hostKeys !== undefined && hostKeys.length > 0 ? { hostKeys } : {}),
    };
    const entry = this.#entries.get(vmid);
    if (entry === undefined || entry.tokenHash !== hashBootstrapToken(token)) {
      // The token was valid but nothing waits: the daemon restarted since it issued it.
      this.#log.info({ vmid, ip }, "guest reported ready, but no provisioning waits for it");
      return true;
    }
    entry.report = report;
    for (const waiter of entry.waiters) waiter.resolve(report);
    entry.waiters.clear();
    // At debug: the create it wakes logs "sandbox N is running at IP" at info right after.
    this.#log.debug({ vmid, ip }, "guest reported ready");
    return true;
  }

  #rejectWaiters(vmid: number, why: string): void {
    const entry = this.#entries.get(vmid);
    if (!entry) return;
    const error = new AgentlabError("CANCELLED", `VM ${vmid}: ${why}`, { details: { vmid } });
    for (const waiter of entry.waiters) waiter.reject(error);
    entry.waiters.clear();
  }

  /** Entries whose token expired and that nobody waits on: provisioning ended without cancel(). */
  #prune(): void {
    const now = this.#clock.now().getTime();
    for (const [vmid, entry] of this.#entries) {
      if (entry.expiresAt <= now && entry.waiters.size === 0) this.#entries.delete(vmid);
    }
  }
}

/**
 * The guest's address, and when the guest is ready. With a phone-home awaited (a token was issued for
 * it), READY is the guest's own report: it comes at the end of cloud-init's runcmd, after the `agent`
 * user, its key and the snippet's files exist. The guest agent answers much earlier (as soon as DHCP is
 * done, while cloud-init still runs: measured on real guests), so its address alone would hand out a
 * sandbox nobody can log in to yet. When the agent answers first, the report is awaited `graceMs` more;
 * if it does not come (the guest cannot reach the listener, or its cloud-init failed), the agent's
 * address is used and `phoneHomeMissed` says so. Without a phone-home, the agent's answer is the end.
 * An error of the agent poll ends the wait (it is also how the provisioning deadline arrives); the
 * phone-home path only ever ends it with an address. The loser is aborted and the token revoked.
 *
 * With a phone-home awaited and a grace period, the agent is first asked only after
 * min(graceMs, AGENT_FALLBACK_AFTER_MS): its early answer could not make the sandbox READY anyway (the
 * report is awaited after it), and a guest that phones home in that time costs no agent call at all. A
 * silent guest is then READY by the agent at most that much later than before.
 */
export const AGENT_FALLBACK_AFTER_MS = 10_000;

export async function firstGuestAddress(
  readiness: GuestReadiness | undefined,
  vmid: number,
  signal: AbortSignal,
  agentPoll: (signal: AbortSignal) => Promise<string>,
  options: { graceMs?: number } = {},
): Promise<GuestAddress> {
  const race = new AbortController();
  const onAbort = () => race.abort(signal.reason);
  if (signal.aborted) onAbort();
  else signal.addEventListener("abort", onAbort, { once: true });
  const phoneHome = readiness?.isWaiting(vmid) === true;
  const aborted = new Promise<never>((_, reject) => {
    if (race.signal.aborted) reject(race.signal.reason);
    else race.signal.addEventListener("abort", () => reject(race.signal.reason), { once: true });
  });
  aborted.catch(() => {});
  try {
    const graceMs = options.graceMs ?? 0;
    const agentAfterMs = phoneHome ? Math.min(graceMs, AGENT_FALLBACK_AFTER_MS) : 0;
    const agent = (agentAfterMs > 0 ? abortableSleep(agentAfterMs, race.signal) : Promise.resolve())
      .then(() => agentPoll(race.signal))
      .then((ip) => ({ ip, via: "guest-agent" as const }));
    if (!readiness || !phoneHome) return await Promise.race([agent, aborted]);
    const report = readiness.wait(vmid, race.signal).then(
      (r) => ({ ip: r.ip, via: "phone-home" as const, ...(r.hostKeys ? { hostKeys: r.hostKeys } : {}) }),
      // Only an abort rejects it, and the abort contender already reports that.
      () => new Promise<never>(() => {}),
    );
    const first = await Promise.race([agent, report, aborted]);
    if (first.via === "phone-home" || graceMs <= 0) return first;
    const graceOver = new Promise<GuestAddress>((resolve) => {
      const timer = setTimeout(() => resolve({ ...first, phoneHomeMissed: true }), graceMs);
      race.signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
    });
    return await Promise.race([report, graceOver, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
    if (!race.signal.aborted) race.abort(new Error("the guest's address is known"));
    if (phoneHome) readiness?.cancel(vmid);
  }
}
