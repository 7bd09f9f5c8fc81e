/**
 * Knobs and faults. They live in DIR/control.json, which every operation reads afresh, so a test can
 * change timings or inject a fault while a daemon is talking to the simulator.
 */
import { existsSync, readFileSync } from "node:fs";
import { controlPath } from "./paths.js";
import { acquireLock, writeFileAtomic } from "./store.js";
import type { SimState } from "./types.js";

export interface Knobs {
  /** Duration of a linked-clone task. */
  clone_ms: number;
  /** Duration of a full-clone task (real ones copy whole disks and are much slower). */
  full_clone_ms: number;
  start_ms: number;
  stop_ms: number;
  shutdown_ms: number;
  /** Boot time from the end of the start task until the guest agent answers. */
  agent_ready_ms: number;
  /** After the agent answers, how long eth0 still has no address (DHCP pending). */
  agent_ip_delay_ms: number;
  /** Duration of every other task (snapshot, destroy, template, resize, ...). */
  task_ms: number;
  /** Duration of a task that fails its own checks right away. */
  fail_ms: number;
  /** How long "QEMU guest agent is not running" takes to arrive (real: 3000, the guest-ping timeout). */
  agent_ping_timeout_ms: number;
  /** Delay of every 401 (real: 3000). */
  auth_fail_delay_ms: number;
  /** Added to every HTTPS request. */
  api_latency_ms: number;
  /** Added to every call of either face, a `pvesh` run or an HTTPS request (call-log.ts). */
  call_latency_ms: number;
  /**
   * A regular expression over `METHOD /path`: a matching call of either face waits, after it was
   * logged as begun, until the knob no longer matches it (Proxmox stuck). Empty: none.
   */
  hang_calls: string;
  /**
   * pvestatd's lag in /cluster/resources: a new VM shows `status: "unknown"` without name/template,
   * and a start/stop/suspend shows up, this long after it happened (real: up to ~10 s).
   */
  resources_lag_ms: number;
  /** For how long a finished task is still listed by `GET /nodes/{n}/tasks?source=active`, with its status. */
  task_archive_ms: number;
  /** `cpu` reported for running VMs whose guest has no load set (harness setGuestLoad): its idle background. */
  cpu_load: number;
  /** 1: a booted guest whose cloud-init names the daemon reports readiness to it; 0: it never does. */
  phone_home: number;
  /** How long after the agent-ready time the guest's readiness report goes out. */
  phone_home_delay_ms: number;
  /**
   * A file of OpenSSH public key lines the guest sends as its SSH host keys in the readiness report (read
   * when the report goes out, as the guest script reads /etc/ssh/ssh_host_*_key.pub); empty = none sent.
   */
  guest_ssh_host_keys: string;
  /**
   * 1: a booted guest whose snippet writes agentlab's job runner runs it (once per instance, after the
   * readiness report); 0: the guest writes the snippet's files but never starts the runner.
   */
  runner: number;
  /** Command run (detached, via sh -c) as the "guest" when a VM starts; empty = none. */
  guest_hook: string;
  /** Command run (sync, via sh -c) per bridged NIC when a VM's QEMU starts, as pve-bridge; empty = none. */
  nic_plug: string;
  /** Version the simulator claims to be; below 9.1.5 401 reasons carry details. */
  pve_version: string;
  /** `process`: a VM start runs the simulated guest (guest.ts); `qemu`: it boots a real QEMU VM (qemu.ts). */
  guests: string;
  /** guests=qemu: the directory of the guest image (rootfs.raw, vmlinuz, initrd.img, cmdline, manifest.json). */
  guest_image: string;
  /** guests=qemu: `auto` (probe KVM once, else TCG), `tcg` or `kvm`. */
  guest_accel: string;
  /** guests=qemu: the most memory a guest gets, whatever its config asks (MiB). */
  guest_memory_mb: number;
  /** guests=qemu: `tap` (NICs on their bridge, as Proxmox) or `user` (QEMU user networking, no bridge needed). */
  guest_net: string;
  nextid_lower: number;
  nextid_upper: number;
}

