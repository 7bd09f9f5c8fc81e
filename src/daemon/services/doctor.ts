/**
 * Doctor bundles (upstream §6): everything worth attaching to a bug report about one sandbox, job or
 * session, read from the store and the live backend. Read-only: it takes no lock and changes nothing.
 * A related piece that cannot be read is recorded in meta.json's errors, so a half-broken system still
 * yields a bundle: that is when one is needed most.
 */
import type { DoctorBundle, DoctorFile, DoctorKind } from "../../protocol/doctor.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonContext } from "../context.js";
import { redact } from "../redact.js";
import type { Job } from "../store/jobs.js";
import type { Sandbox } from "../store/sandboxes.js";
import type { Session } from "../store/sessions.js";
import { artifactJson } from "./jobs/artifacts.js";
import { jobJson } from "./jobs/json.js";
import { describe, vmRefOf } from "./maintenance-steps.js";
import { getSandbox } from "./sandbox/guards.js";
import { eventJson, sandboxJson } from "./sandbox/json.js";
import type { SessionService } from "./sessions/service.js";
import { workspaceJson } from "./workspaces/core.js";

/** How many of the most recent events each events/*.json holds. */
export const DOCTOR_EVENTS_TAIL = 200;

// The redactor lives in ../redact.ts (agent output, job output and the daemon log use it too); these
// names stay importable from here for callers that found it beside the bundles.
export { REDACTED, redact } from "../redact.js";

interface SectionError {
  section: string;
  error: string;
}

/** The bundle under construction: files by path, related ids, and the sections that failed. */
class Bundle {
  readonly files = new Map<string, unknown>();
  readonly related: { sandbox_vmid?: number; job_id?: string; session_id?: string; workspace_id?: string } =
    {};
  readonly errors: SectionError[] = [];

  constructor(
    readonly kind: DoctorKind,
    readonly id: string,
  ) {}

  /** Run one section; its failure is recorded instead of failing the bundle. */
  section<T>(name: string, fn: () => T): T | undefined {
    try {
      return fn();
    } catch (error) {
      this.errors.push({ section: name, error: describe(error) });
      return undefined;
    }
  }

  result(): DoctorBundle {
    const meta: Record<string, unknown> = { version: 1, kind: this.kind, id: this.id, related: this.related };
    if (this.errors.length > 0) meta.errors = this.errors;
    this.files.set("meta.json", meta);
    const files: DoctorFile[] = [...this.files.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([path, data]) => ({ path, content: `${JSON.stringify(redact(data), null, 2)}\n` }));
    return { kind: this.kind, id: this.id, files };
  }
}

function sortedKeys(config: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(
    Object.keys(config)
      .sort()
      .map((k) => [k, config[k]]),
  );
}

export class DoctorService {
  constructor(
    private readonly ctx: DaemonContext,
    private readonly sessions: SessionService,
  ) {}

  async sandbox(vmid: number): Promise<DoctorBundle> {
    const row = getSandbox(this.ctx, vmid);
    const bundle = new Bundle("sandbox", String(vmid));
    this.#addSandbox(bundle, row);
    const job = bundle.section("job", () => this.ctx.store.jobs.latestForSandbox(vmid));
    if (job) this.#addJob(bundle, job);
    const sessionId = job?.session_id ?? this.ctx.store.sessions.byCurrentVmid(vmid)?.id;
    if (sessionId) this.#addSession(bundle, sessionId);
    this.#addWorkspace(bundle, row.workspace_id ?? job?.workspace_id ?? null);
    await this.#addProxmox(bundle, row);
    return bundle.result();
  }

  async job(id: string): Promise<DoctorBundle> {
    const job = this.ctx.store.jobs.get(id);
    if (!job) throw new AgentlabError("JOB_NOT_FOUND", "job not found", { details: { job_id: id } });
    const bundle = new Bundle("job", job.id);
    this.#addJob(bundle, job);
    let row: Sandbox | undefined;
    if (job.sandbox_vmid !== null) {
      const vmid = job.sandbox_vmid;
      row = bundle.section(
        "sandbox",
        () => this.ctx.store.sandboxes.get(vmid) ?? throwMissing("sandbox", vmid),
      );
      if (row) this.#addSandbox(bundle, row);
    }
    let session: Session | undefined;
    if (job.session_id) session = this.#addSession(bundle, job.session_id);
    this.#addWorkspace(bundle, job.workspace_id ?? row?.workspace_id ?? session?.workspace_id ?? null);
    if (row) await this.#addProxmox(bundle, row);
    else if (job.sandbox_vmid === null) noProxmox(bundle, "sandbox_vmid is not set");
    else noProxmox(bundle, `sandbox ${job.sandbox_vmid} not found`, job.sandbox_vmid);
    return bundle.result();
  }

