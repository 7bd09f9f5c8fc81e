/**
 * The guest side: what the QEMU guest agent answers, and the "guest OS" process started when a VM boots
 * (signalled when it pauses, killed when it stops): the optional hook command, the cloud-init
 * phone-home that a snippet with /etc/agentlab/bootstrap.json asks for, and agentlab's job runner
 * (guest-runner.ts).
 */
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Ctx } from "./context.js";
import { type Control, findFault, matchesVmid } from "./control.js";
import { DelayedError, fail } from "./errors.js";
import {
  BOOTSTRAP_JSON,
  readRunnerPlan,
  runAgentRunner,
  runnerPlan,
  snippetWriteFiles,
  type WriteFile,
  writeFileText,
  writeRunnerPlan,
} from "./guest-runner.js";
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

/** The phone-home knobs (see control.ts), as the guest process reads them. */
export type PhoneHomeKnobs = Pick<Control, "phone_home" | "phone_home_delay_ms" | "guest_ssh_host_keys">;

export function phoneHomeKnobs(control: Control): PhoneHomeKnobs {
  return {
    phone_home: control.phone_home,
    phone_home_delay_ms: control.phone_home_delay_ms,
    guest_ssh_host_keys: control.guest_ssh_host_keys,
  };
}

/** What the guest process needs to send the ready report, passed to it as JSON in its environment. */
export interface PhoneHomePlan {
  url: string;
  body: string;
  token: string;
  /** Epoch ms: when the guest has booted far enough to run cloud-init's runcmd. */
  at: number;
  /** Written when the report starts: runcmd runs once per instance, not on every boot. */
  doneFile: string;
  /** The guest_ssh_host_keys file, read when the report goes out; its lines join the body as host_keys. */
  hostKeysFile?: string;
}

/**
 * The bootstrap.json a snippet writes into the guest, if it has one with a token and a controller URL.
 * Takes the snippet's text or its already parsed write_files.
 */
export function snippetBootstrap(
  userData: string | WriteFile[] | undefined,
): { token: string; controller: string; vmid: number | undefined } | undefined {
  const files = typeof userData === "string" ? snippetWriteFiles(userData) : userData;
  const file = files?.find((f) => f.path === BOOTSTRAP_JSON);
  if (!file) return undefined;
  try {
    const json = JSON.parse(writeFileText(file)) as { token?: unknown; controller?: unknown; vmid?: unknown };
    if (typeof json.token !== "string" || typeof json.controller !== "string") return undefined;
    return {
      token: json.token,
      controller: json.controller,
      vmid: typeof json.vmid === "number" ? json.vmid : undefined,
    };
  } catch {
    return undefined;
  }
}

/** When this boot's guest is up far enough for cloud-init: the agent-ready time. */
function bootedAt(ctx: Ctx, vm: VmRec): number {
  return vm.runtime.agentReadyAt ?? ctx.now + ctx.control.agent_ready_ms;
}

/**
 * The phone-home this boot makes, or undefined: knob off, no bootstrap.json in the snippet's
 * write_files, or this instance already ran its runcmd (same token reported before).
 */
export function phoneHomePlan(
  ctx: Ctx,
  vm: VmRec,
  files: WriteFile[] | undefined,
): PhoneHomePlan | undefined {
  const knobs = phoneHomeKnobs(ctx.control);
  if (knobs.phone_home === 0) return undefined;
  const bootstrap = snippetBootstrap(files);
  if (!bootstrap) return undefined;
  const doneFile = join(ctx.dir, "guests", `${vm.vmid}.ready-reported`);
  try {
    if (readFileSync(doneFile, "utf8") === bootstrap.token) return undefined;
  } catch {
    // never reported
  }
  return {
    url: `${bootstrap.controller.replace(/\/+$/, "")}/v1/guest/ready`,
    // A real guest's report comes from its bridge address and may leave `ip` out; this one comes from
    // the test host's loopback, so it names the address the guest agent reports.
    body: JSON.stringify({ vmid: bootstrap.vmid ?? vm.vmid, token: bootstrap.token, ip: guestIp(vm.vmid) }),
    token: bootstrap.token,
    at: bootedAt(ctx, vm) + knobs.phone_home_delay_ms,
    doneFile,
    ...(knobs.guest_ssh_host_keys ? { hostKeysFile: knobs.guest_ssh_host_keys } : {}),
  };
}

/** The snippet's text and its write_files, read once per boot (as PVE generates the drive at start). */
function readSnippet(ctx: Ctx, vm: VmRec): { path?: string; text?: string; files?: WriteFile[] } {
  const path = userDataPath(ctx, vm);
  if (!path) return {};
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return { path };
  }
  const files = snippetWriteFiles(text);
  return files ? { path, text, files } : { path, text };
}

/**
 * Starts the guest process in its own process group; its output goes to DIR/guests/<vmid>.log. Without
 * phone-home or job runner it is the hook command itself (`sh -c`); with either it is a node process
 * that runs the hook as its child and does at boot time what the snippet's cloud-init would, so a
 * paused VM does nothing and a stopped one never will.
 */
