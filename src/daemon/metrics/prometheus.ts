/**
 * The daemon's metrics over prom-client, in a Registry of their own (never prom-client's global one, so
 * two daemons in one test process, or a library that registers its own, cannot collide). Counters and
 * histograms are moved by the DaemonMetrics calls; gauges of what the database holds (sandboxes by
 * state, active jobs, its size) are read from the store at scrape time, so they cannot drift from it.
 * docs/metrics.md lists every metric; test/unit/metrics.test.ts holds the names to that list.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Profile } from "../../config/profiles.js";
import { DRIFT_CODES } from "../../protocol/maintenance.js";
import type { Clock } from "../clock.js";
import type { Store } from "../store/db.js";
import { SANDBOX_STATES } from "../store/sandboxes.js";
import type { DaemonMetrics } from "./observer.js";

/** What the scrape-time gauges read. */
export interface MetricsSource {
  store: Store;
  profiles: readonly Profile[];
  clock: Clock;
  version: string;
}

/** Sandbox states whose count is shown per profile, even at zero: DESTROYED rows are history, not load. */
const LIVE_STATES = SANDBOX_STATES.filter((state) => state !== "DESTROYED");
const ACTIVE_JOB_STATUSES = ["QUEUED", "RUNNING"] as const;

/** Boot times: a linked clone with a cloud-init boot is 10-60 s; a full clone or a slow host minutes. */
const CREATE_BUCKETS = [1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600];
/** One API call: a status read is milliseconds, a pvesh run a fraction of a second, a clone minutes. */
const CALL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TASK_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600];
/** Jobs run an agent: minutes to hours. */
const JOB_BUCKETS = [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400];
const OPERATION_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300];

const NONCONFORMING_DEFAULTS = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

