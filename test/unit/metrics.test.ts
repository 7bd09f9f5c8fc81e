import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import type { Profile } from "../../src/config/profiles.js";
import { outcomeOf } from "../../src/daemon/metrics/observer.js";
import { PrometheusMetrics } from "../../src/daemon/metrics/prometheus.js";
import { CallPool, PooledTransport } from "../../src/daemon/proxmox/call-pool.js";
import {
  type ApiPath,
  apiPath,
  PveRequestError,
  type PveTransport,
} from "../../src/daemon/proxmox/transport.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import { AgentlabError } from "../../src/protocol/errors.js";
import { REPO_ROOT } from "../helpers/paths.js";

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

function freshStore(): Store {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-metrics-"));
  tempDirs.push(dir);
  return openStore(path.join(dir, "agentlab.db"));
}

const PROFILES = [{ name: "yolo-ephemeral" }, { name: "interactive-dev" }] as unknown as Profile[];

function metricsOver(store: Store, now = new Date()): PrometheusMetrics {
  return new PrometheusMetrics({ store, profiles: PROFILES, clock: { now: () => now }, version: "9.9.9" });
}

/** The value of one sample line `name{labels} value`, labels in any order; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const got = Object.fromEntries(
      [...(match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    if (
      Object.entries(labels).every(([k, v]) => got[k] === v) &&
      Object.keys(got).length === Object.keys(labels).length
    )
      return Number(match[3]);
  }
  return undefined;
}

describe("Proxmox call names for metrics", () => {
  it("names a call by its path template, never by the VM, node or volume it was for", () => {
    const vm = apiPath`/nodes/${"pve2"}/qemu/${101}`;
    assert.equal(apiPath`${vm}/status/current`.template(), "/nodes/{node}/qemu/{vmid}/status/current");
    assert.equal(
      apiPath`${vm}/snapshot/${"clean"}/rollback`.template(),
      "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
    );
    // A dir-storage volid contains '/', and stays one segment and one placeholder.
    const volume = apiPath`/nodes/${"pve1"}/storage/${"local"}/content/${"local:100/vm-100-disk-0.qcow2"}`;
    assert.equal(volume.template(), "/nodes/{node}/storage/{storage}/content/{volume}");
    assert.equal(
      apiPath`/nodes/${"pve1"}/tasks/${"UPID:pve1:0000A1B2:00C0FFEE:65000000:qmclone:101:root@pam:"}/status`.template(),
      "/nodes/{node}/tasks/{upid}/status",
    );
    assert.equal(apiPath`/cluster/resources`.template(), "/cluster/resources");
    // The raw path is unchanged.
    assert.equal(String(apiPath`${vm}/status/current`), "/nodes/pve2/qemu/101/status/current");
  });

  it("the pool reports each call by template and classified outcome, and passes the raw error on", async () => {
    const failure = new PveRequestError(
      "POST",
      "/nodes/pve1/qemu/101/status/start",
      "VM is locked (clone)",
      500,
    );
    const inner: PveTransport = {
      kind: "api",
      calls: { count: 0 },
      request: async (method: string, p: ApiPath) => {
        if (method === "POST") throw failure;
        return { path: String(p) };
      },
    };
    const seen: Array<[string, string]> = [];
    const pooled = new PooledTransport(inner, new CallPool(), {
      proxmoxCall: (method, outcome) => seen.push([method, outcome]),
    });
    await pooled.request("GET", apiPath`/nodes/${"pve1"}/qemu/${101}/status/current`);
    await assert.rejects(
      pooled.request("POST", apiPath`/nodes/${"pve1"}/qemu/${101}/status/start`),
      (error) => error === failure,
    );
    assert.deepEqual(seen, [
      ["GET /nodes/{node}/qemu/{vmid}/status/current", "success"],
      ["POST /nodes/{node}/qemu/{vmid}/status/start", "PROXMOX_LOCKED"],
    ]);
  });
});

describe("PrometheusMetrics", () => {
  it("outcomes are success or a stable error code", () => {
    assert.equal(outcomeOf(), "success");
    assert.equal(outcomeOf(new AgentlabError("PROFILE_NOT_FOUND", "x")), "PROFILE_NOT_FOUND");
    assert.equal(outcomeOf(new Error("boom")), "INTERNAL");
  });

  it("counts what it is told, and reads sandboxes, jobs and the database size at scrape time", async () => {
    const store = freshStore();
    try {
      const now = new Date();
      const metrics = metricsOver(store, now);
      let text = (await metrics.scrape()).body;
      // Series exist at zero before anything happened, so alerts on them work from the start.
      assert.equal(sample(text, "agentlab_sandboxes", { state: "RUNNING", profile: "yolo-ephemeral" }), 0);
      assert.equal(
        sample(text, "agentlab_sandbox_creates_total", { profile: "yolo-ephemeral", outcome: "success" }),
        0,
      );
      assert.equal(sample(text, "agentlab_reconcile_drift", { code: "missing_in_proxmox" }), 0);
      assert.equal(sample(text, "agentlab_build_info", { version: "9.9.9" }), 1);

      store.sandboxes.insert({ vmid: 101, name: "a", profile: "yolo-ephemeral", state: "RUNNING" });
      store.sandboxes.insert({ vmid: 102, name: "b", profile: "yolo-ephemeral", state: "RUNNING" });
      store.sandboxes.insert({ vmid: 103, name: "c", profile: "interactive-dev", state: "DESTROYED" });
      store.jobs.insert({
        id: "job-1",
        repo_url: "https://example.invalid/r.git",
        ref: "main",
        profile: "yolo-ephemeral",
        status: "RUNNING",
        created_at: new Date(now.getTime() - 90_000),
      });
      metrics.sandboxCreate("yolo-ephemeral", "success", 12.5);
      metrics.sandboxCreate("yolo-ephemeral", "PROVISIONING_FAILED", 3);
      metrics.sandboxDestroy("success");
      metrics.proxmoxCall("GET /nodes/{node}/qemu/{vmid}/status/current", "success", 0.02);
      metrics.proxmoxTask("qmclone", "success", 2.1);
      metrics.rpcCall("sandbox.create", "success", 13);
      metrics.guestRequest("/v1/guest/ready", 200);
      metrics.jobEnded("COMPLETED", 600);
      metrics.workspaceOperation("attach", "WORKSPACE_ATTACHED", 0.1);
      metrics.reconcilePass("success", ["missing_in_proxmox", "missing_in_proxmox", "vm_left_behind"]);

      text = (await metrics.scrape()).body;
      assert.equal(sample(text, "agentlab_sandboxes", { state: "RUNNING", profile: "yolo-ephemeral" }), 2);
      // DESTROYED rows are history: not shown.
      assert.equal(
        sample(text, "agentlab_sandboxes", { state: "DESTROYED", profile: "interactive-dev" }),
        undefined,
      );
      assert.equal(sample(text, "agentlab_jobs", { status: "RUNNING" }), 1);
      assert.equal(sample(text, "agentlab_job_oldest_active_seconds", { status: "RUNNING" }), 90);
      assert.equal(sample(text, "agentlab_job_oldest_active_seconds", { status: "QUEUED" }), 0);
      assert.ok((sample(text, "agentlab_db_size_bytes") ?? 0) > 0);
      assert.equal(
        sample(text, "agentlab_sandbox_creates_total", { profile: "yolo-ephemeral", outcome: "success" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_sandbox_creates_total", {
          profile: "yolo-ephemeral",
          outcome: "PROVISIONING_FAILED",
        }),
        1,
      );
      // Only successful creations have a time to READY.
      assert.equal(
        sample(text, "agentlab_sandbox_create_ready_seconds_count", { profile: "yolo-ephemeral" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_sandbox_create_ready_seconds_bucket", { profile: "yolo-ephemeral", le: "10" }),
        0,
      );
      assert.equal(
        sample(text, "agentlab_sandbox_create_ready_seconds_bucket", { profile: "yolo-ephemeral", le: "15" }),
        1,
      );
      assert.equal(sample(text, "agentlab_sandbox_destroys_total", { outcome: "success" }), 1);
      assert.equal(
        sample(text, "agentlab_proxmox_call_duration_seconds_count", {
          method: "GET /nodes/{node}/qemu/{vmid}/status/current",
          outcome: "success",
        }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_proxmox_task_duration_seconds_count", { type: "qmclone", outcome: "success" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_rpc_duration_seconds_count", { method: "sandbox.create", outcome: "success" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_guest_requests_total", { route: "/v1/guest/ready", status: "200" }),
        1,
      );
      assert.equal(sample(text, "agentlab_job_duration_seconds_count", { outcome: "COMPLETED" }), 1);
      assert.equal(
        sample(text, "agentlab_workspace_operation_duration_seconds_count", {
          operation: "attach",
          outcome: "WORKSPACE_ATTACHED",
        }),
        1,
      );
      assert.equal(sample(text, "agentlab_reconcile_passes_total", { outcome: "success" }), 1);
      assert.equal(sample(text, "agentlab_reconcile_drift", { code: "missing_in_proxmox" }), 2);
      assert.equal(sample(text, "agentlab_reconcile_drift_found_total", { code: "missing_in_proxmox" }), 2);

      // The next pass finds less: the gauge follows it, the counter keeps the sum.
      metrics.reconcilePass("success", []);
      text = (await metrics.scrape()).body;
      assert.equal(sample(text, "agentlab_reconcile_drift", { code: "missing_in_proxmox" }), 0);
      assert.equal(sample(text, "agentlab_reconcile_drift_found_total", { code: "missing_in_proxmox" }), 2);
      // Node's own process metrics are in the same registry.
      assert.ok(sample(text, "process_cpu_user_seconds_total") !== undefined);
      // Two registries side by side (two daemons in one process) do not collide.
      assert.ok((await metricsOver(store).scrape()).body.includes("agentlab_sandboxes"));
    } finally {
      store.close();
    }
  });

  it("docs/metrics.md lists every agentlab metric with its type", async () => {
    const store = freshStore();
    try {
      const metrics = await metricsOver(store).registry.getMetricsAsJSON();
      const doc = fs.readFileSync(path.join(REPO_ROOT, "docs", "metrics.md"), "utf8");
      const ours = metrics.filter((m) => m.name.startsWith("agentlab_"));
      assert.ok(ours.length >= 15, `only ${ours.length} agentlab metrics`);
      for (const metric of ours) {
        const row = doc.split("\n").find((line) => line.startsWith(`| \`${metric.name}\``));
        assert.ok(row, `docs/metrics.md has no row for ${metric.name}`);
        assert.ok(
          row.includes(`| ${metric.type} |`),
          `docs/metrics.md gives ${metric.name} another type than ${metric.type}: ${row}`,
        );
      }
    } finally {
      store.close();
    }
  });
});
