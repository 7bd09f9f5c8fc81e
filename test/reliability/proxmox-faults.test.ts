/**
 * Proxmox faults at every call of `sandbox new` and `sandbox destroy`, against the real daemon on the
 * simulator. One run without faults records the calls each operation makes (the simulator's call log);
 * then, for each call position and each fault kind that can happen there, the operation runs again on
 * a fresh sandbox with the fault aimed at exactly that call (`call=`/`nth=`, test/pvesim/call-faults.ts).
 *
 * What is asserted after every run is the end state a user would see: the CLI succeeded, or failed
 * with a reason that names what Proxmox said; no sandbox stays in a transitional state; no VM exists in
 * Proxmox without a live sandbox row, and no live row lacks its VM; no VM is left locked and no task
 * runs on; the daemon keeps answering. Never how long anything took.
 *
 * Fault kinds per backend, to keep the run to a few minutes on 2 cores (the two backends run at once):
 * the api backend gets http500, api_down, vm_vanish, lock and slow_task; the shell backend fail_task
 * and lock (pvesh has no pveproxy to go down, and its 500s are the same handler errors). Task-status
 * polls are aimed at once per task (the first poll), since how many there are depends on the machine.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { RawRpcClient } from "../helpers/raw-rpc.js";
import { type BackendKind, FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { type Fault, parseFault, updateControl } from "../pvesim/control.js";
import { callSequence, inspect, resetCalls } from "../pvesim/harness.js";

type Kind = "http500" | "api_down" | "vm_vanish" | "lock" | "fail_task" | "slow_task";

const KINDS: Record<BackendKind, Kind[]> = {
  api: ["http500", "api_down", "vm_vanish", "lock", "slow_task"],
  shell: ["fail_task", "lock"],
};

const GUEST_LISTENER = "bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\n";
/**
 * api: a daemon that gives up on a Proxmox task after 5 s, so that a slow task outlasts its wait. shell
 * (no slow_task there): the defaults, since each pvesh start costs seconds on a loaded machine.
 */
const CONFIG: Record<BackendKind, string> = {
  api: `${GUEST_LISTENER}proxmox_command_timeout: 5s\nproxmox_task_timeout: 5s\n`,
  shell: GUEST_LISTENER,
};

const TRANSITIONAL = new Set(["REQUESTED", "PROVISIONING", "BOOTING"]);
const LIVE = new Set(["READY", "RUNNING", "SUSPENDED", "STOPPED", "COMPLETED"]);

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** A pattern for a recorded call that matches it on another run: any VMID but the template's, any UPID of the same task type. */
export function selectorOf(call: string, vmid: number): string {
  const space = call.indexOf(" ");
  const segments = call
    .slice(space + 1)
    .split("/")
    .map((seg) => {
      if (seg.startsWith("UPID:")) return `UPID:[^/]*:${escapeRegex(seg.split(":")[5] ?? "")}:[^/]*`;
      return seg === String(vmid) ? "\\d+" : escapeRegex(seg);
    });
  return `^${call.slice(0, space)} ${segments.join("/")}$`;
}

interface Position {
  call: string;
  selector: string;
  nth: number;
}

/** Every call of a recorded sequence as a position, task polls only the first per task. */
function positions(calls: string[], vmid: number): Position[] {
  const out: Position[] = [];
  const polled = new Set<string>();
  for (const [i, call] of calls.entries()) {
    const selector = selectorOf(call, vmid);
    // The selector also matches other calls (`\d+` the template's VMID too): count those before this one.
    const pattern = new RegExp(selector);
    const nth = calls.slice(0, i + 1).filter((c) => pattern.test(c)).length;
    if (call.includes("/tasks/")) {
      if (polled.has(selector)) continue;
      polled.add(selector);
    }
    out.push({ call, selector, nth });
  }
  return out;
}

/** Whether a fault kind can happen at a call on real Proxmox (else the run would only repeat a clean one). */
function applies(kind: Kind, call: string): boolean {
  const write = !call.startsWith("GET ");
  const onVm = /\/qemu\/\d+/.test(call) && !call.includes("/qemu/9000/");
  switch (kind) {
    case "http500":
    case "api_down":
      return true;
    case "vm_vanish":
      // A task poll names no VM: a VM vanishing there is the same as at the next call.
      return onVm;
    case "lock":
      // Reads take no config flock; writes do, in the handler or in the worker they start.
      return write;
    case "fail_task":
    case "slow_task":
      return write && !call.endsWith("/config");
  }
}

/** Texts the daemon's reason must contain: what Proxmox said for each fault. */
const SAYS: Record<Kind, RegExp> = {
  http500: /injected fault \d+/,
  api_down: /socket hang up|ECONNRESET|other side closed|connection|unreachable/i,
  vm_vanish: /does not exist|not found|gone/i,
  lock: /can't lock file '\/var\/lock\/qemu-server\/lock-\d+\.conf' - got timeout/,
  fail_task: /failed|error/i,
  slow_task: /timed out|timeout/i,
};