export const DEFAULT_KNOBS: Knobs = {
  clone_ms: 200,
  full_clone_ms: 400,
  start_ms: 100,
  stop_ms: 50,
  shutdown_ms: 100,
  agent_ready_ms: 300,
  agent_ip_delay_ms: 0,
  task_ms: 50,
  fail_ms: 20,
  agent_ping_timeout_ms: 0,
  auth_fail_delay_ms: 0,
  api_latency_ms: 0,
  call_latency_ms: 0,
  hang_calls: "",
  resources_lag_ms: 0,
  task_archive_ms: 0,
  cpu_load: 0.02,
  phone_home: 1,
  phone_home_delay_ms: 0,
  guest_ssh_host_keys: "",
  runner: 1,
  guest_hook: "",
  nic_plug: "",
  pve_version: "9.1.7",
  guests: "process",
  guest_image: "",
  guest_accel: "auto",
  guest_memory_mb: 1024,
  guest_net: "tap",
  nextid_lower: 100,
  nextid_upper: 1_000_000,
};

export const FAULT_NAMES = [
  "lock",
  "fail_task",
  "http500",
  "agent_never_ready",
  "api_down",
  "shutdown_timeout",
  "slow_task",
  "vm_vanish",
] as const;
export type FaultName = (typeof FAULT_NAMES)[number];

/** The argument a bare value (`--fault name=value`) stands for. */
const MAIN_ARG: Record<FaultName, string> = {
  lock: "vmid",
  fail_task: "type",
  http500: "path",
  agent_never_ready: "vmid",
  api_down: "mode",
  shutdown_timeout: "vmid",
  slow_task: "type",
  vm_vanish: "vmid",
};

const ALIASES: Record<string, { name: FaultName; args: Record<string, string> }> = {
  lock_contention: { name: "lock", args: {} },
  fail_clone: { name: "fail_task", args: { type: "qmclone" } },
  fail_start: { name: "fail_task", args: { type: "qmstart" } },
};

export interface Fault {
  /** Unique per injection, so use counters of an earlier injection do not carry over. */
  id: string;
  name: FaultName;
  args: Record<string, string>;
  /** Epoch ms of injection; `ms=` faults last from here. */
  since: number;
}

export interface Control extends Knobs {
  faults: Fault[];
}

export function readControl(dir: string): Control {
  const path = controlPath(dir);
  let raw: Partial<Control> = {};
  if (existsSync(path)) {
    try {
      raw = JSON.parse(readFileSync(path, "utf8")) as Partial<Control>;
    } catch {
      // A control file being replaced is never half-written (atomic rename); garbage means a hand edit.
      throw new Error(`${path} is not valid JSON`);
    }
  }
  return { ...DEFAULT_KNOBS, ...raw, faults: raw.faults ?? [] };
}

