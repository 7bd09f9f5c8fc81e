import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { openStore, type Store } from "../../src/daemon/store/db.js";
import {
  type LeaseGranted,
  leaseHeldError,
  newLeaseNonce,
  parseLeaseOwner,
  sandboxLeaseOwner,
  sessionLeaseOwner,
  tempLeaseOwner,
} from "../../src/daemon/store/leases.js";
import type { Workspace } from "../../src/daemon/store/workspaces.js";
import { catchAgentlab } from "../helpers/errors.js";

const tempDirs: string[] = [];
after(() => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

const T0 = Date.parse("2026-02-14T13:00:00.000Z");
const MIN = 60_000;

function freshStore(): { store: Store; file: string; ws: Workspace } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-ws-lease-"));
  tempDirs.push(dir);
  const file = path.join(dir, "agentlab.db");
  const store = openStore(file, { now: () => new Date(T0) });
  const ws = store.workspaces.insert({
    name: "ws1",
    node: "pve1",
    storage: "local-zfs",
    volid: "local-zfs:vm-1005-disk-0",
    size_gb: 10,
    holder_vmid: 1005,
    state: "ready",
  });
  return { store, file, ws };
}

const at = (offsetMs: number) => new Date(T0 + offsetMs);

function granted(result: ReturnType<Store["workspaceLeases"]["acquire"]>): LeaseGranted {
  assert.ok(result.ok, `expected the lease, got ${JSON.stringify(result)}`);
  return result;
}

describe("workspace lease: acquire", () => {
  it("takes a free lease with a 32-hex nonce and stores it with a fixed-width expiry", () => {
    const { store, ws } = freshStore();
    try {
      const lease = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      assert.match(lease.nonce, /^[0-9a-f]{32}$/);
      assert.equal(lease.expires_at.toISOString(), "2026-02-14T13:30:00.000Z");
      const row = store.workspaces.get(ws.id);
      assert.equal(row?.lease_owner, "session:s1");
      assert.equal(row?.lease_nonce, lease.nonce);
      assert.equal(row?.lease_expires_at?.toISOString(), "2026-02-14T13:30:00.000Z");
      const raw = store.db.prepare("SELECT lease_expires_at FROM workspaces WHERE id = ?").pluck().get(ws.id);
      assert.equal(raw, "2026-02-14T13:30:00.000000000Z");
    } finally {
      store.close();
    }
  });

  it("a held lease refuses another owner and reports the holder, changing nothing", () => {
    const { store, ws } = freshStore();
    try {
      const held = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      const refused = store.workspaceLeases.acquire(ws.id, "sandbox:1010", 30 * MIN, at(29 * MIN));
      assert.deepEqual(refused, {
        ok: false,
        lease_owner: "session:s1",
        lease_expires_at: held.expires_at,
      });
      assert.equal(store.workspaces.get(ws.id)?.lease_nonce, held.nonce);
    } finally {
      store.close();
    }
  });

  it("an expired lease (at or after its expiry) can be taken by anyone", () => {
    const { store, ws } = freshStore();
    try {
      granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      assert.equal(store.workspaceLeases.acquire(ws.id, "sandbox:1010", MIN, at(30 * MIN - 1)).ok, false);
      const taken = granted(store.workspaceLeases.acquire(ws.id, "sandbox:1010", MIN, at(30 * MIN)));
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, "sandbox:1010");
      assert.equal(taken.expires_at.toISOString(), "2026-02-14T13:31:00.000Z");
    } finally {
      store.close();
    }
  });

  it("the same owner re-takes its unexpired lease with a new nonce; the old nonce stops working", () => {
    const { store, ws } = freshStore();
    try {
      const first = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      const again = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(10 * MIN)));
      assert.notEqual(again.nonce, first.nonce);
      assert.equal(again.expires_at.toISOString(), "2026-02-14T13:40:00.000Z");
      assert.equal(
        store.workspaceLeases.renew(ws.id, "session:s1", first.nonce, 30 * MIN, at(11 * MIN)),
        undefined,
      );
      assert.equal(store.workspaceLeases.release(ws.id, "session:s1", first.nonce), false);
      assert.equal(store.workspaces.get(ws.id)?.lease_nonce, again.nonce);
    } finally {
      store.close();
    }
  });

  it("refuses an unknown workspace, an empty owner and a bad TTL", () => {
    const { store, ws } = freshStore();
    try {
      assert.equal(
        catchAgentlab(() => store.workspaceLeases.acquire("workspace-0000000000000000", "x:1", MIN)).code,
        "WORKSPACE_NOT_FOUND",
      );
      assert.equal(
        catchAgentlab(() => store.workspaceLeases.acquire(ws.id, " ", MIN)).code,
        "INVALID_PARAMS",
      );
      assert.equal(
        catchAgentlab(() => store.workspaceLeases.acquire(ws.id, "x:1", 0)).code,
        "INVALID_PARAMS",
      );
      assert.equal(
        catchAgentlab(() => store.workspaceLeases.acquire(ws.id, "x:1", 1.5)).code,
        "INVALID_PARAMS",
      );
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, null);
    } finally {
      store.close();
    }
  });
});

