/**
 * Starting the simulator from tests: a temp state directory, the environment that puts the fake
 * `qm`/`pvesh`/`pvesm` first in PATH (shell backend), and an HTTPS endpoint with CA and token (API
 * backend). Knobs and faults go through the same control file the `pvesim control` CLI writes.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { type AuthId, ROOT } from "./access.js";
import { type CallSpan, type CallStats, callSequence, callSpans, callStats, resetCalls } from "./call-log.js";
import type { Ctx } from "./context.js";
import { type Control, type Knobs, parseFault, updateControl } from "./control.js";
import { rebootNodes } from "./host-cli.js";
import { QEMU_RUN_DIR } from "./host-files.js";
import { controlPath } from "./paths.js";
import { qemuPid } from "./qemu.js";
import type { RouteResult } from "./routes.js";
import { callApi, withModel } from "./runner.js";
import type { RawParams } from "./schema.js";
import { initCluster } from "./seed.js";
import { startServer } from "./server.js";
import { writeFileAtomic } from "./store.js";
import { findTask } from "./tasks.js";
import type { TaskRec } from "./types.js";

/** Repository root, from dist/test/pvesim/. */
const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url)).replace(/\/$/, "");
export const PVESIM_BIN_DIR = join(REPO_ROOT, "test", "pvesim", "bin");
/**
 * The simulator's CLI as one file (`npm run build` bundles dist/test/pvesim/cli.js with esbuild): every
 * simulated `pvesh`, `qm` and `pvesm` is a new Node process, and loading ~45 modules that import each
 * other cost more CPU than the call itself (README, "The shell faces' cost").
 */
export const PVESIM_CLI = join(REPO_ROOT, "dist", "test", "pvesim", "cli.bundle.js");

export interface SimOptions {
  nodes?: string[];
  /** Template VMID (0 = none); default 9000. */
  template?: number;
  knobs?: Partial<Knobs>;
  /** Storage specs as for `pvesim init --storages`, e.g. `[...DEFAULT_STORAGES, "thick:lvm:vmdata"]`. */
  storages?: string[];
}

export interface Sim {
  dir: string;
  /** `root@pam!agentlab=<uuid>` with full rights (privsep 0). */
  token: string;
  /** Environment for a child process using the shell backend. */
  env: NodeJS.ProcessEnv;
  cleanup(): void;
}