function faultFor(kind: Kind, at: Position, run: number): Fault {
  const fault = parseFault(kind);
  Object.assign(fault.args, { call: at.selector, nth: String(at.nth) });
  if (kind === "http500") fault.args["message"] = `injected fault ${run}`;
  if (kind === "lock") fault.args["kind"] = "flock";
  if (kind === "slow_task") fault.args["by"] = "600000";
  // A call-selected fault is bounded by its call; `times` would only stop a second use within it.
  delete fault.args["times"];
  return fault;
}

async function rpc(h: SimHost, method: string, params: unknown = {}) {
  const client = await RawRpcClient.open(h.host.socketPath);
  try {
    return await client.request(method, params);
  } finally {
    client.destroy();
  }
}

interface Row {
  vmid: number;
  state: string;
  failure_reason?: string;
}

async function rows(h: SimHost): Promise<Row[]> {
  const answer = await rpc(h, "sandbox.list", { all: true });
  assert.ok(answer.result, `the daemon answers sandbox.list: ${JSON.stringify(answer.error)}`);
  return (answer.result as { sandboxes: Row[] }).sandboxes;
}

/** What is wrong with the end state now ([] when it is defined). */
async function problems(h: SimHost): Promise<string[]> {
  const found: string[] = [];
  const all = await rows(h);
  const world = await inspect(h.sim.dir, (ctx) => ({
    vms: Object.values(ctx.state.vms)
      .filter((vm) => vm.config["template"] !== "1")
      .map((vm) => ({ vmid: vm.vmid, lock: vm.config["lock"] })),
    running: ctx.state.tasks.filter((t) => t.phase !== "done").map((t) => t.upid),
  }));
  for (const row of all) {
    if (TRANSITIONAL.has(row.state)) found.push(`sandbox ${row.vmid} stuck in ${row.state}`);
    if (row.state === "FAILED" && !row.failure_reason)
      found.push(`sandbox ${row.vmid} FAILED without a reason`);
    if (LIVE.has(row.state) && !world.vms.some((vm) => vm.vmid === row.vmid))
      found.push(`sandbox ${row.vmid} is ${row.state} but its VM is gone`);
  }
  for (const vm of world.vms) {
    const owner = all.find((row) => row.vmid === vm.vmid && row.state !== "DESTROYED");
    if (!owner) found.push(`VM ${vm.vmid} exists in Proxmox without a sandbox`);
    if (vm.lock) found.push(`VM ${vm.vmid} left locked (${vm.lock})`);
  }
  for (const upid of world.running) found.push(`task still running: ${upid}`);
  return found;
}

