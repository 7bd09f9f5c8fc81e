/**
 * Drift between the database and Proxmox, decided as a pure function of the sandbox rows and one
 * cluster-wide VM list: what is wrong, how bad, which command fixes it, and what a reconciler pass does
 * about it. `sandbox inventory` shows the findings; the reconciler carries out the plans.
 */

import type { DriftFinding } from "../../protocol/maintenance.js";
import { formatDuration } from "../../protocol/units.js";
import type { ClusterVm } from "../proxmox/types.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import { isProvisioning } from "./maintenance-steps.js";
import { MANAGED_TAG } from "./sandbox/vm-config.js";
import { HOLDER_TAG } from "./workspaces/core.js";

/** What a reconciler pass does about one finding. */
export type Plan =
  /** The VM is gone: the record follows (DESTROYED, its jobs FAILED). */
  | { kind: "destroy_record" }
  /** The VM stopped behind agentlab's back while the sandbox was in use: FAILED with the reason. */
  | { kind: "fail"; reason: string }
  /** STOPPED but the VM runs (started outside agentlab): READY, with its address when the guest says. */
  | { kind: "adopt" }
  /** Still provisioning with no operation in flight, but its VM runs: step to READY (never RUNNING). */
  | { kind: "advance_ready" }
  /** A provisioning a daemon crash interrupted: finish it or roll it back (start-up recovery, again). */
  | { kind: "recover" }
  /** Stuck before READY for longer than orphan_grace_period: FAILED, and its VM removed. */
  | { kind: "rollback"; reason: string }
  /** In use and its VM runs, but no address is recorded: ask the guest agent once. */
  | { kind: "refresh_ip" };

export interface Assessment {
  finding: DriftFinding;
  plan?: Plan;
  row?: Sandbox;
  vm?: ClusterVm;
}

export interface AssessInput {
  /** Live (not DESTROYED) rows. */
  rows: readonly Sandbox[];
  vms: readonly ClusterVm[];
  /** Sandboxes an operation holds right now: left out, looked at next time. */
  busy: (vmid: number) => boolean;
  /** Provisionings start-up recovery has not finished yet. */
  interrupted: ReadonlySet<number>;
  now: Date;
  /** How long a provisioning may sit with no operation in flight before it is rolled back. */
  orphanGraceMs: number;
  /**
   * VMIDs of workspace holder VMs (design §5.5): never a sandbox, never unmanaged, never to be
   * destroyed. VMs tagged agentlab-ws are left alone too, whether or not a row names them.
   */
  holders?: ReadonlySet<number>;
}

/** A workspace holder: it owns a workspace's disk, so no advice here may ever touch it. */
function isHolder(vm: ClusterVm, holders: ReadonlySet<number> | undefined): boolean {
  return vm.tags.includes(HOLDER_TAG) || holders?.has(vm.vmid) === true;
}

/** States in which the sandbox's VM must exist (once its clone succeeded). */
const VM_EXPECTED: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "SUSPENDED",
  "STOPPED",
  "COMPLETED",
  "TIMEOUT",
];
const IN_USE: readonly SandboxState[] = ["READY", "RUNNING"];

const RECONCILE = "agentlab sandbox reconcile --apply";

export interface AssessResult {
  assessments: Assessment[];
  busy: number[];
}

export function assessDrift(input: AssessInput): AssessResult {
  const vms = new Map(input.vms.map((vm) => [vm.vmid, vm]));
  const assessments: Assessment[] = [];
  const busy: number[] = [];
  const live = new Set<number>();
  for (const row of input.rows) {
    live.add(row.vmid);
    if (input.busy(row.vmid)) {
      busy.push(row.vmid);
      continue;
    }
    const assessment = assessRow(row, vms.get(row.vmid), input);
    if (assessment) assessments.push(assessment);
  }
  for (const vm of input.vms) {
    if (vm.template || live.has(vm.vmid) || !vm.tags.includes(MANAGED_TAG) || isHolder(vm, input.holders))
      continue;
    assessments.push({
      vm,
      finding: {
        code: "unmanaged_proxmox_vm",
        severity: "warning",
        vmid: vm.vmid,
        ...(vm.name ? { name: vm.name } : {}),
        proxmox: vm.state,
        message: `VM ${vm.vmid}${vm.name ? ` (${vm.name})` : ""} carries the ${MANAGED_TAG} tag but no live sandbox owns it`,
        fix: `check it with qm config ${vm.vmid}; if nobody needs it: qm stop ${vm.vmid} && qm destroy ${vm.vmid} --purge 1`,
      },
    });
  }
  return { assessments, busy };
}

