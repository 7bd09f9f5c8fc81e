/**
 * Intent first, on disk (docs/reliability.md, "Durability"): commits are not fsynced one by one, so the
 * store's flush() must make them durable before any Proxmox write, exactly once per batch of commits,
 * and never let a caller through before the fsync its commits need has finished.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import type { Config } from "../../src/config/config.js";
import { boundedTransport } from "../../src/daemon/proxmox/load.js";
import {
  type ApiPath,
  apiPath,
  type HttpMethod,
  type PveTransport,
} from "../../src/daemon/proxmox/transport.js";
import { openStore, type Store } from "../../src/daemon/store/db.js";

const dir = mkdtempSync(join(tmpdir(), "agentlab-durability-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A store whose WAL syncs are recorded and finish only when the test says so. */
function storeWithHeldSyncs(name: string): {
  store: Store;
  syncs: Array<{ path: string; finish: () => void }>;
} {
  const syncs: Array<{ path: string; finish: () => void }> = [];
  const store = openStore(join(dir, name), {
    syncWal: (path) => new Promise<void>((resolve) => syncs.push({ path, finish: resolve })),
  });
  return { store, syncs };
}

function addSandbox(store: Store, vmid: number): void {
  store.sandboxes.insert({
    vmid,
    name: `sandbox-${vmid}`,
    profile: "p",
    state: "REQUESTED",
    node: "pve",
    keepalive: false,
    lease_expires_at: null,
    tags: [],
    created_at: new Date(),
  });
}

async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(() => {
    done = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  return done;
}

describe("store.flush", () => {
  test("syncs the -wal file once for the commits made since the last flush, and not at all without any", async () => {
    const { store, syncs } = storeWithHeldSyncs("once.db");
    try {
      await store.flush();
      assert.equal(syncs.length, 0, "nothing committed since open: no fsync");
      addSandbox(store, 100);
      addSandbox(store, 101);
      const flushed = store.flush();
      assert.equal(await settled(flushed), false, "flush waits for the fsync");
      assert.equal(syncs.length, 1);
      assert.equal(syncs[0]!.path, `${store.path}-wal`);
      syncs[0]!.finish();
      await flushed;
      await store.flush();
      assert.equal(syncs.length, 1, "the same commits are not synced twice");
    } finally {
      store.close();
    }
  });

  test("a second caller with nothing new waits for the fsync in flight instead of passing it", async () => {
    const { store, syncs } = storeWithHeldSyncs("concurrent.db");
    try {
      addSandbox(store, 100);
      const first = store.flush();
      const second = store.flush();
      assert.equal(
        await settled(second),
        false,
        "the second caller's commits are in the fsync still running",
      );
      syncs[0]!.finish();
      await Promise.all([first, second]);
      assert.equal(syncs.length, 1);
      // A commit made while a sync runs needs a sync of its own.
      addSandbox(store, 101);
      const third = store.flush();
      addSandbox(store, 102);
      const fourth = store.flush();
      await new Promise((resolve) => setImmediate(resolve));
      syncs[1]!.finish();
      await third;
      await new Promise((resolve) => setImmediate(resolve));
      if (syncs[2]) syncs[2].finish();
      await fourth;
      assert.ok(syncs.length >= 2);
    } finally {
      store.close();
    }
  });

  test("the real fsync works on a real database file", async () => {
    const store = openStore(join(dir, "real.db"));
    try {
      addSandbox(store, 100);
      await store.flush();
      assert.equal(store.sandboxes.get(100)?.state, "REQUESTED");
    } finally {
      store.close();
    }
  });
});

/** Records every call it gets, with whether the barrier had finished when it came. */
class RecordingTransport implements PveTransport {
  readonly kind = "api" as const;
  readonly calls = { count: 0 };
  readonly seen: Array<{ method: HttpMethod; path: string; barriersDone: number }> = [];
  constructor(private readonly barriersDone: () => number) {}
  async request(method: HttpMethod, path: ApiPath): Promise<unknown> {
    this.calls.count++;
    this.seen.push({ method, path: String(path), barriersDone: this.barriersDone() });
    return null;
  }
}

describe("the daemon's Proxmox transport: every write waits for the barrier", () => {
  const config = { proxmox_max_reads: 2, proxmox_max_writes: 2, proxmox_cluster_list_ttl_ms: 0 } as Config;

  test("POST, PUT and DELETE only after the barrier finished; GET without it", async () => {
    let done = 0;
    let started = 0;
    const inner = new RecordingTransport(() => done);
    const transport = boundedTransport(config, inner, {
      beforeWrite: async () => {
        started++;
        await new Promise((resolve) => setImmediate(resolve));
        done++;
      },
    });
    await transport.request("GET", apiPath`/cluster/resources`);
    await transport.request("POST", apiPath`/nodes/${"pve"}/qemu/${100}/clone`);
    await transport.request("PUT", apiPath`/nodes/${"pve"}/qemu/${101}/config`);
    await transport.request("DELETE", apiPath`/nodes/${"pve"}/qemu/${101}`);
    assert.equal(started, 3, "one barrier per write, none for the read");
    assert.deepEqual(
      inner.seen.map((c) => [c.method, c.barriersDone]),
      [
        ["GET", 0],
        ["POST", 1],
        ["PUT", 2],
        ["DELETE", 3],
      ],
    );
  });

  test("a barrier that fails stops the write: Proxmox is never asked", async () => {
    const inner = new RecordingTransport(() => 0);
    const transport = boundedTransport(config, inner, {
      beforeWrite: async () => {
        throw new Error("EIO: fsync failed");
      },
    });
    await assert.rejects(transport.request("POST", apiPath`/nodes/${"pve"}/qemu/${100}/clone`), /EIO/);
    assert.equal(inner.calls.count, 0);
  });
});
