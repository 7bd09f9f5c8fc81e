import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { ClusterVm } from "../../src/daemon/proxmox/types.js";
import { type AssessInput, assessDrift } from "../../src/daemon/services/drift.js";
import type { Sandbox, SandboxState } from "../../src/daemon/store/sandboxes.js";
import { sandboxRow } from "../helpers/sandbox-row.js";

const NOW = new Date("2026-03-01T12:00:00.000Z");
const MINUTE = 60_000;

function row(vmid: number, state: SandboxState, extra: Partial<Sandbox> = {}): Sandbox {
  return sandboxRow(vmid, state, new Date(NOW.getTime() - 10 * MINUTE), {
    updated_at: new Date(NOW.getTime() - MINUTE),
    ...extra,
  });
}

function vm(vmid: number, state: ClusterVm["state"], extra: Partial<ClusterVm> = {}): ClusterVm {
  return { vmid, node: "pve", name: `sandbox-${vmid}`, state, template: false, tags: ["agentlab"], ...extra };
}

function assess(rows: Sandbox[], vms: ClusterVm[], extra: Partial<AssessInput> = {}) {
  return assessDrift({
    rows,
    vms,
    busy: () => false,
    interrupted: new Set(),
    now: NOW,
    orphanGraceMs: 20 * MINUTE,
    ...extra,
  });
}

