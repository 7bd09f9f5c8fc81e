/**
 * `agentlab maintenance run [--dry-run]`: what keeps a host clean for months (issue 14). The background
 * passes (maintenance.ts) keep the database and Proxmox in agreement; this removes what is no longer
 * needed: orphaned and never-created FAILED sandboxes (sandbox prune), expired bootstrap tokens and the
 * credentials of ended jobs, leftover cloud-init snippets, artifacts past artifact_retention_days, events
 * past event_retention_days (never those of live entities), and the free pages that leaves in the file.
 *
 * Every step runs even when one before failed, and says what it could not do; a dry run counts instead
 * of removing. A real run is recorded as a `maintenance.run` event, which `agentlab status` shows.
 */
import { lstatSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { HousekeepingResult, HousekeepingStep } from "../../protocol/maintenance.js";
import type { DaemonContext } from "../context.js";
import { removeSnippet } from "../guest/cloud-init.js";
import { createBootstrapTokenRepo } from "../store/bootstrap-tokens.js";
import { createHousekeeping, type Housekeeping, MAINTENANCE_EVENT } from "../store/housekeeping.js";
import { createJobSecretRepo } from "../store/job-secrets.js";
import { ACTIVE_JOB_STATUSES } from "../store/jobs.js";
import { describe } from "./maintenance-steps.js";
import type { Operation } from "./operation.js";
import { pruneCandidates } from "./sandbox/destroy.js";
import type { SandboxService } from "./sandboxes.js";

const DAY_MS = 24 * 60 * 60 * 1000;
/** A snippet file no row names is left alone this long: a provisioning may have just written it. */
export const SNIPPET_ORPHAN_GRACE_MS = 60 * 60 * 1000;
/** Snippet files this daemon writes (guest/cloud-init.ts writeSnippet). */
const SNIPPET_FILE = /^agentlab-\d+-[0-9a-f]{16}\.yaml$/;
/** Compact when at least this much of the file is free pages... */
export const VACUUM_MIN_FREE_BYTES = 1024 * 1024;
/** ...and at least this share of it. */
export const VACUUM_MIN_FREE_RATIO = 0.1;

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Bytes under `path` (files only; symlinks are counted, not followed). */
function diskUse(path: string): number {
  const stat = lstatSync(path);
  if (!stat.isDirectory()) return stat.size;
  let total = 0;
  for (const entry of readdirSync(path)) total += diskUse(join(path, entry));
  return total;
}

/** Bytes under `dir`, 0 when it does not exist. For `agentlab status`. */
export function directoryBytes(dir: string): number {
  try {
    return diskUse(dir);
  } catch {
    return 0;
  }
}

function step(name: HousekeepingStep["step"]): HousekeepingStep {
  return { step: name, count: 0, freed_bytes: 0, summary: "", items: [], errors: [] };
}

export class HousekeepingService {
  #statements: Housekeeping | undefined;

  constructor(
    private readonly ctx: DaemonContext,
    private readonly sandboxes: SandboxService,
  ) {}

  /** Prepared on first use: registering the handlers must not touch the database. */
  get #sql(): Housekeeping {
    this.#statements ??= createHousekeeping(this.ctx.store);
    return this.#statements;
  }

  /** When the last real run happened, for `agentlab status`. */
  lastRun(): { at: Date; summary: unknown } | undefined {
    return this.#sql.lastRun();
  }

  async run(dryRun: boolean, op: Operation): Promise<HousekeepingResult> {
    const startedAt = this.ctx.clock.now();
    const steps: HousekeepingStep[] = [];
    const guarded = async (name: HousekeepingStep["step"], fn: (s: HousekeepingStep) => unknown) => {
      const s = step(name);
      try {
        await fn(s);
      } catch (error) {
        s.errors.push(describe(error));
        if (s.summary === "") s.summary = "could not run";
      }
      steps.push(s);
    };
    await guarded("prune", (s) => this.#prune(s, dryRun, op));
    await guarded("tokens", (s) => this.#tokens(s, dryRun));
    await guarded("snippets", (s) => this.#snippets(s, dryRun));
    await guarded("artifacts", (s) => this.#artifacts(s, dryRun));
    await guarded("events", (s) => this.#events(s, dryRun));
    await guarded("vacuum", (s) => this.#vacuum(s, dryRun));
    const result: HousekeepingResult = {
      dry_run: dryRun,
      started_at: startedAt.toISOString(),
      steps,
      freed_bytes: steps.reduce((sum, s) => sum + s.freed_bytes, 0),
      ok: steps.every((s) => s.errors.length === 0),
    };
    if (!dryRun) {
      this.ctx.store.events.append({
        kind: MAINTENANCE_EVENT,
        msg: `maintenance run: freed ${result.freed_bytes} bytes${result.ok ? "" : ", with errors"}`,
        payload: {
          ok: result.ok,
          freed_bytes: result.freed_bytes,
          counts: Object.fromEntries(steps.map((s) => [s.step, s.count])),
          errors: steps.flatMap((s) => s.errors.map((e) => `${s.step}: ${e}`)),
        },
      });
    }
    op.log.info({ ...result, steps: undefined }, `maintenance run${dryRun ? " (dry run)" : ""} finished`);
    return result;
  }

  async #prune(s: HousekeepingStep, dryRun: boolean, op: Operation): Promise<void> {
    if (dryRun) {
      const present = new Set((await this.ctx.backend.listVms()).map((vm) => vm.vmid));
      const candidates = pruneCandidates(this.ctx, present);
      s.count = candidates.length;
      s.items = candidates.map(({ row, why }) => `${row.vmid}: ${why}`);
      s.summary = `would remove ${plural(s.count, "sandbox", "sandboxes")}`;
      return;
    }
    const result = await this.sandboxes.prune(op);
    s.count = result.count;
    s.items = result.vmids.map(String);
    s.errors = result.failed.map(
      (f) =>
        `could not remove sandbox ${f.vmid} (${f.state}): ${f.message}${f.hint ? ` (hint: ${f.hint})` : ""}`,
    );
    s.summary = `removed ${plural(s.count, "sandbox", "sandboxes")}`;
  }

  #tokens(s: HousekeepingStep, dryRun: boolean): void {
    const now = this.ctx.clock.now();
    const tokens = createBootstrapTokenRepo(this.ctx.store);
    const secrets = createJobSecretRepo(this.ctx.store);
    const expired = dryRun ? tokens.countExpired(now) : tokens.deleteExpired(now);
    const credentials = dryRun ? secrets.countForEndedJobs() : secrets.deleteForEndedJobs();
    s.count = expired + credentials;
    s.summary = `${dryRun ? "would delete" : "deleted"} ${plural(expired, "expired bootstrap token")} and the repository credentials of ${plural(credentials, "ended job")}`;
  }

  #snippets(s: HousekeepingStep, dryRun: boolean): void {
    const { ctx } = this;
    const rows = ctx.store.sandboxes.list({ includeDestroyed: true });
    // Rows that are done with their snippet (the VM is gone or never booted from it again).
    for (const row of rows) {
      if (!row.snippet_path || (row.state !== "DESTROYED" && row.state !== "FAILED")) continue;
      s.freed_bytes += fileSize(row.snippet_path);
      s.items.push(row.snippet_path);
      if (dryRun) continue;
      try {
        removeSnippet(row.snippet_path);
        ctx.store.sandboxes.update(row.vmid, { snippet_path: null });
      } catch (error) {
        s.errors.push(
          `could not delete snippet ${row.snippet_path} of sandbox ${row.vmid}: ${describe(error)}`,
        );
      }
    }
    // Files no row names (a crash between writing the file and recording it).
    const named = new Set(rows.map((row) => row.snippet_path).filter((p) => p !== null));
    const dir = ctx.config.snippets_dir;
    let files: string[] = [];
    try {
      files = readdirSync(dir).filter((f) => SNIPPET_FILE.test(f));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
        s.errors.push(`cannot read the snippets directory ${dir}: ${describe(error)}`);
      }
    }
    const now = ctx.clock.now().getTime();
    for (const file of files) {
      const path = join(dir, file);
      if (named.has(path)) continue;
      try {
        const stat = statSync(path);
        if (now - stat.mtimeMs < SNIPPET_ORPHAN_GRACE_MS) continue;
        s.freed_bytes += stat.size;
        s.items.push(path);
        if (!dryRun) rmSync(path, { force: true });
      } catch (error) {
        s.errors.push(`could not delete leftover snippet ${path}: ${describe(error)}`);
      }
    }
    s.count = s.items.length - s.errors.length;
    s.summary = `${dryRun ? "would delete" : "deleted"} ${plural(s.count, "leftover snippet")}`;
  }

  /**
   * `<artifact_dir>/<job>/` of jobs that ended more than artifact_retention_days ago and whose sandbox
   * is gone (a kept-alive sandbox may still be looked at with its artifacts); a directory of a job the
   * database does not know goes by its own age.
   */
  #artifacts(s: HousekeepingStep, dryRun: boolean): void {
    const { ctx } = this;
    const days = ctx.config.artifact_retention_days;
    if (days === 0) {
      s.summary = "artifact_retention_days is 0: artifacts are kept";
      return;
    }
    const cutoff = ctx.clock.now().getTime() - days * DAY_MS;
    const dir = ctx.config.artifact_dir;
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      entries = [];
    }
    for (const name of entries) {
      const path = join(dir, name);
      try {
        const stat = lstatSync(path);
        if (!stat.isDirectory()) continue;
        const job = ctx.store.jobs.get(name);
        if (job) {
          if (ACTIVE_JOB_STATUSES.includes(job.status) || job.updated_at.getTime() > cutoff) continue;
          const sandbox = job.sandbox_vmid === null ? undefined : ctx.store.sandboxes.get(job.sandbox_vmid);
          if (sandbox && sandbox.state !== "DESTROYED") continue;
        } else if (stat.mtimeMs > cutoff) continue;
        const bytes = diskUse(path);
        if (!dryRun) {
          rmSync(path, { recursive: true, force: true });
          // `job artifacts` must not list files that are gone.
          if (job) ctx.store.jobArtifacts.deleteForJob(job.id);
        }
        s.freed_bytes += bytes;
        s.items.push(name);
      } catch (error) {
        s.errors.push(`could not delete the artifacts in ${path}: ${describe(error)}`);
      }
    }
    s.count = s.items.length;
    s.summary = `${dryRun ? "would delete" : "deleted"} the artifacts of ${plural(s.count, "job")} that ended over ${plural(days, "day")} ago`;
  }

  #events(s: HousekeepingStep, dryRun: boolean): void {
    const days = this.ctx.config.event_retention_days;
    if (days === 0) {
      s.summary = "event_retention_days is 0: events are kept";
      return;
    }
    const cutoff = new Date(this.ctx.clock.now().getTime() - days * DAY_MS);
    s.count = dryRun ? this.#sql.countTrimmableEvents(cutoff) : this.#sql.trimEvents(cutoff);
    s.summary = `${dryRun ? "would delete" : "deleted"} ${plural(s.count, "event")} older than ${plural(days, "day")} (those of live sandboxes, jobs and workspaces are kept)`;
  }

  /** Compact only when the free pages are worth it: at least 1 MiB and 10% of the file. */
  #vacuum(s: HousekeepingStep, dryRun: boolean): void {
    const space = this.#sql.space();
    const free = space.freelist_count * space.page_size;
    const total = space.page_count * space.page_size;
    if (free < VACUUM_MIN_FREE_BYTES || free < VACUUM_MIN_FREE_RATIO * total) {
      s.summary = dryRun
        ? `not needed now: ${free} of ${total} bytes free in the database (a run compacts what its own deletions free, when worth it)`
        : `not needed: ${free} of ${total} bytes free in the database`;
      return;
    }
    if (dryRun) {
      s.freed_bytes = free;
      s.summary = `would compact the database (${free} bytes free)`;
      return;
    }
    const before = this.ctx.store.sizeBytes();
    const how = this.#sql.compact();
    s.freed_bytes = Math.max(0, before - this.ctx.store.sizeBytes());
    s.count = 1;
    s.summary = `compacted the database (${how === "full" ? "one full VACUUM to switch to incremental vacuum" : "incremental vacuum"})`;
  }
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}
