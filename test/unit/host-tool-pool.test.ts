import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { createHostToolPool } from "../../src/daemon/host/tool-pool.js";
import { execaRunner } from "../../src/daemon/network/sandbox-firewall.js";

const waitFor = async (what: string, ok: () => boolean) => {
  for (let i = 0; i < 2_000 && !ok(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(ok(), what);
};

test("host programs run through the pool: at most its limit at once, the rest in line, a cancelled one never starts", async () => {
  const dir = mkdtempSync(join(tmpdir(), "host-pool-"));
  try {
    const started = join(dir, "started");
    const go = join(dir, "go");
    writeFileSync(started, "");
    // Each run notes its start, then waits until the test lets every run end.
    const script = `echo x >> '${started}'; while [ ! -e '${go}' ]; do sleep 0.02; done`;
    const pool = createHostToolPool(2);
    const run = execaRunner({ pool });
    const aborted = new AbortController();
    const runs = [0, 1, 2, 3].map(() => run("sh", ["-c", script]));
    const cancelled = run("sh", ["-c", script], { signal: aborted.signal });
    assert.deepEqual(pool.state().host, { limit: 2, active: 2, queued: 3 });
    const begun = () => readFileSync(started, "utf8").split("\n").filter(Boolean).length;
    await waitFor("two programs started", () => begun() === 2);
    aborted.abort();
    await assert.rejects(cancelled, /sh: cancelled while waiting for a free host tool slot/);
    assert.deepEqual(pool.state().host, { limit: 2, active: 2, queued: 2 });
    writeFileSync(go, "");
    for (const result of await Promise.all(runs)) assert.equal(result.exitCode, 0);
    assert.equal(begun(), 4, "the cancelled run never started its program");
    assert.deepEqual(pool.state().host, { limit: 2, active: 0, queued: 0 });
    assert.ok(existsSync(go));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
