import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { pino } from "pino";
import { parseConfig } from "../../src/config/config.js";
import { type DaemonContext, systemClock } from "../../src/daemon/context.js";
import { backgroundOperation } from "../../src/daemon/services/operation.js";
import { SandboxService } from "../../src/daemon/services/sandboxes.js";
import { openStore } from "../../src/daemon/store/db.js";

test("destroying a sandbox ends the jobs bound to it (they could never finish)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "agentlab-destroy-jobs-"));
  const store = openStore(join(dir, "agentlab.db"));
  try {
    const log = pino({ level: "silent" });
    const ctx = {
      config: parseConfig("", join(dir, "config.yaml")).config,
      configPath: join(dir, "config.yaml"),
      profiles: [],
      store,
      // No VM was ever created for these rows, so destroy makes no Proxmox call.
      backend: undefined as never,
      log,
      clock: systemClock,
      startedAt: new Date(),
      version: "test",
    } as unknown as DaemonContext;
    const sandboxes = new SandboxService(ctx);
    for (const [vmid, state] of [
      [1000, "RUNNING"],
      [1001, "TIMEOUT"],
    ] as const) {
      store.sandboxes.insert({ vmid, name: `s${vmid}`, profile: "p", state });
      store.jobs.insert({
        id: `job_${vmid}`,
        repo_url: "https://example.invalid/r.git",
        ref: "main",
        profile: "p",
        status: "RUNNING",
        sandbox_vmid: vmid,
      });
    }
    store.jobs.insert({
      id: "job_done",
      repo_url: "r",
      ref: "main",
      profile: "p",
      status: "COMPLETED",
      sandbox_vmid: 1000,
    });

    await sandboxes.destroy(1000, false, backgroundOperation(log));
    await sandboxes.destroy(1001, true, backgroundOperation(log));

    assert.equal(store.jobs.get("job_1000")?.status, "FAILED");
    assert.match(store.jobs.get("job_1000")?.failure_reason ?? "", /sandbox 1000 was destroyed/);
    assert.equal(store.jobs.get("job_1001")?.status, "TIMEOUT", "a TIMEOUT sandbox's job times out");
    assert.equal(store.jobs.get("job_done")?.status, "COMPLETED", "finished jobs are left alone");
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
