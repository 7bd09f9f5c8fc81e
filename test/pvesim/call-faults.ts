/**
 * Faults aimed at one call: `call=<regex over "METHOD /path">` with `nth=<N>` (default 1) arms a fault
 * when the Nth matching call of either face begins (counted from the fault's injection), and the fault
 * then applies to that call only, until it ends. A test can so replay an operation once per call
 * position and fail exactly that call.
 *
 * How each armed fault shows is decided where Proxmox would show it: `lock`, `fail_task` and
 * `slow_task` through the model's own checks during the call (a config flock taken by the handler or by
 * the worker the call runs, a task's result, its duration); `http500` and `api_down` by the face
 * (server.ts, pvesh.ts); `vm_vanish` here, before the call does anything: the VM the call names (or
 * `vmid=`) is deleted as by a `qm destroy` someone ran by hand, so the call finds it gone.
 */
import { type Control, type Fault, readControl } from "./control.js";
import { removeVmBehindBack } from "./lifecycle.js";
import { withModel } from "./runner.js";
import { withState } from "./store.js";
import { isTemplate } from "./vms.js";

/** The VMID a call's path names (`/nodes/{node}/qemu/{vmid}/…`), if any. */
function vmidOfPath(path: string): number | undefined {
  const match = /^\/nodes\/[^/]+\/qemu\/(\d+)(?:\/|$)/.exec(path);
  return match ? Number(match[1]) : undefined;
}

const selected = (control: Control): Fault[] => control.faults.filter((f) => f.args["call"] !== undefined);

/** Counts this call against every call-selected fault and arms those whose turn it is. */
export async function armCallFaults(
  dir: string,
  callId: string,
  method: string,
  path: string,
): Promise<Fault[]> {
  const faults = selected(readControl(dir));
  if (faults.length === 0) return [];
  const call = `${method} ${path}`;
  const armed = await withState(dir, (state) => {
    const out: Fault[] = [];
    const records = state.callFaults ?? {};
    state.callFaults = records;
    for (const fault of faults) {
      const record = records[fault.id] ?? { seen: 0 };
      records[fault.id] = record;
      if (record.live !== undefined || record.spent || !new RegExp(fault.args["call"]!).test(call)) continue;
      record.seen++;
      if (record.seen === Number(fault.args["nth"] ?? 1)) {
        record.live = callId;
        out.push(fault);
      }
    }
    return out;
  });
  const vanish = armed.find((f) => f.name === "vm_vanish");
  if (vanish) {
    const vmid = vanish.args["vmid"] ? Number(vanish.args["vmid"]) : vmidOfPath(path);
    if (vmid !== undefined) {
      await withModel(dir, (ctx) => {
        const vm = ctx.state.vms[String(vmid)];
        // The fault stands for a sandbox deleted by hand; a template is never what vanishes.
        if (!vm || isTemplate(vm)) return;
        removeVmBehindBack(ctx, vmid);
        ctx.state.faultUse[vanish.id] = (ctx.state.faultUse[vanish.id] ?? 0) + 1;
      });
    }
  }
  return armed;
}

/** The call ended: the faults it armed are spent. */
export async function disarmCallFaults(dir: string, callId: string, armed: Fault[]): Promise<void> {
  if (armed.length === 0) return;
  await withState(dir, (state) => {
    for (const fault of armed) {
      const record = state.callFaults?.[fault.id];
      if (record?.live === callId) state.callFaults![fault.id] = { seen: record.seen, spent: true };
    }
  });
}

/** A face acted on an armed fault (`http500`, `api_down`): counted, as the model counts its own. */
export async function countCallFault(dir: string, fault: Fault): Promise<void> {
  await withState(dir, (state) => {
    state.faultUse[fault.id] = (state.faultUse[fault.id] ?? 0) + 1;
  });
}