describe("drift assessment (one row list against one VM list)", () => {
  test("a database that matches Proxmox has no findings", () => {
    const rows = [
      row(1000, "RUNNING", { ip: "10.77.4.2" }),
      row(1001, "STOPPED"),
      row(1002, "SUSPENDED"),
      row(1003, "FAILED", { vm_created: false }),
    ];
    const vms = [
      vm(9000, "stopped", { template: true, tags: [] }),
      vm(1000, "running"),
      vm(1001, "stopped"),
      vm(1002, "paused"),
    ];
    assert.deepEqual(assess(rows, vms).assessments, []);
  });

  test("a VM gone from Proxmox is missing_in_proxmox only for rows whose clone succeeded", () => {
    const rows = [
      row(1000, "RUNNING", { ip: "10.77.4.2" }),
      row(1001, "STOPPED"),
      row(1002, "TIMEOUT"),
      // A clone that never succeeded: there never was a VM to miss.
      row(1003, "STOPPED", { vm_created: false }),
      // Rolled back after a failure: the VM was removed on purpose.
      row(1004, "FAILED"),
    ];
    const { assessments } = assess(rows, [vm(9000, "stopped", { template: true })]);
    assert.deepEqual(
      assessments.map((a) => [a.finding.vmid, a.finding.code, a.finding.severity, a.plan?.kind]),
      [
        [1000, "missing_in_proxmox", "error", "destroy_record"],
        [1001, "missing_in_proxmox", "error", "destroy_record"],
        [1002, "missing_in_proxmox", "error", "destroy_record"],
      ],
    );
    const first = assessments[0]!.finding;
    assert.equal(first.proxmox, "missing");
    assert.equal(first.state, "RUNNING");
    assert.equal(first.message, "sandbox 1000 is RUNNING but its VM no longer exists in Proxmox");
    assert.equal(first.fix, "agentlab sandbox reconcile --apply");
    assert.match(first.reconcile ?? "", /DESTROYED/);
  });

  test("power state disagreements: stopped while in use → FAILED; running while STOPPED → adopted", () => {
    const rows = [
      row(1000, "RUNNING", { ip: "10.77.4.2" }),
      row(1001, "READY", { ip: "10.77.4.3" }),
      row(1002, "STOPPED"),
    ];
    const { assessments } = assess(rows, [vm(1000, "stopped"), vm(1001, "stopped"), vm(1002, "running")]);
    assert.deepEqual(
      assessments.map((a) => [a.finding.vmid, a.finding.code, a.finding.severity, a.plan?.kind]),
      [
        [1000, "stopped_while_marked_running", "error", "fail"],
        [1001, "stopped_while_marked_running", "error", "fail"],
        [1002, "running_while_marked_stopped", "warning", "adopt"],
      ],
    );
    assert.match(assessments[0]!.finding.fix, /agentlab sandbox destroy 1000/);
  });

  test("an unknown power state (fresh VM in Proxmox's RRD view) decides nothing", () => {
    const rows = [row(1000, "RUNNING"), row(1001, "STOPPED")];
    assert.deepEqual(assess(rows, [vm(1000, "unknown"), vm(1001, "unknown")]).assessments, []);
  });

  test("READY/RUNNING with a running VM and no address: missing_agent_ip, asked for by reconcile", () => {
    const { assessments } = assess(
      [row(1000, "RUNNING"), row(1001, "READY")],
      [vm(1000, "running"), vm(1001, "running")],
    );
    assert.deepEqual(
      assessments.map((a) => [a.finding.code, a.finding.severity, a.plan?.kind]),
      [
        ["missing_agent_ip", "warning", "refresh_ip"],
        ["missing_agent_ip", "warning", "refresh_ip"],
      ],
    );
  });

  test("stuck before READY: advanced when its VM runs, rolled back after the grace, reported before it", () => {
    const old = new Date(NOW.getTime() - 30 * MINUTE);
    const rows = [
      row(1000, "BOOTING"),
      row(1001, "PROVISIONING", { vm_created: false }),
      row(1002, "BOOTING", { updated_at: old }),
      row(1003, "REQUESTED", { vm_created: false, updated_at: old }),
    ];
    const { assessments } = assess(rows, [vm(1000, "running"), vm(1001, "stopped"), vm(1002, "stopped")]);
    assert.ok(
      assessments.every((a) => a.finding.code === "stuck_before_ready" && a.finding.severity === "error"),
    );
    assert.deepEqual(
      assessments.map((a) => [a.finding.vmid, a.plan?.kind]),
      [
        [1000, "advance_ready"],
        [1001, undefined],
        [1002, "rollback"],
        [1003, "rollback"],
      ],
    );
    assert.equal(assessments[0]!.finding.reconcile, "advance it to READY");
    assert.match(assessments[1]!.finding.message, /orphan_grace_period \(20m\)/);
    assert.equal(assessments[1]!.finding.fix, "agentlab sandbox destroy --force 1001");
    assert.equal(assessments[2]!.finding.reconcile, "mark it FAILED and remove its VM");
    assert.equal(assessments[3]!.finding.reconcile, "mark it FAILED");
    assert.deepEqual(assessments[2]!.plan, {
      kind: "rollback",
      reason: "stuck in BOOTING with no operation in flight for 30m",
    });
  });

  test("provisionings interrupted by a restart are recovered, whatever their VM does", () => {
    const rows = [row(1000, "BOOTING"), row(1001, "REQUESTED", { vm_created: false })];
    const { assessments } = assess(rows, [vm(1000, "running")], { interrupted: new Set([1000, 1001]) });
    assert.deepEqual(
      assessments.map((a) => [a.finding.vmid, a.finding.code, a.plan?.kind]),
      [
        [1000, "stuck_before_ready", "recover"],
        [1001, "stuck_before_ready", "recover"],
      ],
    );
    assert.match(assessments[0]!.finding.message, /interrupted by a daemon restart/);
  });

  test("a FAILED sandbox's VM still there is vm_left_behind; recovery retries it when the rollback was its own", () => {
    const { assessments } = assess(
      [row(1000, "FAILED"), row(1001, "FAILED")],
      [vm(1000, "stopped"), vm(1001, "running")],
      {
        interrupted: new Set([1001]),
      },
    );
    assert.deepEqual(
      assessments.map((a) => [
        a.finding.vmid,
        a.finding.code,
        a.finding.severity,
        a.plan?.kind,
        a.finding.fix,
      ]),
      [
        [1000, "vm_left_behind", "warning", undefined, "agentlab sandbox destroy --force 1000"],
        [1001, "vm_left_behind", "warning", "recover", "agentlab sandbox reconcile --apply"],
      ],
    );
  });

  test("agentlab-tagged VMs with no live sandbox are unmanaged; templates and untagged VMs are not ours to report", () => {
    const rows = [row(1000, "RUNNING", { ip: "10.77.4.2" })];
    const vms = [
      vm(1000, "running"),
      vm(1001, "running"), // its row is DESTROYED (not in the live list): it came back
      vm(1002, "stopped", { tags: ["agentlab", "ci"], name: "" }),
      vm(1003, "running", { tags: [] }),
      vm(9000, "stopped", { template: true }),
    ];
    const { assessments } = assess(rows, vms);
    assert.deepEqual(
      assessments.map((a) => [a.finding.vmid, a.finding.code, a.finding.severity, a.finding.state, a.plan]),
      [
        [1001, "unmanaged_proxmox_vm", "warning", undefined, undefined],
        [1002, "unmanaged_proxmox_vm", "warning", undefined, undefined],
      ],
    );
    assert.equal(
      assessments[0]!.finding.message,
      "VM 1001 (sandbox-1001) carries the agentlab tag but no live sandbox owns it",
    );
    assert.match(assessments[0]!.finding.fix, /^check it with qm config 1001; .*qm destroy 1001 --purge 1$/);
  });

  test("sandboxes with an operation in flight are left out and listed as busy", () => {
    const rows = [row(1000, "RUNNING"), row(1001, "BOOTING", { updated_at: new Date(0) })];
    const result = assess(rows, [], { busy: (vmid) => vmid === 1000 || vmid === 1001 });
    assert.deepEqual(result.assessments, []);
    assert.deepEqual(result.busy, [1000, 1001]);
  });
});