describe("workspace lease: renew, release, transfer, clear", () => {
  it("renew extends only with the matching owner and nonce, even after expiry when nobody took it", () => {
    const { store, ws } = freshStore();
    try {
      const lease = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      assert.equal(
        store.workspaceLeases.renew(ws.id, "session:s2", lease.nonce, 30 * MIN, at(MIN)),
        undefined,
      );
      assert.equal(
        store.workspaceLeases.renew(ws.id, "session:s1", newLeaseNonce(), 30 * MIN, at(MIN)),
        undefined,
      );
      // The daemon was down past the expiry: its keeper re-extends at start-up (design §9.3).
      const renewed = store.workspaceLeases.renew(ws.id, "session:s1", lease.nonce, 30 * MIN, at(45 * MIN));
      assert.equal(renewed?.toISOString(), "2026-02-14T14:15:00.000Z");
      assert.equal(store.workspaces.get(ws.id)?.lease_expires_at?.toISOString(), "2026-02-14T14:15:00.000Z");
    } finally {
      store.close();
    }
  });

  it("renew fails once someone else took the expired lease", () => {
    const { store, ws } = freshStore();
    try {
      const old = granted(store.workspaceLeases.acquire(ws.id, "session:s1", MIN, at(0)));
      granted(store.workspaceLeases.acquire(ws.id, "fsck:ws:0a0b0c0d", MIN, at(2 * MIN)));
      assert.equal(store.workspaceLeases.renew(ws.id, "session:s1", old.nonce, MIN, at(2 * MIN)), undefined);
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, "fsck:ws:0a0b0c0d");
    } finally {
      store.close();
    }
  });

  it("release needs owner and nonce; afterwards the lease is free", () => {
    const { store, ws } = freshStore();
    try {
      const lease = granted(store.workspaceLeases.acquire(ws.id, "sandbox:1010", 30 * MIN, at(0)));
      assert.equal(store.workspaceLeases.release(ws.id, "sandbox:1011", lease.nonce), false);
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, "sandbox:1010");
      assert.equal(store.workspaceLeases.release(ws.id, "sandbox:1010", lease.nonce), true);
      const row = store.workspaces.get(ws.id);
      assert.deepEqual([row?.lease_owner, row?.lease_nonce, row?.lease_expires_at], [null, null, null]);
      assert.equal(store.workspaceLeases.release(ws.id, "sandbox:1010", lease.nonce), false, "only once");
      granted(store.workspaceLeases.acquire(ws.id, "session:s2", MIN, at(MIN)));
    } finally {
      store.close();
    }
  });

  it("transfer hands the lease to a new owner in one step (rebind)", () => {
    const { store, ws } = freshStore();
    try {
      const lease = granted(store.workspaceLeases.acquire(ws.id, "sandbox:1010", 30 * MIN, at(0)));
      assert.equal(
        store.workspaceLeases.transfer(
          ws.id,
          "sandbox:1010",
          newLeaseNonce(),
          "sandbox:1011",
          30 * MIN,
          at(MIN),
        ),
        undefined,
      );
      const moved = store.workspaceLeases.transfer(
        ws.id,
        "sandbox:1010",
        lease.nonce,
        "sandbox:1011",
        30 * MIN,
        at(MIN),
      );
      assert.ok(moved);
      assert.equal(moved.owner, "sandbox:1011");
      assert.notEqual(moved.nonce, lease.nonce);
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, "sandbox:1011");
      assert.equal(store.workspaceLeases.release(ws.id, "sandbox:1010", lease.nonce), false);
      assert.equal(store.workspaceLeases.release(ws.id, "sandbox:1011", moved.nonce), true);
    } finally {
      store.close();
    }
  });

  it("clear nulls the lease whoever holds it and returns the previous owner", () => {
    const { store, ws } = freshStore();
    try {
      const lease = granted(store.workspaceLeases.acquire(ws.id, "session:s1", 30 * MIN, at(0)));
      assert.deepEqual(store.workspaceLeases.clear(ws.id), {
        previous_owner: "session:s1",
        previous_expires_at: lease.expires_at,
      });
      assert.equal(store.workspaces.get(ws.id)?.lease_owner, null);
      // The daemon operation that held it notices at its next renewal.
      assert.equal(
        store.workspaceLeases.renew(ws.id, "session:s1", lease.nonce, 30 * MIN, at(MIN)),
        undefined,
      );
      assert.deepEqual(store.workspaceLeases.clear(ws.id), {
        previous_owner: null,
        previous_expires_at: null,
      });
      assert.equal(
        catchAgentlab(() => store.workspaceLeases.clear("workspace-0000000000000000")).code,
        "WORKSPACE_NOT_FOUND",
      );
    } finally {
      store.close();
    }
  });
});