function assessRow(row: Sandbox, vm: ClusterVm | undefined, input: AssessInput): Assessment | undefined {
  const base = {
    vmid: row.vmid,
    name: row.name,
    state: row.state,
    proxmox: vm?.state ?? "missing",
  };
  const found = (
    { code, severity, ...rest }: Omit<DriftFinding, keyof typeof base>,
    plan?: Plan,
  ): Assessment => ({
    finding: { code, severity, ...base, ...rest },
    row,
    ...(vm ? { vm } : {}),
    ...(plan ? { plan } : {}),
  });

  if (isProvisioning(row.state)) {
    const since = `since ${row.updated_at.toISOString()}`;
    const stuck = {
      code: "stuck_before_ready" as const,
      severity: "error" as const,
      fix: RECONCILE,
    };
    if (input.interrupted.has(row.vmid)) {
      return found(
        {
          ...stuck,
          message: `sandbox ${row.vmid} is still ${row.state}: its provisioning was interrupted by a daemon restart`,
          reconcile:
            "finish it (RUNNING) if its VM runs and the guest reports an address, otherwise mark it FAILED and remove the VM it created",
        },
        { kind: "recover" },
      );
    }
    if (row.vm_created && vm?.state === "running") {
      return found(
        {
          ...stuck,
          message: `sandbox ${row.vmid} is still ${row.state} with no operation in flight (${since}), but its VM runs`,
          reconcile: "advance it to READY",
        },
        { kind: "advance_ready" },
      );
    }
    const age = input.now.getTime() - row.updated_at.getTime();
    if (age >= input.orphanGraceMs) {
      const reason = `stuck in ${row.state} with no operation in flight for ${formatDuration(age)}`;
      return found(
        {
          ...stuck,
          message: `sandbox ${row.vmid} is ${reason}`,
          reconcile: `mark it FAILED${row.vm_created && vm ? " and remove its VM" : ""}`,
        },
        { kind: "rollback", reason },
      );
    }
    return found({
      ...stuck,
      message: `sandbox ${row.vmid} is still ${row.state} with no operation in flight (${since}); the reconciler rolls it back once orphan_grace_period (${formatDuration(input.orphanGraceMs)}) has passed`,
      fix: `agentlab sandbox destroy --force ${row.vmid}`,
    });
  }

  if (!vm) {
    if (!row.vm_created || !VM_EXPECTED.includes(row.state)) return undefined;
    return found(
      {
        code: "missing_in_proxmox",
        severity: "error",
        message: `sandbox ${row.vmid} is ${row.state} but its VM no longer exists in Proxmox`,
        fix: RECONCILE,
        reconcile: "mark it DESTROYED (and end its jobs as FAILED)",
      },
      { kind: "destroy_record" },
    );
  }

  if (row.state === "FAILED" && row.vm_created) {
    const retry = input.interrupted.has(row.vmid);
    return found(
      {
        code: "vm_left_behind",
        severity: "warning",
        message: `sandbox ${row.vmid} is FAILED but its VM still exists (${vm.state})`,
        fix: retry ? RECONCILE : `agentlab sandbox destroy --force ${row.vmid}`,
        ...(retry ? { reconcile: "remove the VM (start-up recovery's rollback did not finish)" } : {}),
      },
      retry ? { kind: "recover" } : undefined,
    );
  }
  if (IN_USE.includes(row.state) && vm.state === "stopped") {
    return found(
      {
        code: "stopped_while_marked_running",
        severity: "error",
        message: `sandbox ${row.vmid} is ${row.state} but its VM is stopped`,
        fix: `${RECONCILE} (marks it FAILED), then agentlab sandbox destroy ${row.vmid}`,
        reconcile: "mark it FAILED (and end its jobs as FAILED)",
      },
      { kind: "fail", reason: "its VM was found stopped (stopped outside agentlab)" },
    );
  }
  if (row.state === "STOPPED" && vm.state === "running") {
    return found(
      {
        code: "running_while_marked_stopped",
        severity: "warning",
        message: `sandbox ${row.vmid} is STOPPED but its VM is running (started outside agentlab)`,
        fix: RECONCILE,
        reconcile: "mark it READY and ask the guest for its address",
      },
      { kind: "adopt" },
    );
  }
  if (IN_USE.includes(row.state) && vm.state === "running" && !row.ip) {
    return found(
      {
        code: "missing_agent_ip",
        severity: "warning",
        message: `sandbox ${row.vmid} is ${row.state} and its VM runs, but no address is recorded`,
        fix: RECONCILE,
        reconcile: "ask the guest agent for the address once",
      },
      { kind: "refresh_ip" },
    );
  }
  return undefined;
}
