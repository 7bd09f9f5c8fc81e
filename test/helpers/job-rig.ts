/**
 * What the jobs unit tests share: a real SQLite store in a temp directory, guest readiness over it (the
 * real bootstrap tokens), a DaemonContext with an injected clock, and rows for a job bound to a sandbox.
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { parseConfig } from "../../src/config/config.js";
import type { DaemonContext } from "../../src/daemon/context.js";
import { GuestReadiness } from "../../src/daemon/guest/ready-waiters.js";
import { BootstrapTokens } from "../../src/daemon/guest/tokens.js";
import type { ReportEffects } from "../../src/daemon/services/jobs/runner-api.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import type { Job, NewJob } from "../../src/daemon/store/jobs.js";

export const JOB_ID = "job_0123456789abcdef";
export const START = Date.parse("2026-03-01T10:00:00.000Z");

export interface JobRig {
  dir: string;
  file: string;
  store: Store;
  /** Epoch ms every timestamp (store, tokens, reports) is taken from; tests move it. */
  clock: { t: number };
  readiness: GuestReadiness;
  ctx: DaemonContext;
  close(): void;
}

/** A store on a real file and the pieces of a daemon context the job endpoints use. */
export function jobRig(options: { controllerUrl?: string } = {}): JobRig {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-job-"));
  const file = path.join(dir, "agentlab.db");
  const clock = { t: START };
  const now = () => new Date(clock.t);
  const store = openStore(file, { now });
  const log = pino({ level: "silent" });
  const readiness = new GuestReadiness({
    tokens: new BootstrapTokens(createBootstrapTokenRepo(store), { now }),
    clock: { now },
    controllerUrl: options.controllerUrl ?? "http://10.77.0.1:8844",
    listenAddress: "10.77.0.1:8844",
    log,
  });
  const configPath = path.join(dir, "config.yaml");
  const ctx = {
    config: parseConfig("", configPath).config,
    configPath,
    profiles: [],
    store,
    // The job endpoints never talk to Proxmox.
    backend: undefined as never,
    guestReady: readiness,
    log,
    clock: { now },
    startedAt: now(),
    version: "test",
  } as DaemonContext;
  return {
    dir,
    file,
    store,
    clock,
    readiness,
    ctx,
    close() {
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A QUEUED job as `job run` records it, bound to sandbox `vmid` (whose row is created if missing). */
export function insertJob(store: Store, vmid: number | null, fields: Partial<NewJob> = {}): Job {
  if (vmid !== null && store.sandboxes.get(vmid) === undefined) {
    store.sandboxes.insert({ vmid, name: `job-${vmid}`, profile: "yolo-ephemeral", state: "RUNNING" });
  }
  return store.jobs.insert({
    id: JOB_ID,
    repo_url: "git://10.77.0.1:9418/smoke.git",
    ref: "main",
    profile: "yolo-ephemeral",
    status: "QUEUED",
    task: "write result.txt",
    mode: "dangerous",
    ttl_minutes: 60,
    keepalive: false,
    sandbox_vmid: vmid,
    ...fields,
  });
}

/** ReportEffects that remember the jobs they were called with. */
export function recordingEffects(): { effects: ReportEffects; started: Job[]; ended: Job[] } {
  const started: Job[] = [];
  const ended: Job[] = [];
  return {
    effects: { started: (job) => void started.push(job), ended: (job) => void ended.push(job) },
    started,
    ended,
  };
}