export class PrometheusMetrics implements DaemonMetrics {
  readonly registry = new Registry();
  readonly #creates: Counter<"profile" | "outcome">;
  readonly #createReady: Histogram<"profile">;
  readonly #destroys: Counter<"outcome">;
  readonly #proxmoxCalls: Histogram<"method" | "outcome">;
  readonly #proxmoxTasks: Histogram<"type" | "outcome">;
  readonly #rpc: Histogram<"method" | "outcome">;
  readonly #guest: Counter<"route" | "status">;
  readonly #jobs: Histogram<"outcome">;
  readonly #workspaceOps: Histogram<"operation" | "outcome">;
  readonly #reconcilePasses: Counter<"outcome">;
  readonly #driftFound: Counter<"code">;
  readonly #drift: Gauge<"code">;

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Gauges named like counters, which promtool's lint refuses; the per-type gauges without the suffix
    // (nodejs_active_handles{type}, ...) carry the same numbers.
    for (const name of NONCONFORMING_DEFAULTS) this.registry.removeSingleMetric(name);
    new Gauge({
      name: "agentlab_build_info",
      help: "Always 1; the version label names the running agentlabd.",
      labelNames: ["version"],
      registers,
      collect() {
        this.reset();
        this.set({ version: source.version }, 1);
      },
    });
    new Gauge({
      name: "agentlab_sandboxes",
      help: "Sandboxes in the database by state and profile (DESTROYED rows not counted).",
      labelNames: ["state", "profile"],
      registers,
      collect() {
        this.reset();
        // Every configured profile shows every live state, at zero too: an alert on a count needs the
        // series to exist before the first sandbox does.
        for (const profile of source.profiles) {
          for (const state of LIVE_STATES) this.set({ state, profile: profile.name }, 0);
        }
        for (const { state, profile, n } of source.store.sandboxes.countByStateAndProfile()) {
          if (state !== "DESTROYED") this.set({ state, profile }, n);
        }
      },
    });
    new Gauge({
      name: "agentlab_jobs",
      help: "Jobs not yet ended, by status.",
      labelNames: ["status"],
      registers,
      collect() {
        this.reset();
        for (const status of ACTIVE_JOB_STATUSES)
          this.set({ status }, source.store.jobs.listByStatus(status).length);
      },
    });
    new Gauge({
      name: "agentlab_job_oldest_active_seconds",
      help: "Age of the oldest job in a status that has not ended (since it was queued); 0 when there is none.",
      labelNames: ["status"],
      registers,
      collect() {
        this.reset();
        const now = source.clock.now().getTime();
        for (const status of ACTIVE_JOB_STATUSES) {
          const oldest = Math.min(
            now,
            ...source.store.jobs.listByStatus(status).map((job) => job.created_at.getTime()),
          );
          this.set({ status }, Math.max(0, (now - oldest) / 1000));
        }
      },
    });
    new Gauge({
      name: "agentlab_db_size_bytes",
      help: "Size of the SQLite database file plus its write-ahead log.",
      registers,
      collect() {
        this.set(source.store.sizeBytes());
      },
    });
    this.#creates = new Counter({
      name: "agentlab_sandbox_creates_total",
      help: "Sandbox creations by profile and outcome (success, or the error code it failed with).",
      labelNames: ["profile", "outcome"],
      registers,
    });
    this.#createReady = new Histogram({
      name: "agentlab_sandbox_create_ready_seconds",
      help: "Time from a create request to the sandbox READY, for creations that succeeded.",
      labelNames: ["profile"],
      buckets: CREATE_BUCKETS,
      registers,
    });
    this.#destroys = new Counter({
      name: "agentlab_sandbox_destroys_total",
      help: "Sandbox destructions (sandbox destroy, a finished job's sandbox) by outcome.",
      labelNames: ["outcome"],
      registers,
    });
    this.#proxmoxCalls = new Histogram({
      name: "agentlab_proxmox_call_duration_seconds",
      help: "Proxmox API calls (pvesh runs or HTTPS requests) by method and path template, and outcome.",
      labelNames: ["method", "outcome"],
      buckets: CALL_BUCKETS,
      registers,
    });
    this.#proxmoxTasks = new Histogram({
      name: "agentlab_proxmox_task_duration_seconds",
      help: "Proxmox worker tasks by type (qmclone, qmstart, ...) from the call that started them to their end.",
      labelNames: ["type", "outcome"],
      buckets: TASK_BUCKETS,
      registers,
    });
    this.#rpc = new Histogram({
      name: "agentlab_rpc_duration_seconds",
      help: "JSON-RPC calls (CLI, control listener) by method and outcome.",
      labelNames: ["method", "outcome"],
      buckets: OPERATION_BUCKETS,
      registers,
    });
    this.#guest = new Counter({
      name: "agentlab_guest_requests_total",
      help: "Requests guests made to the guest listener, by route and HTTP status.",
      labelNames: ["route", "status"],
      registers,
    });
    this.#jobs = new Histogram({
      name: "agentlab_job_duration_seconds",
      help: "Jobs that ended, by outcome (COMPLETED, FAILED, TIMEOUT, cancelled), from queued to ended.",
      labelNames: ["outcome"],
      buckets: JOB_BUCKETS,
      registers,
    });
    this.#workspaceOps = new Histogram({
      name: "agentlab_workspace_operation_duration_seconds",
      help: "Workspace operations (create, attach, detach, snapshot, fork, ...) by outcome.",
      labelNames: ["operation", "outcome"],
      buckets: OPERATION_BUCKETS,
      registers,
    });
    this.#reconcilePasses = new Counter({
      name: "agentlab_reconcile_passes_total",
      help: "Reconciler passes (background and sandbox reconcile) by outcome.",
      labelNames: ["outcome"],
      registers,
    });
    this.#driftFound = new Counter({
      name: "agentlab_reconcile_drift_found_total",
      help: "Drift findings, summed over reconciler passes, by code (one finding seen by two passes counts twice).",
      labelNames: ["code"],
      registers,
    });
    this.#drift = new Gauge({
      name: "agentlab_reconcile_drift",
      help: "Drift findings of the last reconciler pass, by code.",
      labelNames: ["code"],
      registers,
    });
    for (const code of DRIFT_CODES) {
      this.#drift.set({ code }, 0);
      this.#driftFound.inc({ code }, 0);
    }
    this.#reconcilePasses.inc({ outcome: "success" }, 0);
    for (const profile of source.profiles)
      this.#creates.inc({ profile: profile.name, outcome: "success" }, 0);
  }

  proxmoxCall(method: string, outcome: string, seconds: number): void {
    this.#proxmoxCalls.observe({ method, outcome }, seconds);
  }

  proxmoxTask(type: string, outcome: string, seconds: number): void {
    this.#proxmoxTasks.observe({ type, outcome }, seconds);
  }

  rpcCall(method: string, outcome: string, seconds: number): void {
    this.#rpc.observe({ method, outcome }, seconds);
  }

  guestRequest(route: string, status: number): void {
    this.#guest.inc({ route, status: String(status) });
  }

  sandboxCreate(profile: string, outcome: string, seconds: number): void {
    this.#creates.inc({ profile, outcome });
    if (outcome === "success") this.#createReady.observe({ profile }, seconds);
  }

  sandboxDestroy(outcome: string): void {
    this.#destroys.inc({ outcome });
  }

  jobEnded(outcome: string, seconds: number): void {
    this.#jobs.observe({ outcome }, seconds);
  }

  workspaceOperation(operation: string, outcome: string, seconds: number): void {
    this.#workspaceOps.observe({ operation, outcome }, seconds);
  }

  reconcilePass(outcome: string, findings?: readonly string[]): void {
    this.#reconcilePasses.inc({ outcome });
    if (!findings) return;
    const counts = new Map<string, number>(DRIFT_CODES.map((code) => [code, 0]));
    for (const code of findings) counts.set(code, (counts.get(code) ?? 0) + 1);
    for (const [code, n] of counts) {
      this.#drift.set({ code }, n);
      if (n > 0) this.#driftFound.inc({ code }, n);
    }
  }

  /** The exposition text and its content type, for the listener. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