  async session(ref: string): Promise<DoctorBundle> {
    const session = this.ctx.store.sessions.require(ref);
    const bundle = new Bundle("session", session.id);
    // session.show decides which sandbox is current (one that is not DESTROYED).
    this.#addSession(bundle, session.id);
    this.#addWorkspace(bundle, session.workspace_id);
    const vmid = bundle.section("sandbox", () => this.sessions.show(session.id).sandbox?.vmid);
    const row = vmid !== undefined ? this.ctx.store.sandboxes.get(vmid) : undefined;
    if (row) {
      this.#addSandbox(bundle, row);
      const job = bundle.section("job", () => this.ctx.store.jobs.latestForSandbox(row.vmid));
      if (job) this.#addJob(bundle, job);
      await this.#addProxmox(bundle, row);
    } else {
      noProxmox(bundle, "session has no current sandbox");
    }
    return bundle.result();
  }

  #addSandbox(bundle: Bundle, row: Sandbox): void {
    bundle.related.sandbox_vmid = row.vmid;
    bundle.files.set("records/sandbox.json", sandboxJson(row));
    bundle.section("events.sandbox", () => {
      const events = this.ctx.store.events
        .listForSandbox(row.vmid, { tail: DOCTOR_EVENTS_TAIL })
        .map(eventJson);
      bundle.files.set("events/sandbox.json", { events, last_id: events.at(-1)?.id ?? 0 });
    });
  }

  #addJob(bundle: Bundle, job: Job): void {
    bundle.related.job_id = job.id;
    bundle.files.set("records/job.json", jobJson(job));
    bundle.section("events.job", () => {
      const events = this.ctx.store.events.listForJob(job.id, { tail: DOCTOR_EVENTS_TAIL }).map(eventJson);
      bundle.files.set("events/job.json", { events, last_id: events.at(-1)?.id ?? 0 });
    });
    // The inventory (name, size, SHA-256, when), not the files: they can be large and hold anything.
    bundle.section("artifacts", () => {
      const artifacts = this.ctx.store.jobArtifacts.list(job.id).map(artifactJson);
      bundle.files.set("artifacts/job.json", { job_id: job.id, artifacts });
    });
  }

  #addSession(bundle: Bundle, id: string): Session | undefined {
    return bundle.section("session", () => {
      const row = this.ctx.store.sessions.get(id) ?? throwMissing("session", id);
      bundle.related.session_id = row.id;
      bundle.files.set("records/session.json", this.sessions.show(row.id).session);
      return row;
    });
  }

  #addWorkspace(bundle: Bundle, id: string | null): void {
    if (id === null) return;
    bundle.related.workspace_id = id;
    bundle.section("workspace", () => {
      const row = this.ctx.store.workspaces.get(id) ?? throwMissing("workspace", id);
      bundle.files.set("records/workspace.json", workspaceJson(row));
    });
  }

  /** Live status and config, each on its own: a VM that is gone still shows its recorded side. */
  async #addProxmox(bundle: Bundle, row: Sandbox): Promise<void> {
    const vm = vmRefOf(this.ctx, row);
    const [status, config] = await Promise.allSettled([
      this.ctx.backend.status(vm),
      this.ctx.backend.getConfig(vm),
    ]);
    bundle.files.set("proxmox.json", {
      vmid: row.vmid,
      ...(status.status === "fulfilled"
        ? { status: status.value }
        : { status_error: describe(status.reason) }),
      ...(config.status === "fulfilled"
        ? { config: sortedKeys(config.value) }
        : { config_error: describe(config.reason) }),
    });
  }
}

/** A related id whose record is gone: the section's error in meta.json. */
function throwMissing(what: string, id: string | number): never {
  throw new AgentlabError("NOT_FOUND", `${what} ${id} not found`);
}

function noProxmox(bundle: Bundle, reason: string, vmid?: number): void {
  bundle.files.set("proxmox.json", {
    ...(vmid !== undefined ? { vmid } : {}),
    status_error: reason,
    config_error: reason,
  });
}