/** Waits (bounded) for a defined end state: the daemon may finish a rollback after the CLI returned. */
async function settled(h: SimHost, what: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  let last: string[] = [];
  while (Date.now() < deadline) {
    last = await problems(h);
    if (last.length === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  assert.fail(`${what}: no defined end state: ${last.join("; ")}`);
}

async function setFault(h: SimHost, fault: Fault | undefined): Promise<void> {
  await updateControl(h.sim.dir, (c) => {
    c.faults = fault ? [fault] : [];
  });
}

/** Whether the simulator used the fault (its call met it), from its use count. */
const fired = (h: SimHost, fault: Fault) =>
  inspect(h.sim.dir, (ctx) => (ctx.state.faultUse[fault.id] ?? 0) > 0);

interface Tally {
  tried: number;
  fired: number;
  failed: number;
  succeeded: number;
  lines: string[];
}

/** Set-up and clean-up go over the socket (quicker than a CLI process); the faulted operation uses the CLI. */
async function viaRpc(h: SimHost, method: string, params: unknown): Promise<Record<string, unknown>> {
  const answer = await rpc(h, method, params);
  assert.ok(answer.result, `${method} ${JSON.stringify(params)}: ${JSON.stringify(answer.error)}`);
  return answer.result as Record<string, unknown>;
}

const newSandbox = (h: SimHost) => viaRpc(h, "sandbox.create", { profile: "yolo-ephemeral" });

async function runBackend(kind: BackendKind, tally: Tally, log: (line: string) => void): Promise<void> {
  const h = await startSimHost(kind, CONFIG[kind], { knobs: FAST_KNOBS });
  try {
    // Warm up (start-up reads), then record one clean create and destroy.
    const warm = await newSandbox(h);
    await viaRpc(h, "sandbox.destroy", { vmid: warm["vmid"] });
    resetCalls(h.sim.dir);
    const vmid = Number((await newSandbox(h))["vmid"]);
    const createCalls = callSequence(h.sim.dir);
    resetCalls(h.sim.dir);
    await viaRpc(h, "sandbox.destroy", { vmid });
    const destroyCalls = callSequence(h.sim.dir);
    log(`${kind}: sandbox new makes ${createCalls.length} calls: ${createCalls.join(", ")}`);
    log(`${kind}: sandbox destroy makes ${destroyCalls.length} calls: ${destroyCalls.join(", ")}`);

    let run = 0;
    for (const [op, calls] of [
      ["new", createCalls],
      ["destroy", destroyCalls],
    ] as const) {
      for (const at of positions(calls, vmid)) {
        for (const fault of KINDS[kind]) {
          if (!applies(fault, at.call)) continue;
          run++;
          const what = `${kind} ${op}: ${fault} at ${at.call} (#${at.nth})`;
          let target: number | undefined;
          if (op === "destroy") {
            target = Number((await newSandbox(h))["vmid"]);
          }
          const injected = faultFor(fault, at, run);
          await setFault(h, injected);
          const result =
            op === "new"
              ? await h.json(["new", "--profile", "yolo-ephemeral"])
              : await h.json(["sandbox", "destroy", String(target)]);
          const met = await fired(h, injected);
          await setFault(h, undefined);
          tally.tried++;
          if (met) tally.fired++;
          const message = String(result.body["message"] ?? "");
          if (result.code === 0) {
            tally.succeeded++;
          } else {
            tally.failed++;
            assert.equal(result.code, 1, `${what}: exit 1 for a failure: ${JSON.stringify(result.body)}`);
            assert.ok(
              met,
              `${what}: the operation failed although the fault never fired: ${JSON.stringify(result.body)}`,
            );
            assert.match(message, SAYS[fault], `${what}: the reason names what Proxmox said`);
          }
          await settled(h, what);
          const details = result.body["details"] as { vmid?: number } | undefined;
          const subject = target ?? Number(result.body["vmid"] ?? details?.vmid ?? -1);
          const row = (await rows(h)).find((r) => r.vmid === subject);
          tally.lines.push(
            `${what}: ${met ? "fired" : "not met"}; ${result.code === 0 ? "succeeded" : `failed: ${message}`}${row ? `; row ${row.state}` : ""}`,
          );
          // Clean up what the run left, so the next one starts from an empty host.
          for (const r of await rows(h)) {
            if (r.state === "DESTROYED") continue;
            await viaRpc(h, "sandbox.destroy", { vmid: r.vmid, force: true });
          }
          await settled(h, `${what} (after cleanup)`);
        }
      }
    }
    const status = await rpc(h, "daemon.status");
    assert.ok(status.result, "the daemon still answers after every fault");
    assert.equal(h.daemon.proc.exitCode, null, "the daemon never exited");
  } finally {
    await h.stop();
  }
}

describe("Proxmox faults at every call of sandbox new and destroy", { concurrency: 2 }, () => {
  for (const kind of ["api", "shell"] as BackendKind[]) {
    test(`${kind} backend: ${KINDS[kind].join(", ")}`, async (t) => {
      const tally: Tally = { tried: 0, fired: 0, failed: 0, succeeded: 0, lines: [] };
      try {
        await runBackend(kind, tally, (line) => t.diagnostic(line));
      } finally {
        for (const line of tally.lines) t.diagnostic(line);
        t.diagnostic(
          `${kind}: ${tally.tried} runs, ${tally.fired} faults met their call, ${tally.failed} operations failed with a reason, ${tally.succeeded} succeeded; all ended in a defined state`,
        );
      }
      assert.ok(tally.fired > 0, "faults were met");
    });
  }
});

test("a clone whose answer was lost (its task poll failed) is removed by the rollback, not left behind", async () => {
  const h = await startSimHost("api", CONFIG.api, { knobs: FAST_KNOBS });
  try {
    const fault = parseFault("http500");
    Object.assign(fault.args, { call: "^GET /nodes/[^/]+/tasks/UPID:[^/]*:qmclone:", message: "poll lost" });
    await setFault(h, fault);
    const result = await h.json(["new", "--profile", "yolo-ephemeral"]);
    assert.equal(result.code, 1, JSON.stringify(result.body));
    assert.match(String(result.body["message"]), /poll lost/);
    const vmid = (result.body["details"] as { vmid: number }).vmid;
    // The clone went through in Proxmox; the daemon never heard it. Before the fix the rollback thought
    // no VM was made, and even destroy --force then marked the row DESTROYED over a living VM.
    const row = (await rows(h)).find((r) => r.vmid === vmid);
    assert.equal(row?.state, "FAILED");
    assert.match(row?.failure_reason ?? "", /poll lost/);
    const left = await inspect(h.sim.dir, (ctx) =>
      Object.values(ctx.state.vms)
        .filter((vm) => vm.config["template"] !== "1")
        .map((vm) => vm.vmid),
    );
    assert.deepEqual(left, [], "the clone is gone");
  } finally {
    await h.stop();
  }
});