/** Parses `name[=args]` where args is a bare main value or `k=v,k=v` (`message=` takes the rest). */
export function parseFault(spec: string, now = Date.now()): Fault {
  const eq = spec.indexOf("=");
  const rawName = eq < 0 ? spec : spec.slice(0, eq);
  const rest = eq < 0 ? "" : spec.slice(eq + 1);
  const alias = ALIASES[rawName];
  const name = alias ? alias.name : rawName;
  if (!(FAULT_NAMES as readonly string[]).includes(name)) {
    throw new Error(
      `unknown fault '${rawName}' (known: ${[...FAULT_NAMES, ...Object.keys(ALIASES)].join(", ")})`,
    );
  }
  const faultName = name as FaultName;
  const args: Record<string, string> = { ...(alias?.args ?? {}) };
  // For fail_clone/fail_start the bare value is the message, which may itself contain commas.
  const mainArg = alias && faultName === "fail_task" ? "message" : MAIN_ARG[faultName];
  let remaining = rest;
  while (remaining.length > 0) {
    const kv = remaining.indexOf("=");
    const comma = remaining.indexOf(",");
    const bare = kv < 0 || (comma >= 0 && comma < kv);
    if (mainArg === "message" && bare) {
      args["message"] = remaining;
      break;
    }
    if (remaining.startsWith("message=")) {
      args["message"] = remaining.slice("message=".length);
      break;
    }
    const token = comma < 0 ? remaining : remaining.slice(0, comma);
    remaining = comma < 0 ? "" : remaining.slice(comma + 1);
    if (bare) args[mainArg] = token;
    else args[token.slice(0, token.indexOf("="))] = token.slice(token.indexOf("=") + 1);
  }
  // "The next clone fails": a failed-task fault fires once unless told otherwise.
  if (faultName === "fail_task" && args["times"] === undefined && args["ms"] === undefined)
    args["times"] = "1";
  if (args["call"] !== undefined) {
    try {
      new RegExp(args["call"]);
    } catch (err) {
      throw new Error(`fault ${faultName}: call= is not a regular expression: ${(err as Error).message}`);
    }
    if (args["nth"] !== undefined && !/^[1-9]\d*$/.test(args["nth"]))
      throw new Error(`fault ${faultName}: nth= wants a number >= 1, got '${args["nth"]}'`);
  }
  if (
    (faultName === "fail_task" || faultName === "slow_task") &&
    args["type"] &&
    !args["type"].startsWith("qm") &&
    args["type"] !== "resize"
  ) {
    args["type"] = `qm${args["type"]}`;
  }
  return {
    id: `${now.toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    name: faultName,
    args,
    since: now,
  };
}

function isActive(state: SimState, fault: Fault, now: number): boolean {
  // A call-selected fault applies only while the call that armed it is in flight (call-faults.ts).
  if (fault.args["call"] !== undefined && state.callFaults?.[fault.id]?.live === undefined) return false;
  const ms = fault.args["ms"];
  if (ms !== undefined && now >= fault.since + Number(ms)) return false;
  const times = fault.args["times"];
  if (times !== undefined && (state.faultUse[fault.id] ?? 0) >= Number(times)) return false;
  return true;
}

/** The first active fault of `name` accepted by `match`; counts one use of it when `consume`. */
export function findFault(
  state: SimState,
  control: Control,
  name: FaultName,
  match: (args: Record<string, string>) => boolean,
  opts: { consume: boolean; now?: number },
): Fault | undefined {
  const now = opts.now ?? Date.now();
  for (const fault of control.faults) {
    if (fault.name !== name || !isActive(state, fault, now) || !match(fault.args)) continue;
    // Uses of call-selected faults are counted too, so a test can tell whether its call met the fault.
    if (opts.consume && (fault.args["times"] !== undefined || fault.args["call"] !== undefined)) {
      state.faultUse[fault.id] = (state.faultUse[fault.id] ?? 0) + 1;
    }
    return fault;
  }
  return undefined;
}

/** Whether a fault's optional `vmid=` argument covers this VM. */
export function matchesVmid(args: Record<string, string>, vmid: number): boolean {
  const want = args["vmid"];
  return want === undefined || want === "" || want === "*" || Number(want) === vmid;
}

const NUMERIC_KNOBS = new Set(
  Object.entries(DEFAULT_KNOBS)
    .filter(([, v]) => typeof v === "number")
    .map(([k]) => k),
);

/** String knobs that take one of a few words. */
const KNOB_CHOICES: Record<string, string[]> = {
  guests: ["process", "qemu"],
  guest_accel: ["auto", "tcg", "kvm"],
  guest_net: ["tap", "user"],
};

export function parseKnob(assignment: string): [keyof Knobs, number | string] {
  const eq = assignment.indexOf("=");
  if (eq < 0) throw new Error(`--set wants key=value, got '${assignment}'`);
  const key = assignment.slice(0, eq);
  const value = assignment.slice(eq + 1);
  if (!(key in DEFAULT_KNOBS))
    throw new Error(`unknown knob '${key}' (known: ${Object.keys(DEFAULT_KNOBS).join(", ")})`);
  const choices = KNOB_CHOICES[key];
  if (choices && !choices.includes(value))
    throw new Error(`knob ${key} wants one of ${choices.join(", ")}, got '${value}'`);
  if (NUMERIC_KNOBS.has(key)) {
    const n = Number(value);
    if (value.trim() === "" || !Number.isFinite(n) || n < 0)
      throw new Error(`knob ${key} wants a number >= 0, got '${value}'`);
    return [key as keyof Knobs, n];
  }
  return [key as keyof Knobs, value];
}

/** Read-modify-write of control.json under its own lock (separate from the state lock). */
export async function updateControl(dir: string, change: (control: Control) => void): Promise<Control> {
  const lock = await acquireLock(`${controlPath(dir)}.lock`);
  try {
    const control = readControl(dir);
    change(control);
    const stored: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(control)) {
      // Only what differs from the defaults is written, so the file shows what a test changed.
      if (key === "faults" || DEFAULT_KNOBS[key as keyof Knobs] !== value) stored[key] = value;
    }
    writeFileAtomic(controlPath(dir), `${JSON.stringify(stored, null, 2)}\n`);
    return control;
  } finally {
    lock.release();
  }
}
