/** Finding VMs, lock rules, and the status views (status/current, the qemu list, cluster resources). */

import type { Ctx } from "./context.js";
import { findFault, matchesVmid } from "./control.js";
import { fail, missingConfig, paramError } from "./errors.js";
import type { StatdReport, StatdView, VmRec } from "./types.js";
import { agentEnabled, bootDiskKey, driveSize, memoryMiB } from "./vmconfig.js";

export function findVm(ctx: Ctx, vmid: number): VmRec | undefined {
  return ctx.state.vms[String(vmid)];
}

/** The VM as a node sees it: only VMs on that node exist there. */
export function getVm(ctx: Ctx, node: string, vmid: number): VmRec {
  const vm = findVm(ctx, vmid);
  if (!vm || vm.node !== node) throw missingConfig(node, vmid);
  return vm;
}

export function checkNode(ctx: Ctx, node: string): void {
  if (!ctx.state.nodes.some((n) => n.name === node)) {
    throw fail(
      `hostname lookup '${node}' failed - failed to get address info for: ${node}: Name or service not known`,
    );
  }
}

/** The lock a status view shows: the config's, or a time-boxed fault lock standing in for a backup job. */
export function displayLock(ctx: Ctx, vm: VmRec): string | undefined {
  if (vm.config["lock"]) return vm.config["lock"];
  const fault = findFault(
    ctx.state,
    ctx.control,
    "lock",
    (a) => a["kind"] !== "flock" && a["ms"] !== undefined && matchesVmid(a, vm.vmid),
    { consume: false, now: ctx.now },
  );
  return fault ? (fault.args["lock"] ?? "backup") : undefined;
}

/** `PVE::AbstractConfig::check_lock`: any `lock:` refuses the operation unless skiplock. */
export function checkLock(ctx: Ctx, vm: VmRec, skiplock = false): void {
  if (skiplock) return;
  if (vm.config["lock"]) throw fail(`VM is locked (${vm.config["lock"]})`);
  const fault = findFault(
    ctx.state,
    ctx.control,
    "lock",
    (a) => a["kind"] !== "flock" && matchesVmid(a, vm.vmid),
    { consume: true, now: ctx.now },
  );
  if (fault) throw fail(`VM is locked (${fault.args["lock"] ?? "backup"})`);
}

export function isTemplate(vm: VmRec): boolean {
  return vm.config["template"] === "1";
}

export function vmName(vm: VmRec): string {
  return vm.config["name"] ?? `VM ${vm.vmid}`;
}

function cpus(vm: VmRec): number {
  const vcpus = Number(vm.config["vcpus"] ?? 0);
  if (vcpus > 0) return vcpus;
  return Number(vm.config["sockets"] ?? 1) * Number(vm.config["cores"] ?? 1);
}

/**
 * `cpu` of a running VM: the QEMU process's CPU time per second of wall time, as a fraction of the VM's
 * vCPUs (qemu-server QemuServer.pm vmstatus: `(($dutime / $dtime) * $cpucount) / $d->{cpus}`), so a
 * guest keeping 1 of 2 vCPUs busy reports 0.5. pvestatd, a long-lived process, samples it every cycle
 * for /cluster/resources; the per-process sample cache that makes a fresh process (each `pvesh` run)
 * report 0 is not modelled. A paused guest uses no CPU.
 */
function guestCpu(ctx: Ctx, vm: VmRec): number {
  const load = vm.runtime.load;
  if (load === undefined) return ctx.control.cpu_load;
  return Math.min(load, cpus(vm)) / cpus(vm);
}

interface Stats {
  cpu: number;
  cpus: number;
  mem: number;
  maxmem: number;
  maxdisk: number;
  disk: number;
  uptime: number;
  netin: number;
  netout: number;
  diskread: number;
  diskwrite: number;
}

function stats(ctx: Ctx, vm: VmRec): Stats {
  const running = vm.runtime.status === "running";
  const uptime =
    running && vm.runtime.startedAt ? Math.max(0, Math.floor((ctx.now - vm.runtime.startedAt) / 1000)) : 0;
  const maxmem = memoryMiB(vm.config) * 1024 * 1024;
  return {
    cpu: running && vm.runtime.qmpstatus === "running" ? guestCpu(ctx, vm) : 0,
    cpus: cpus(vm),
    mem: running ? Math.floor(maxmem * 0.3) : 0,
    maxmem,
    maxdisk: driveSize(vm.config, bootDiskKey(vm.config)),
    disk: 0,
    uptime,
    netin: running ? 1500 + uptime * 600 : 0,
    netout: running ? 900 + uptime * 300 : 0,
    diskread: running ? 40_000_000 + uptime * 1000 : 0,
    diskwrite: running ? 2_000_000 + uptime * 4000 : 0,
  };
}