export function createSim(opts: SimOptions = {}): Sim {
  const dir = mkdtempSync(join(tmpdir(), "pvesim-"));
  // Knobs first: init reads them (guests=qemu puts the guest image in the template's disk).
  if (opts.knobs)
    writeFileAtomic(controlPath(dir), `${JSON.stringify({ ...opts.knobs, faults: [] }, null, 2)}\n`);
  let token: string;
  try {
    token = initCluster(dir, {
      nodes: opts.nodes ?? ["pve"],
      template: opts.template ?? 9000,
      cluster: "agentlab-sim",
      force: false,
      ...(opts.storages ? { storages: opts.storages } : {}),
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${PVESIM_BIN_DIR}:${process.env["PATH"] ?? "/usr/bin:/bin"}`,
    PVESIM_DIR: dir,
    PVESIM_NODE_BIN: process.execPath,
    // The launchers in bin/ find the program without a readlink and a dirname process per call.
    PVESIM_CLI,
  };
  delete env["PVESIM_NODE"];
  const cleanup = (): void => {
    killRealGuests(dir);
    rmSync(dir, { recursive: true, force: true });
  };
  const sim: Sim = { dir, token, env, cleanup };
  return sim;
}

/** What a daemon needs in its environment to run the simulator's CLIs (shell backend, host tools). */
export function toolsEnv(sim: Sim): NodeJS.ProcessEnv {
  const { PATH, PVESIM_DIR, PVESIM_NODE_BIN, PVESIM_CLI } = sim.env;
  return { PATH, PVESIM_DIR, PVESIM_NODE_BIN, PVESIM_CLI };
}

/** Sets knobs and adds faults (`name[=args]`, as `pvesim control --fault`). */
export async function setControl(
  dir: string,
  knobs: Partial<Knobs> = {},
  faults: string[] = [],
): Promise<Control> {
  return updateControl(dir, (c) => {
    Object.assign(c, knobs);
    c.faults.push(...faults.map((f) => parseFault(f)));
  });
}

/** A host reboot (`pvesim control --host-reboot`): VMs stop, LVs go inactive; one node or all. */
export function hostReboot(dir: string, node?: string): Promise<void> {
  return rebootNodes(dir, node);
}

export async function clearFaults(dir: string): Promise<void> {
  await updateControl(dir, (c) => {
    c.faults = [];
  });
}

/** Calls per route and peak concurrency since the last reset (call-log.ts). */
export { type CallSpan, type CallStats, callSequence, callSpans, callStats, resetCalls };

/** Reads or changes the model directly (settled, under the lock). */
export function inspect<T>(dir: string, fn: (ctx: Ctx) => T): Promise<T> {
  return withModel(dir, fn);
}

/**
 * Make VM `vmid`'s guest keep `cores` of its vCPUs busy (0: idle), as work inside the guest would;
 * `cpu` in status/current and /cluster/resources follows. The VM must be running: a stop ends the load.
 */
export function setGuestLoad(dir: string, vmid: number, cores: number): Promise<void> {
  return withModel(dir, (ctx) => {
    const vm = ctx.state.vms[String(vmid)];
    if (vm?.runtime.status !== "running") throw new Error(`VM ${vmid} is not running`);
    vm.runtime.load = Math.max(0, cores);
  });
}

/** One API call in-process (no HTTP), as root@pam unless `auth` says otherwise; `path` is raw, as routed after the HTTP face unescaped it. */
export function api(
  sim: Sim,
  method: string,
  path: string,
  params: RawParams = {},
  auth: AuthId = ROOT,
): Promise<RouteResult> {
  return callApi(sim.dir, { method, path, params, auth, localNode: "pve" });
}

/** Polls until a task has stopped and returns its record. */
export async function waitTask(sim: Sim, upid: string, timeoutMs = 10_000): Promise<TaskRec> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const task = await withModel(sim.dir, (ctx) => findTask(ctx, upid));
    if (!task) throw new Error(`no task ${upid}`);
    if (task.phase === "done") return task;
    if (Date.now() > deadline) throw new Error(`task ${upid} still running after ${timeoutMs} ms`);
    const wait = task.endAt !== undefined ? task.endAt - Date.now() : 10;
    await sleep(Math.max(2, Math.min(100, wait + 1)));
  }
}

/** Starts a task through the API and waits for it. */
export async function apiTask(
  sim: Sim,
  method: string,
  path: string,
  params: RawParams = {},
): Promise<TaskRec> {
  const result = await api(sim, method, path, params);
  if (typeof result.data !== "string" || !result.data.startsWith("UPID:")) {
    throw new Error(`${method} ${path} did not start a task: ${JSON.stringify(result.data)}`);
  }
  return waitTask(sim, result.data);
}

export interface ToolResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `qm`/`pvesh`/`pvesm` by name through PATH, the way the shell backend does. */
export function runTool(
  sim: Sim,
  tool: string,
  args: string[],
  extraEnv: NodeJS.ProcessEnv = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { env: { ...sim.env, ...extraEnv }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

export interface SimApi {
  url: string;
  port: number;
  caPath: string;
  ca: string;
  /** Full token (`USER@REALM!ID=SECRET`) for `Authorization: PVEAPIToken=<token>`. */
  token: string;
  tokenId: string;
  tokenSecret: string;
  stop(): Promise<void>;
}

function apiFrom(sim: Sim, url: string, port: number, caPath: string, stop: () => Promise<void>): SimApi {
  const eq = sim.token.indexOf("=");
  return {
    url,
    port,
    caPath,
    ca: readFileSync(caPath, "utf8"),
    token: sim.token,
    tokenId: sim.token.slice(0, eq),
    tokenSecret: sim.token.slice(eq + 1),
    stop,
  };
}

/** The HTTPS API inside this process (quickest; the state is still shared through DIR). */
export async function startApi(sim: Sim): Promise<SimApi> {
  const running = await startServer(sim.dir);
  return apiFrom(sim, running.url, running.port, running.caPath, () => running.close());
}

/** The HTTPS API as its own process (`pvesim serve DIR`), like a real remote endpoint. */
export function startApiProcess(sim: Sim): Promise<SimApi> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [PVESIM_CLI, "serve", sim.dir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stderr.on("data", (c: Buffer) => (err += c.toString()));
    child.on("exit", (code) => reject(new Error(`pvesim serve exited with ${code}: ${err}`)));
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      const nl = out.indexOf("\n");
      if (nl < 0) return;
      const info = JSON.parse(out.slice(0, nl)) as { url: string; port: number; ca_path: string };
      child.removeAllListeners("exit");
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      resolve(
        apiFrom(sim, info.url, info.port, info.ca_path, async () => {
          child.kill("SIGTERM");
          await exited;
        }),
      );
    });
  });
}

/** Real guests (guests=qemu) outlive the processes that started them: a test's cleanup kills them. */
export function killRealGuests(dir: string): void {
  const run = join(dir, "host", QEMU_RUN_DIR);
  // A test may have replaced the run dir by a file (to make QEMU's start fail): then no guest runs.
  const names = existsSync(run) && statSync(run).isDirectory() ? readdirSync(run) : [];
  for (const name of names) {
    if (!name.endsWith(".pid")) continue;
    const pid = qemuPid(join(run, name));
    if (pid) process.kill(pid, "SIGKILL");
  }
}

/**
 * A built guest image for guests=qemu tests: `PVESIM_GUEST_IMAGE`, else the newest complete one in
 * scripts/dev/guest-image's cache (/var/cache/agentlab/guest-image/<key>/, complete once manifest.json
 * exists). Undefined when there is none.
 */
export function findGuestImage(cache = "/var/cache/agentlab/guest-image"): string | undefined {
  const given = process.env["PVESIM_GUEST_IMAGE"];
  if (given) return existsSync(join(given, "manifest.json")) ? given : undefined;
  let best: { dir: string; mtime: number } | undefined;
  for (const name of existsSync(cache) ? readdirSync(cache) : []) {
    const manifest = join(cache, name, "manifest.json");
    if (!existsSync(manifest)) continue;
    const mtime = statSync(manifest).mtimeMs;
    if (!best || mtime > best.mtime) best = { dir: join(cache, name), mtime };
  }
  return best?.dir;
}