describe("workspace lease: contention", () => {
  it("between two connections on one file, exactly one acquire wins", () => {
    const { store, file, ws } = freshStore();
    const second = openStore(file, { now: () => new Date(T0) });
    try {
      const a = store.workspaceLeases.acquire(ws.id, "snapshot:ws1:00000001", 10 * MIN, at(0));
      const b = second.workspaceLeases.acquire(ws.id, "fsck:ws1:00000002", 10 * MIN, at(0));
      assert.equal(a.ok, true);
      assert.deepEqual(b, {
        ok: false,
        lease_owner: "snapshot:ws1:00000001",
        lease_expires_at: at(10 * MIN),
      });
    } finally {
      second.close();
      store.close();
    }
  });

  it("between eight processes racing on one file, exactly one acquire wins", async () => {
    const { store, file, ws } = freshStore();
    store.close();
    const dbModule = new URL("../../src/daemon/store/db.js", import.meta.url).href;
    // Each child opens its own connection, waits for a common start time, then tries once.
    const startAt = Date.now() + 700;
    const script = `
      const { openStore } = await import(${JSON.stringify(dbModule)});
      const store = openStore(${JSON.stringify(file)}, { busyTimeoutMs: 10000 });
      while (Date.now() < ${startAt}) {}
      const r = store.workspaceLeases.acquire(${JSON.stringify(ws.id)}, "fsck:ws1:" + process.argv[1], 600000);
      process.stdout.write(JSON.stringify({ ok: r.ok, owner: r.ok ? r.owner : r.lease_owner }));
      store.close();
    `;
    const runs = Array.from(
      { length: 8 },
      (_, i) =>
        new Promise<{ ok: boolean; owner: string }>((resolve, reject) => {
          const child = spawn(process.execPath, ["--input-type=module", "-e", script, `0000000${i}`], {
            stdio: ["ignore", "pipe", "pipe"],
          });
          let out = "";
          let err = "";
          child.stdout.on("data", (d) => {
            out += d;
          });
          child.stderr.on("data", (d) => {
            err += d;
          });
          child.on("error", reject);
          child.on("close", (code) => {
            if (code !== 0) reject(new Error(`child ${i} exited ${code}: ${err}`));
            else resolve(JSON.parse(out));
          });
        }),
    );
    const results = await Promise.all(runs);
    const winners = results.filter((r) => r.ok);
    assert.equal(winners.length, 1, JSON.stringify(results));
    assert.ok(
      results.every((r) => r.owner === winners[0]!.owner),
      "every loser names the winner",
    );
    const check = openStore(file, { readonly: true });
    try {
      assert.equal(check.workspaces.get(ws.id)?.lease_owner, winners[0]!.owner);
    } finally {
      check.close();
    }
  });
});

describe("workspace lease: owners and the held error", () => {
  it("builds and parses owner strings", () => {
    assert.equal(sandboxLeaseOwner(1010), "sandbox:1010");
    assert.equal(sessionLeaseOwner("session_0123456789abcdef"), "session:session_0123456789abcdef");
    const temp = tempLeaseOwner("snapshot", "workspace-00000000000000aa");
    assert.match(temp, /^snapshot:workspace-00000000000000aa:[0-9a-f]{8}$/);
    assert.notEqual(temp, tempLeaseOwner("snapshot", "workspace-00000000000000aa"), "unique per operation");
    assert.deepEqual(parseLeaseOwner("sandbox:1010"), { kind: "sandbox", id: "1010" });
    assert.deepEqual(parseLeaseOwner("session:session_0123456789abcdef"), {
      kind: "session",
      id: "session_0123456789abcdef",
    });
    assert.deepEqual(parseLeaseOwner(temp), { kind: "snapshot", id: "workspace-00000000000000aa" });
    for (const bad of ["job:job_1", "sandbox:abc", "sandbox", "", "session:"]) {
      assert.equal(parseLeaseOwner(bad), undefined, bad);
    }
  });

  it("WORKSPACE_LEASE_HELD carries the holder and expiry in details and hint", () => {
    const err = leaseHeldError(
      { id: "workspace-00000000000000aa", name: "ws1", attached_vmid: 1010 },
      { lease_owner: "session:session_0123456789abcdef", lease_expires_at: new Date("2026-02-14T13:30:00Z") },
      "session s1",
    );
    assert.equal(err.code, "WORKSPACE_LEASE_HELD");
    assert.equal(err.message, "workspace lease held");
    assert.equal(err.exitCode, 1);
    assert.equal(
      err.hint,
      "held by session s1 until 2026-02-14T13:30:00.000Z; wait, or if that holder is gone: agentlab workspace lease clear ws1",
    );
    assert.deepEqual(err.details, {
      workspace_id: "workspace-00000000000000aa",
      workspace_name: "ws1",
      attached_vmid: 1010,
      lease_owner: "session:session_0123456789abcdef",
      lease_expires_at: "2026-02-14T13:30:00.000Z",
    });
  });
});
