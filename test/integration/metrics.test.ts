import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createSmokeRepo, type RepoServer, startRepoServer } from "../../src/cli/init/repo-server.js";
import { makeHostDir, spawnDaemon } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";
import { freePort } from "../helpers/ports.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";

/**
 * metrics_listen end to end: a real daemon on the simulator, a sandbox created and destroyed through the
 * CLI, and the scrape read over HTTP as Prometheus would, then checked by Prometheus' own promtool
 * (Debian's prometheus package; scripts/test.sh installs it).
 */

const PROMTOOL = "promtool";

/** The value of the sample `name{labels}` with exactly these labels, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const got = Object.fromEntries(
      [...(match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]),
    );
    const wanted = Object.entries(labels);
    if (wanted.length === Object.keys(got).length && wanted.every(([k, v]) => got[k] === v))
      return Number(match[3]);
  }
  return undefined;
}

function promtool(args: string[], input?: string): { status: number | null; output: string } {
  const run = spawnSync(PROMTOOL, args, { input: input ?? "", encoding: "utf8", timeout: 60_000 });
  if (run.error) {
    throw new Error(
      `${PROMTOOL} could not run (${run.error.message}): install Debian's prometheus package (scripts/test.sh does)`,
    );
  }
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

for (const kind of ["api", "shell"] as BackendKind[])
  describe(`metrics_listen: Prometheus metrics of a real daemon (${kind} backend)`, () => {
    let h: SimHost;
    let url: string;
    const scrape = async (): Promise<string> => {
      const response = await fetch(url);
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      return response.text();
    };

    before(async () => {
      const port = await freePort();
      url = `http://127.0.0.1:${port}/metrics`;
      h = await startSimHost(
        kind,
        `metrics_listen: 127.0.0.1:${port}\nbootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n`,
      );
    });
    after(async () => {
      await h?.stop();
    });

    test("a create and a destroy move the counters a user expects, and promtool accepts the scrape", async () => {
      const first = await scrape();
      assert.equal(
        sample(first, "agentlab_sandbox_creates_total", { profile: "yolo-ephemeral", outcome: "success" }),
        0,
      );

      const created = await h.json<{ vmid: number; state: string }>(["new", "--profile", "yolo-ephemeral"]);
      assert.equal(created.code, 0, JSON.stringify(created.body));
      const vmid = created.body.vmid;
      let text = await scrape();
      assert.equal(
        sample(text, "agentlab_sandbox_creates_total", { profile: "yolo-ephemeral", outcome: "success" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_sandbox_create_ready_seconds_count", { profile: "yolo-ephemeral" }),
        1,
      );
      assert.equal(
        sample(text, "agentlab_sandboxes", { state: created.body.state, profile: "yolo-ephemeral" }),
        1,
      );
      // Proxmox calls and tasks, by path template and task type.
      const clones = sample(text, "agentlab_proxmox_call_duration_seconds_count", {
        method: "POST /nodes/{node}/qemu/{vmid}/clone",
        outcome: "success",
      });
      assert.equal(clones, 1, "one clone call");
      assert.ok(
        (sample(text, "agentlab_proxmox_task_duration_seconds_count", {
          type: "qmclone",
          outcome: "success",
        }) ?? 0) >= 1,
      );
      assert.equal(
        sample(text, "agentlab_rpc_duration_seconds_count", { method: "sandbox.create", outcome: "success" }),
        1,
      );
      // The simulated guest phoned home through the guest listener.
      assert.ok(
        (sample(text, "agentlab_guest_requests_total", { route: "/v1/guest/ready", status: "200" }) ?? 0) >=
          1,
      );
      // No VMID in any label: one series per kind of call, not per sandbox.
      assert.ok(!text.includes(`/qemu/${vmid}`), "a raw Proxmox path in a label");

      const destroyed = await h.json(["sandbox", "destroy", String(vmid)]);
      assert.equal(destroyed.code, 0, JSON.stringify(destroyed.body));
      const refused = await h.json(["new", "--profile", "no-such-profile"]);
      assert.notEqual(refused.code, 0);
      text = await scrape();
      assert.equal(sample(text, "agentlab_sandbox_destroys_total", { outcome: "success" }), 1);
      assert.equal(
        sample(text, "agentlab_sandboxes", { state: created.body.state, profile: "yolo-ephemeral" }),
        0,
      );
      // A profile that does not exist is no label value of its own.
      assert.equal(
        sample(text, "agentlab_sandbox_creates_total", { profile: "unknown", outcome: "PROFILE_NOT_FOUND" }),
        1,
      );
      assert.ok(!text.includes("no-such-profile"));
      assert.ok((sample(text, "agentlab_db_size_bytes") ?? 0) > 0);
      // The background reconciler ran at start, and a workspace operation is counted by name.
      assert.ok((sample(text, "agentlab_reconcile_passes_total", { outcome: "success" }) ?? 0) >= 1);
      const workspace = await h.json(["workspace", "create", "--name", "ws-metrics", "--size", "1G"]);
      assert.equal(workspace.code, 0, JSON.stringify(workspace.body));
      text = await scrape();
      assert.equal(
        sample(text, "agentlab_workspace_operation_duration_seconds_count", {
          operation: "create",
          outcome: "success",
        }),
        1,
      );

      const checked = promtool(["check", "metrics"], text);
      assert.equal(checked.status, 0, `promtool check metrics:\n${checked.output}`);
    });

    test("only GET /metrics is served", async () => {
      const base = url.replace(/\/metrics$/, "");
      assert.equal((await fetch(`${base}/`)).status, 404);
      assert.equal((await fetch(`${base}/healthz`)).status, 404);
      const post = await fetch(url, { method: "POST", body: "x" });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get("allow"), "GET, HEAD");
      assert.equal((await fetch(url, { method: "HEAD" })).status, 200);
    });

    test("a second daemon whose metrics_listen is taken refuses to start, and says why", async () => {
      const listen = new URL(url).host;
      const other = makeHostDir(`metrics_listen: ${listen}\nbootstrap_listen: 127.0.0.1:0\n`);
      try {
        const daemon = spawnDaemon(other);
        const code = await daemon.exited;
        assert.equal(code, 1);
        const { stderr } = daemon.output();
        assert.match(
          stderr,
          new RegExp(`metrics_listen: address ${listen.replace(".", "\\.")} is already in use`),
        );
        assert.match(stderr, /hint: stop what holds it/);
        // The first daemon still serves.
        assert.equal((await fetch(url)).status, 200);
      } finally {
        other.cleanup();
      }
    });
  });

describe("metrics_listen: a job's end and its runner's requests are counted", () => {
  let h: SimHost;
  let root: string;
  let server: RepoServer | undefined;
  let url: string;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "agentlab-metrics-job-"));
    const repo = await createSmokeRepo(join(root, "repo"), "#!/bin/sh\nset -eu\necho metrics job done\n");
    server = await startRepoServer("git-daemon", repo, "127.0.0.1");
    const port = await freePort();
    url = `http://127.0.0.1:${port}/metrics`;
    h = await startSimHost(
      "api",
      `metrics_listen: 127.0.0.1:${port}\nbootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n`,
    );
  });
  after(async () => {
    await server?.stop();
    await h?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test("a COMPLETED job shows in the job histogram, the runner's fetch and report in the guest routes", async () => {
    const run = await h.json<{ status: string }>([
      "job",
      "run",
      "--repo",
      server!.url,
      "--task",
      "count me",
      "--profile",
      "yolo-ephemeral",
      "--wait",
    ]);
    assert.equal(run.code, 0, `${run.stderr}\n${JSON.stringify(run.body)}`);
    assert.equal(run.body.status, "COMPLETED");
    const text = await (await fetch(url)).text();
    assert.equal(sample(text, "agentlab_job_duration_seconds_count", { outcome: "COMPLETED" }), 1);
    assert.equal(sample(text, "agentlab_jobs", { status: "RUNNING" }), 0);
    assert.ok(
      (sample(text, "agentlab_guest_requests_total", { route: "/v1/bootstrap/fetch", status: "200" }) ?? 0) >=
        1,
    );
    assert.ok(
      (sample(text, "agentlab_guest_requests_total", { route: "/v1/runner/report", status: "200" }) ?? 0) >=
        1,
    );
  });
});

describe("example alert rules", () => {
  test("promtool check rules accepts examples/prometheus/agentlab-alerts.yml", () => {
    const checked = promtool([
      "check",
      "rules",
      join(REPO_ROOT, "examples", "prometheus", "agentlab-alerts.yml"),
    ]);
    assert.equal(checked.status, 0, checked.output);
    assert.match(checked.output, /SUCCESS: \d+ rules found/);
  });
});
