/**
 * The guest's cloud-init `write_files` and agentlab's job runner (JOBS-CONTRACT §4). A snippet that
 * writes /usr/local/lib/agentlab/agent-runner makes the booted guest write every file of the snippet
 * under its own root directory, DIR/guests/<vmid>/root, and run the runner there with
 * AGENTLAB_GUEST_ROOT pointing at it, the way the snippet's runcmd starts it on a real guest.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  appendFileSync,
  chmodSync,
  mkdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, posix } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { gunzipSync } from "node:zlib";
import { load } from "js-yaml";
import type { Ctx } from "./context.js";
import { guestWorkDir } from "./paths.js";
import type { VmRec } from "./types.js";
import { parseDrive } from "./vmconfig.js";

/** Where a booted guest's cloud-init finds the daemon and its tokens (see src/daemon/guest/cloud-init.ts). */
export const BOOTSTRAP_JSON = "/etc/agentlab/bootstrap.json";
/** The file whose presence in write_files marks a job sandbox. */
export const AGENT_RUNNER_PATH = "/usr/local/lib/agentlab/agent-runner";

/** One `write_files` entry as cloud-init reads it; `owner` and `defer` do not matter here. */
export interface WriteFile {
  path: string;
  /** The text, or base64 of the bytes when the YAML gave binary (`!!binary`) content. */
  content: string;
  binary?: boolean;
  encoding?: string;
  /** An octal string (`"0755"`) or, as cloud-init takes an integer, the mode itself. */
  permissions?: string | number;
  append?: boolean;
  /** `source:` (content fetched from a URL) is not modelled; such an entry is skipped with a log line. */
  source?: boolean;
}

/** The snippet's `write_files`, or undefined when it is not YAML or has none. */
export function snippetWriteFiles(userData: string): WriteFile[] | undefined {
  let doc: unknown;
  try {
    doc = load(userData);
  } catch {
    return undefined;
  }
  const entries = (doc as { write_files?: unknown } | null)?.write_files;
  if (!Array.isArray(entries)) return undefined;
  const files: WriteFile[] = [];
  for (const entry of entries) {
    if (entry === null || typeof entry !== "object") continue;
    const e = entry as Record<string, unknown>;
    if (typeof e["path"] !== "string") continue;
    const content = e["content"];
    const file: WriteFile = { path: e["path"], content: "" };
    if (content instanceof Uint8Array) {
      file.content = Buffer.from(content).toString("base64");
      file.binary = true;
    } else if (typeof content === "string" || typeof content === "number" || typeof content === "boolean") {
      // cloud-init writes scalars as their text, and an entry without content as an empty file.
      file.content = String(content);
    }
    if (typeof e["encoding"] === "string") file.encoding = e["encoding"];
    if (typeof e["permissions"] === "string" || typeof e["permissions"] === "number")
      file.permissions = e["permissions"];
    if (e["append"] === true) file.append = true;
    if (e["source"] !== undefined) file.source = true;
    files.push(file);
  }
  return files;
}

/** The guest's filesystem root on the host. */
export function guestRoot(dir: string, vmid: number): string {
  return join(dir, "guests", String(vmid), "root");
}

/** What the guest process needs to write the files and run the runner (stored as JSON, see below). */
export interface RunnerPlan {
  vmid: number;
  root: string;
  /**
   * The VM the root belongs to. A VM destroyed and created again under the same VMID has a new disk, so
   * its guest starts from an empty root (no cached bootstrap or clone of an earlier job).
   */
  vm: string;
  files: WriteFile[];
  /**
   * The workspace's files when a volume is the VM's scsi1 (the disk a real guest mounts at /work):
   * the guest's /work is a symlink to it.
   */
  work?: string;
  /** False when the `runner` knob is 0: the files are written, the runner is not started. */
  run: boolean;
  /** The instance: the job token, or (no job token) a hash of the snippet. */
  key: string;
  /** Holds `key` once the runner was started: like runcmd, it runs once per instance. */
  doneFile: string;
  /** Epoch ms: when the guest has booted far enough for cloud-init's write_files. */
  at: number;
}

