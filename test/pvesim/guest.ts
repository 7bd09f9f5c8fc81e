/**
 * The guest side: what the QEMU guest agent answers, and the optional hook process that plays the
 * guest OS (started when a VM starts, signalled when it pauses, killed when it stops).
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Ctx } from "./context.js";
import { findFault, matchesVmid } from "./control.js";
import { DelayedError, fail } from "./errors.js";
import { findStorage, splitVolid, volumeFile } from "./storage.js";
import type { VmRec } from "./types.js";
import { agentEnabled, NET_KEY, nicMac, parseProps, propsGet } from "./vmconfig.js";

/** Deterministic per VMID inside 10.77.0.0/16 (unique for VMIDs below 64000). */
export function guestIp(vmid: number): string {
  return `10.77.${Math.floor(vmid / 250) % 256}.${(vmid % 250) + 2}`;
}

function linkLocal(mac: string): string {
  const b = mac.split(":").map((x) => Number.parseInt(x, 16));
  b[0] = (b[0] ?? 0) ^ 0x02;
  const words = [
    ((b[0] ?? 0) << 8) | (b[1] ?? 0),
    ((b[2] ?? 0) << 8) | 0xff,
    (0xfe << 8) | (b[3] ?? 0),
    ((b[4] ?? 0) << 8) | (b[5] ?? 0),
  ];
  return `fe80::${words.map((w) => w.toString(16)).join(":")}`;
}

function statistics(seed: number): Record<string, number> {
  return {
    "rx-bytes": 1000 + seed * 7,
    "rx-dropped": 0,
    "rx-errs": 0,
    "rx-packets": 10 + seed,
    "tx-bytes": 800 + seed * 5,
    "tx-dropped": 0,
    "tx-errs": 0,
    "tx-packets": 8 + seed,
  };
}

function agentReady(ctx: Ctx, vm: VmRec): boolean {
  const rt = vm.runtime;
  if (rt.status !== "running" || rt.qmpstatus !== "running") return false;
  if (rt.agentReadyAt === undefined || ctx.now < rt.agentReadyAt) return false;
  const never = findFault(ctx.state, ctx.control, "agent_never_ready", (a) => matchesVmid(a, vm.vmid), {
    consume: false,
    now: ctx.now,
  });
  return !never;
}

/** The checks every agent command makes before talking to the agent. */
export function requireAgent(ctx: Ctx, vm: VmRec): void {
  if (!agentEnabled(vm.config["agent"])) throw fail("No QEMU guest agent configured");
  if (vm.runtime.status !== "running") throw fail(`VM ${vm.vmid} is not running`);
  if (!agentReady(ctx, vm)) {
    // The server pings the agent first and gives up after its timeout.
    throw new DelayedError(ctx.control.agent_ping_timeout_ms, fail("QEMU guest agent is not running"));
  }
}

export function networkInterfaces(ctx: Ctx, vm: VmRec): Array<Record<string, unknown>> {
  requireAgent(ctx, vm);
  const uptime = Math.floor((ctx.now - (vm.runtime.startedAt ?? ctx.now)) / 1000);
  const result: Array<Record<string, unknown>> = [
    {
      name: "lo",
      "hardware-address": "00:00:00:00:00:00",
      "ip-addresses": [
        { "ip-address": "127.0.0.1", "ip-address-type": "ipv4", prefix: 8 },
        { "ip-address": "::1", "ip-address-type": "ipv6", prefix: 128 },
      ],
      statistics: statistics(uptime),
    },
  ];
  const dhcpDone = ctx.now >= (vm.runtime.agentReadyAt ?? 0) + ctx.control.agent_ip_delay_ms;
  const nets = Object.keys(vm.config)
    .filter((k) => NET_KEY.test(k))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const key of nets) {
    const mac = nicMac(vm.config, key);
    if (!mac) continue;
    const index = Number(key.slice(3));
    const iface: Record<string, unknown> = {
      name: `eth${index}`,
      "hardware-address": mac.toLowerCase(),
      statistics: statistics(uptime + index),
    };
    if (key === "net0" && dhcpDone) {
      iface["ip-addresses"] = [
        { "ip-address": guestIp(vm.vmid), "ip-address-type": "ipv4", prefix: 16 },
        { "ip-address": linkLocal(mac), "ip-address-type": "ipv6", prefix: 64 },
      ];
    } else if (key !== "net0") {
      iface["ip-addresses"] = [{ "ip-address": linkLocal(mac), "ip-address-type": "ipv6", prefix: 64 }];
    }
    result.push(iface);
  }
  return result;
}

/** The host path of the VM's `cicustom: user=` snippet, if it names an existing file. */
export function userDataPath(ctx: Ctx, vm: VmRec): string | undefined {
  const cicustom = vm.config["cicustom"];
  if (!cicustom) return undefined;
  const user = propsGet(parseProps(cicustom), "user");
  if (!user) return undefined;
  try {
    const { storage, volname } = splitVolid(user);
    const s = findStorage(ctx.state, storage);
    if (!s) return undefined;
    const path = volumeFile(ctx.dir, s, volname);
    return existsSync(path) ? path : undefined;
  } catch {
    return undefined;
  }
}

/** Starts the guest hook in its own process group; its output goes to DIR/guests/<vmid>.log. */
export function startGuestHook(ctx: Ctx, vm: VmRec): void {
  const command = ctx.control.guest_hook;
  if (!command) return;
  const marker = `${vm.vmid}-${ctx.now}-${Math.random().toString(36).slice(2)}`;
  const logDir = join(ctx.dir, "guests");
  mkdirSync(logDir, { recursive: true });
  const log = openSync(join(logDir, `${vm.vmid}.log`), "a");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PVESIM_DIR: ctx.dir,
    PVESIM_VMID: String(vm.vmid),
    PVESIM_NODE: vm.node,
    PVESIM_IP: guestIp(vm.vmid),
    PVESIM_GUEST_MARKER: marker,
  };
  const userData = userDataPath(ctx, vm);
  if (userData) env["PVESIM_USER_DATA"] = userData;
  else delete env["PVESIM_USER_DATA"];
  try {
    const child = spawn("sh", ["-c", command], { detached: true, stdio: ["ignore", log, log], env });
    child.on("error", () => {});
    child.unref();
    if (child.pid) vm.runtime.hook = { pid: child.pid, marker };
  } finally {
    closeSync(log);
  }
}

/** Signals the hook's process group, but only if the pid still belongs to the hook we started. */
export function signalGuestHook(vm: VmRec, signal: NodeJS.Signals): void {
  const hook = vm.runtime.hook;
  if (!hook) return;
  let environ = "";
  try {
    environ = readFileSync(`/proc/${hook.pid}/environ`, "utf8");
  } catch {
    // gone already
  }
  if (environ.split("\0").includes(`PVESIM_GUEST_MARKER=${hook.marker}`)) {
    try {
      process.kill(-hook.pid, signal);
    } catch {
      // exited between the check and the signal
    }
  }
  if (signal === "SIGTERM" || signal === "SIGKILL") delete vm.runtime.hook;
}