export function startGuestHook(ctx: Ctx, vm: VmRec): void {
  const command = ctx.control.guest_hook;
  const snippet = readSnippet(ctx, vm);
  const phoneHome = phoneHomePlan(ctx, vm, snippet.files);
  const runner = runnerPlan(ctx, vm, snippet.files, snippet.text, bootedAt(ctx, vm));
  if (!command && !phoneHome && !runner) return;
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
  if (snippet.path) env["PVESIM_USER_DATA"] = snippet.path;
  else delete env["PVESIM_USER_DATA"];
  for (const name of GUEST_PLAN_VARS) delete env[name];
  try {
    const guest = phoneHome || runner;
    const [file, args] = guest
      ? [
          process.execPath,
          [
            "--input-type=module",
            "-e",
            // This module by name, not import.meta.url: the simulator runs bundled (cli.bundle.js), which exports
            // no runGuest.
            `import { runGuest } from ${JSON.stringify(new URL("./guest.js", import.meta.url).href)}; await runGuest();`,
          ],
        ]
      : ["sh", ["-c", command]];
    if (phoneHome) env["PVESIM_PHONE_HOME"] = JSON.stringify(phoneHome);
    if (runner) env["PVESIM_RUNNER_PLAN"] = writeRunnerPlan(ctx.dir, runner);
    if (guest && command) env["PVESIM_GUEST_HOOK"] = command;
    const child = spawn(file, args, { detached: true, stdio: ["ignore", log, log], env });
    child.on("error", () => {});
    child.unref();
    if (child.pid) vm.runtime.hook = { pid: child.pid, marker };
  } finally {
    closeSync(log);
  }
}

/** How the simulator hands its plans to the node guest process; the guest's children do not see them. */
const GUEST_PLAN_VARS = ["PVESIM_PHONE_HOME", "PVESIM_RUNNER_PLAN", "PVESIM_GUEST_HOOK"];

/**
 * The body of the node guest process: start the hook (same process group, so it is signalled with us),
 * send the ready report at boot time, run the job runner after the report's first answer, then stay
 * until the hook and the runner end, because the simulator recognises the group by this process.
 */
export async function runGuest(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const hook = env["PVESIM_GUEST_HOOK"];
  const plan = JSON.parse(env["PVESIM_PHONE_HOME"] ?? "null") as PhoneHomePlan | null;
  const runnerPath = env["PVESIM_RUNNER_PLAN"];
  let runner: ReturnType<typeof readRunnerPlan> | undefined;
  try {
    runner = runnerPath ? readRunnerPlan(runnerPath) : undefined;
  } catch (error) {
    process.stdout.write(`agent-runner: cannot read ${runnerPath}: ${(error as Error).message}\n`);
  }
  const childEnv = { ...env };
  for (const name of GUEST_PLAN_VARS) delete childEnv[name];
  const hookDone = hook
    ? new Promise<void>((resolve) => {
        const child = spawn("sh", ["-c", hook], { stdio: "inherit", env: childEnv });
        child.on("error", () => resolve());
        child.on("exit", () => resolve());
      })
    : Promise.resolve();
  // runcmd starts the report in the background and the runner next: the runner does not wait for retries.
  let answered: () => void = () => {};
  const firstAnswer = new Promise<void>((resolve) => {
    answered = resolve;
  });
  if (!plan) answered();
  const reported = plan ? reportReady(plan, answered).finally(answered) : Promise.resolve();
  const ran = runner ? runAgentRunner(runner, childEnv, firstAnswer) : Promise.resolve();
  const outcomes = await Promise.allSettled([hookDone, reported, ran]);
  for (const outcome of outcomes) {
    if (outcome.status === "rejected") process.stdout.write(`guest: ${String(outcome.reason)}\n`);
  }
}

/**
 * Mirrors the snippet's report-ready script: 10 attempts, 1 s doubling to 30 s, stop at a refusal.
 * `answered` is called once the first attempt has its outcome.
 */
async function reportReady(plan: PhoneHomePlan, answered: () => void): Promise<void> {
  // Node loads its HTTP client (undici) at the first fetch: 40-200 ms of this process's start-up, not of
  // the guest's boot or the daemon. A real guest's curl is on disk when runcmd runs, so load it now: the
  // report then leaves when the done file says (bench/overhead.ts reads that as the guest's send time).
  await fetch("data:,").catch(() => {});
  await sleep(Math.max(0, plan.at - Date.now()));
  writeFileSync(plan.doneFile, plan.token);
  const body = withHostKeys(plan);
  let delay = 1_000;
  for (let attempt = 1; attempt <= 10; attempt++) {
    let status = 0;
    let detail = "";
    try {
      const res = await fetch(plan.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body,
        signal: AbortSignal.timeout(15_000),
      });
      status = res.status;
      detail = (await res.text()).trim();
    } catch (error) {
      detail = (error as Error).cause ? String((error as Error).cause) : String(error);
    }
    process.stdout.write(
      `phone-home: POST ${plan.url} attempt ${attempt}: ${status || "no answer"} ${detail}\n`,
    );
    answered();
    if ((status >= 200 && status < 300) || [400, 403, 404, 405].includes(status)) return;
    await sleep(delay);
    delay = Math.min(delay * 2, 30_000);
  }
}

/**
 * The report's body with the host keys file's lines (whole, comments included: the daemon drops them)
 * as `host_keys`, as the guest script adds its /etc/ssh keys. A file that cannot be read sends none.
 */
function withHostKeys(plan: PhoneHomePlan): string {
  if (!plan.hostKeysFile) return plan.body;
  let lines: string[];
  try {
    lines = readFileSync(plan.hostKeysFile, "utf8")
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "" && !line.startsWith("#"));
  } catch (error) {
    process.stdout.write(
      `phone-home: cannot read host keys ${plan.hostKeysFile}: ${(error as Error).message}\n`,
    );
    return plan.body;
  }
  if (lines.length === 0) return plan.body;
  return JSON.stringify({ ...(JSON.parse(plan.body) as object), host_keys: lines });
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