function jobToken(files: WriteFile[]): string | undefined {
  const file = files.find((f) => f.path === BOOTSTRAP_JSON);
  if (!file) return undefined;
  try {
    const token = (JSON.parse(writeFileText(file)) as { job_token?: unknown }).job_token;
    return typeof token === "string" && token !== "" ? token : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The runner this boot runs, or undefined: no snippet, no agent-runner in its write_files, or this
 * instance ran it already (a reboot does not run a job again).
 */
export function runnerPlan(
  ctx: Ctx,
  vm: VmRec,
  files: WriteFile[] | undefined,
  userData: string | undefined,
  bootedAt: number,
): RunnerPlan | undefined {
  if (!files?.some((f) => f.path === AGENT_RUNNER_PATH)) return undefined;
  const snippetHash = createHash("sha256")
    .update(userData ?? "")
    .digest("hex");
  const key = jobToken(files) ?? `sha256:${snippetHash}`;
  const doneFile = join(ctx.dir, "guests", `${vm.vmid}.runner-ran`);
  try {
    if (readFileSync(doneFile, "utf8") === key) return undefined;
  } catch {
    // never ran
  }
  const workspace = vm.config["scsi1"] !== undefined ? parseDrive(vm.config["scsi1"]).file : "";
  return {
    vmid: vm.vmid,
    root: guestRoot(ctx.dir, vm.vmid),
    vm: `${vm.node}/${vm.vmid}/${vm.createdAt}`,
    // A volume id (`storage:volname`), not `none` or a cdrom.
    ...(workspace.includes(":") ? { work: guestWorkDir(ctx.dir, vm.node, workspace) } : {}),
    files,
    run: ctx.control.runner !== 0,
    key,
    doneFile,
    at: bootedAt,
  };
}

/**
 * Stores the plan for the guest process, like the cloud-init drive PVE generates at start. A file, not
 * the environment: the runner script alone can exceed what one environment string may hold.
 */
export function writeRunnerPlan(dir: string, plan: RunnerPlan): string {
  const path = join(dir, "guests", `${plan.vmid}.runner-plan.json`);
  writeFileSync(path, JSON.stringify(plan));
  return path;
}

export function readRunnerPlan(path: string): RunnerPlan {
  return JSON.parse(readFileSync(path, "utf8")) as RunnerPlan;
}

/** The text an entry writes (throws on an encoding cloud-init does not know or bad gzip data). */
export function writeFileText(file: WriteFile): string {
  return decodeBytes(file).toString("utf8");
}

/** cloud-init's encodings: plain, base64, gzip, gzip then base64. */
function decodeBytes(file: WriteFile): Buffer {
  const raw = file.binary ? Buffer.from(file.content, "base64") : Buffer.from(file.content, "utf8");
  switch ((file.encoding ?? "text/plain").toLowerCase()) {
    case "text/plain":
      return raw;
    case "b64":
    case "base64":
      return Buffer.from(raw.toString("latin1"), "base64");
    case "gz":
    case "gzip":
      return gunzipSync(raw);
    case "gz+b64":
    case "gz+base64":
    case "gzip+b64":
    case "gzip+base64":
      return gunzipSync(Buffer.from(raw.toString("latin1"), "base64"));
    default:
      throw new Error(`unknown encoding '${file.encoding}' (cloud-init knows b64, gz, gz+b64)`);
  }
}

/**
 * cloud-init's decode_perms: default 0644, a string is octal, an integer is the mode itself; what it
 * cannot decode gets the default and a warning.
 */
function fileMode(file: WriteFile): number {
  const p = file.permissions;
  if (p === undefined) return 0o644;
  if (typeof p === "number" && Number.isInteger(p) && p >= 0 && p <= 0o7777) return p;
  const octal = typeof p === "string" ? /^(?:0o?)?([0-7]{1,4})$/.exec(p.trim()) : null;
  if (octal) return Number.parseInt(octal[1]!, 8);
  log(
    `write_files: ${file.path}: undecodable permissions '${p}', using 0644 (write an octal string such as '0755')`,
  );
  return 0o644;
}

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** A new VM under this VMID gets an empty root; the same VM keeps what its earlier boots wrote. */
function claimRoot(plan: RunnerPlan): void {
  const owner = join(dirname(plan.root), "vm");
  let previous: string | undefined;
  try {
    previous = readFileSync(owner, "utf8");
  } catch {
    // no earlier guest
  }
  if (previous !== plan.vm) {
    rmSync(plan.root, { recursive: true, force: true });
    mkdirSync(dirname(plan.root), { recursive: true });
    writeFileSync(owner, plan.vm);
  }
  mkdirSync(plan.root, { recursive: true });
  const work = join(plan.root, "work");
  rmSync(work, { recursive: true, force: true });
  if (plan.work) {
    mkdirSync(plan.work, { recursive: true });
    symlinkSync(plan.work, work);
  }
}

/** write_files: each entry under the root with its mode; a bad entry is logged and skipped, as cloud-init does. */
function writeFiles(plan: RunnerPlan): void {
  for (const file of plan.files) {
    try {
      if (file.source) throw new Error("'source' is not modelled by the simulator");
      if (!file.path.startsWith("/")) throw new Error("the path must be absolute");
      // normalize keeps "/.." at "/", so every entry stays inside the root.
      const target = join(plan.root, posix.normalize(file.path));
      const bytes = decodeBytes(file);
      const mode = fileMode(file);
      mkdirSync(dirname(target), { recursive: true });
      if (file.append) appendFileSync(target, bytes);
      else writeFileSync(target, bytes);
      // cloud-init sets the mode exactly; the mode of a file we create would be cut by our umask.
      chmodSync(target, mode);
    } catch (error) {
      log(`write_files: ${file.path}: ${(error as Error).message}`);
    }
  }
}

/**
 * The guest's part: at boot time write the files, then, once the ready report had its first answer (or
 * at once without one), run the runner in this process group and wait for it, so that a stopped VM
 * takes it down and a paused one stops it.
 */
export async function runAgentRunner(
  plan: RunnerPlan,
  env: NodeJS.ProcessEnv,
  reported: Promise<void>,
): Promise<void> {
  await sleep(Math.max(0, plan.at - Date.now()));
  try {
    claimRoot(plan);
  } catch (error) {
    log(`agent-runner: cannot prepare the guest root ${plan.root}: ${(error as Error).message}`);
    return;
  }
  writeFiles(plan);
  if (!plan.run) {
    log("agent-runner: not started (knob runner=0)");
    return;
  }
  await reported;
  writeFileSync(plan.doneFile, plan.key);
  const script = join(plan.root, AGENT_RUNNER_PATH);
  log(`agent-runner: sh ${script}`);
  const outcome = await new Promise<string>((resolve) => {
    // cwd is the guest's "/", where systemd starts a unit.
    const child = spawn("sh", [script], {
      cwd: plan.root,
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...env, AGENTLAB_GUEST_ROOT: plan.root },
    });
    child.on("error", (error) => resolve(`failed to start: ${error.message}`));
    child.on("exit", (code, signal) => resolve(signal ? `killed by ${signal}` : `exit ${code}`));
  });
  log(`agent-runner: ${outcome}`);
}