export function statusCurrent(ctx: Ctx, vm: VmRec): Record<string, unknown> {
  const s = stats(ctx, vm);
  const running = vm.runtime.status === "running";
  const out: Record<string, unknown> = {
    vmid: vm.vmid,
    name: vmName(vm),
    status: vm.runtime.status,
    qmpstatus: vm.runtime.qmpstatus,
    ...s,
    ha: { managed: 0 },
    "proxmox-support": running ? { "pbs-dirty-bitmap": true, "query-bitmap-info": true } : {},
  };
  if (running) {
    out["pid"] = vm.runtime.pid;
    out["memhost"] = s.mem;
    out["running-machine"] = "pc-i440fx-9.2+pve1";
    out["running-qemu"] = "9.2.0";
  }
  if (agentEnabled(vm.config["agent"])) out["agent"] = 1;
  const lock = displayLock(ctx, vm);
  if (lock) out["lock"] = lock;
  if (vm.config["tags"]) out["tags"] = vm.config["tags"];
  if (isTemplate(vm)) out["template"] = 1;
  if (vm.config["serial0"]) out["serial"] = 1;
  return out;
}

export function qemuListEntry(ctx: Ctx, vm: VmRec, full: boolean): Record<string, unknown> {
  const s = stats(ctx, vm);
  const out: Record<string, unknown> = {
    vmid: vm.vmid,
    name: vmName(vm),
    status: vm.runtime.status,
    maxmem: s.maxmem,
    maxdisk: s.maxdisk,
    cpus: s.cpus,
    uptime: s.uptime,
    cpu: s.cpu,
    mem: s.mem,
    disk: 0,
    netin: s.netin,
    netout: s.netout,
    diskread: s.diskread,
    diskwrite: s.diskwrite,
  };
  if (vm.runtime.status === "running") out["pid"] = vm.runtime.pid;
  const lock = displayLock(ctx, vm);
  if (lock) out["lock"] = lock;
  if (vm.config["tags"]) out["tags"] = vm.config["tags"];
  if (isTemplate(vm)) out["template"] = 1;
  if (vm.config["serial0"]) out["serial"] = 1;
  if (full) out["qmpstatus"] = vm.runtime.qmpstatus;
  return out;
}

/** The state pvestatd would report now: `qmpstatus || status` (pvestatd.pm:341), name, template. */
function currentReport(vm: VmRec): StatdReport {
  return {
    status: vm.runtime.status === "running" ? vm.runtime.qmpstatus : "stopped",
    name: vmName(vm),
    template: isTemplate(vm),
  };
}

const sameReport = (a: StatdReport, b: StatdReport) =>
  a.status === b.status && a.name === b.name && a.template === b.template;

/**
 * Brings a VM's pvestatd view up to date: a state is reported once it has held for
 * resources_lag_ms (real pvestatd reports every 10 s). The lag counts from when the simulator first
 * saw the state, so it is never shorter than Proxmox's.
 */
function observeStatd(ctx: Ctx, vm: VmRec): StatdView {
  const lag = ctx.control.resources_lag_ms;
  const view: StatdView = vm.statd ?? { seen: currentReport(vm), since: vm.createdAt };
  if (ctx.now - view.since >= lag) view.shown = view.seen;
  const current = currentReport(vm);
  if (!sameReport(current, view.seen)) {
    view.seen = current;
    view.since = ctx.now;
    if (lag <= 0) view.shown = current;
  }
  vm.statd = view;
  return view;
}

/**
 * A VM as /cluster/resources shows it: `status`, `name`, `template` and the numbers come only from
 * pvestatd's RRD entry (API2Tools.pm:84-116), so a VM it has not reported yet is `status: "unknown"`
 * without them, and a start, stop or suspend shows up only with pvestatd's next report. `lock` and
 * `tags` come from the config and are always current.
 */
export function resourceEntry(ctx: Ctx, vm: VmRec): Record<string, unknown> {
  const base: Record<string, unknown> = {
    id: `qemu/${vm.vmid}`,
    type: "qemu",
    vmid: vm.vmid,
    node: vm.node,
  };
  const lock = displayLock(ctx, vm);
  if (lock) base["lock"] = lock;
  if (vm.config["tags"]) base["tags"] = vm.config["tags"];
  const reported = observeStatd(ctx, vm).shown;
  if (!reported) return { ...base, status: "unknown" };
  const s = stats(ctx, vm);
  return {
    ...base,
    status: reported.status,
    name: reported.name,
    template: reported.template ? 1 : 0,
    maxcpu: s.cpus,
    cpu: s.cpu,
    maxmem: s.maxmem,
    mem: s.mem,
    maxdisk: s.maxdisk,
    disk: 0,
    netin: s.netin,
    netout: s.netout,
    diskread: s.diskread,
    diskwrite: s.diskwrite,
    uptime: reported.status === "stopped" ? 0 : s.uptime,
  };
}

/** `/cluster/nextid`: the lowest free VMID in the configured range; nothing is reserved. */
export function nextId(ctx: Ctx, wanted?: number): string {
  if (wanted !== undefined) {
    if (ctx.state.vms[String(wanted)]) throw paramError({ vmid: `VM ${wanted} already exists` });
    return String(wanted);
  }
  const { nextid_lower: lower, nextid_upper: upper } = ctx.control;
  for (let id = Math.max(100, lower); id < upper; id++) {
    if (!ctx.state.vms[String(id)]) return String(id);
  }
  throw fail(`unable to get any free VMID in range [${lower}, ${upper}]`);
}
