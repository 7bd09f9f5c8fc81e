/**
 * Which warm pool member goes (src/daemon/services/pool/removal.ts): dead members first, then surplus
 * ones, unhealthiest and oldest first; and the check made again under the member's lock, which must
 * leave a member a user claimed meanwhile alone.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { nextRemoval, type PoolSpec, stillRemovable } from "../../src/daemon/services/pool/removal.js";
import type { Sandbox, SandboxState } from "../../src/daemon/store/sandboxes.js";
import { sandboxRow } from "../helpers/sandbox-row.js";

const T0 = new Date("2026-03-01T12:00:00.000Z").getTime();

function member(vmid: number, state: SandboxState, extra: Partial<Sandbox> = {}): Sandbox {
  return sandboxRow(vmid, state, new Date(T0 + vmid * 1000), {
    profile: "pooled",
    pool: "pooled",
    ip: `10.77.0.${vmid - 100}`,
    ...extra,
  });
}

const none = () => false;
const pool = (wanted: number | undefined, paused = false): PoolSpec => ({
  profile: "pooled",
  wanted,
  paused,
});

describe("warm pool removals", () => {
  test("a full pool of RUNNING members has nothing to remove; members still filling are no surplus", () => {
    const rows = [member(101, "RUNNING"), member(102, "RUNNING"), member(103, "BOOTING")];
    assert.equal(nextRemoval(pool(2), rows, none), undefined);
  });

  test("a dead member goes first, with its state and failure in the reason", () => {
    const rows = [
      member(101, "RUNNING"),
      member(102, "RUNNING"),
      member(103, "FAILED", { failure_reason: "its VM was found stopped by a claim" }),
    ];
    assert.deepEqual(nextRemoval(pool(1), rows, none), {
      vmid: 103,
      profile: "pooled",
      kind: "dead",
      reason: "it is FAILED (its VM was found stopped by a claim), so no claim can take it",
    });
    for (const state of ["STOPPED", "SUSPENDED", "TIMEOUT", "COMPLETED"] as const)
      assert.equal(nextRemoval(pool(2), [member(104, state)], none)?.kind, "dead", state);
  });

  test("surplus: the member without an address, then the oldest; none once the profile wants them all", () => {
    const rows = [member(101, "RUNNING"), member(102, "RUNNING", { ip: null }), member(103, "RUNNING")];
    const first = nextRemoval(pool(2), rows, none);
    assert.equal(first?.vmid, 102);
    assert.equal(first?.reason, "surplus: warm_pool of pooled is 2 and 3 members are ready");
    assert.equal(nextRemoval(pool(1), [rows[0]!, rows[2]!], none)?.vmid, 101, "the oldest");
    assert.equal(nextRemoval(pool(3), rows, none), undefined);
    assert.equal(
      nextRemoval(pool(undefined), [rows[2]!], none)?.reason,
      "surplus: the profile pooled no longer exists",
    );
  });

  test("warm_pool_state: paused: paused members are ready, not dead; a RUNNING one is no surplus yet", () => {
    const rows = [member(101, "SUSPENDED"), member(102, "RUNNING")];
    assert.equal(nextRemoval(pool(2, true), rows, none), undefined);
    assert.equal(nextRemoval(pool(1, true), rows, none)?.kind, "surplus", "both count as ready");
    assert.equal(nextRemoval(pool(2), rows, none)?.vmid, 101, "in a running pool a paused member is dead");
    const dead = nextRemoval(pool(2), rows, none)!;
    assert.equal(stillRemovable(dead, rows[0]!, rows, pool(2, true)), false, "switched to paused meanwhile");
  });

  test("members another operation holds are passed over", () => {
    const rows = [member(101, "STOPPED"), member(102, "RUNNING"), member(103, "RUNNING")];
    const held = (vmid: number) => vmid === 101 || vmid === 102;
    assert.equal(nextRemoval(pool(1), rows, held)?.vmid, 103);
    assert.equal(
      nextRemoval(pool(1), rows, () => true),
      undefined,
    );
  });

  test("under the lock: a member claimed meanwhile, or one a claim of another made no surplus, stays", () => {
    const a = member(101, "RUNNING");
    const b = member(102, "RUNNING");
    const removal = nextRemoval(pool(1), [a, b], none)!;
    assert.equal(removal.vmid, 101);
    assert.equal(stillRemovable(removal, a, [a, b], pool(1)), true, "nothing changed: it goes");
    const claimed = { ...a, pool: null, name: "mine" };
    assert.equal(stillRemovable(removal, claimed, [b], pool(1)), false, "claimed by a user: never destroyed");
    assert.equal(stillRemovable(removal, a, [a], pool(1)), false, "a claim took the other: no surplus now");
    assert.equal(stillRemovable(removal, a, [a], pool(0)), true, "warm_pool lowered again meanwhile");
    const dead = nextRemoval(pool(1), [member(103, "STOPPED")], none)!;
    assert.equal(
      stillRemovable(dead, member(103, "RUNNING"), [], pool(1)),
      false,
      "started again: claimable",
    );
    assert.equal(stillRemovable(dead, member(103, "STOPPED"), [], pool(1)), true);
  });
});
