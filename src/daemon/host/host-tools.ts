/**
 * Programs that run on the Proxmox node itself, beside the daemon (design §8.1): e2fsck, blkid,
 * mkfs.ext4, lvs/lvchange, zfs, partx and losetup. They sit behind one interface, separate from the
 * Proxmox backends (which are pvesh/API only), so services can be tested against a recorder and the
 * simulator can provide fake `zfs`/`lvs`/`lvchange` through PATH.
 *
 * Every program runs through execa with an argument array, never a shell, and is resolved in the PATH
 * of the environment given to the constructor. Arguments that name devices, volume groups or datasets
 * are checked first, so nothing a caller passes can turn into an option (`-rf`-style) of the program.
 */
import { accessSync, constants, statSync } from "node:fs";
import { delimiter, isAbsolute, join } from "node:path";
import { execa } from "execa";
import { AgentlabError } from "../../protocol/errors.js";
import type { HostToolPool } from "./tool-pool.js";

/** e2fsck's two ways of running: `-f -n` (read-only, answers no) or `-f -y` (repair, answers yes). */
export type E2fsckMode = "check" | "repair";

/** What `blkid -p -o export` found on a device. */
export interface BlkidInfo {
  /** Filesystem or other content type, e.g. `ext4`, `swap`, `xfs`. */
  type?: string;
  label?: string;
  uuid?: string;
  /** Partition-table type (`dos`, `gpt`) when the device carries one. */
  ptType?: string;
  /** `filesystem`, `other`, `raid`, `crypto`. */
  usage?: string;
  /** Every KEY=value pair blkid printed. */
  fields: Record<string, string>;
}

/**
 * blkid's answer: what it found, `none` (no signature at all: a never-formatted volume), or
 * `ambivalent` (more than one signature, so nothing can say which one is real).
 */
export type BlkidResult = BlkidInfo | "none" | "ambivalent";

export interface E2fsckResult {
  /** The exit status; undefined when e2fsck was killed by a signal. */
  exitCode: number | undefined;
  /** The signal that killed it, if one did. */
  signal: string | undefined;
  /** stdout and stderr together, the last FSCK_OUTPUT_LIMIT bytes. */
  output: string;
  /** The command line, for showing to a person (not for running). */
  command: string;
}

/** One entry of a partition table, in 512-byte sectors (libblkid's unit, whatever the device's). */
export interface PartitionEntry {
  number: number;
  startSector: number;
  sectors: number;
}

export interface LoopOptions {
  offsetBytes: number;
  sizeBytes: number;
  readOnly: boolean;
}

export interface HostTools {
  /** Whether e2fsck resolves in PATH: the minimum for any host-side workspace work. */
  available(): Promise<boolean>;
  blkid(device: string): Promise<BlkidResult>;
  /**
   * `e2fsck -f -n <device>` or `e2fsck -f -y <device>`. Resolves with whatever exit status e2fsck had
   * (its bits are the result, not a failure). With a signal, aborting stops e2fsck and rejects with
   * CANCELLED once it has exited; callers decide whether a run may be cancelled at all.
   */
  e2fsck(device: string, mode: E2fsckMode, signal?: AbortSignal): Promise<E2fsckResult>;
  /** `mkfs.ext4 -F -q -L <label> -m 0 <path>`: the workspace contract's whole-disk ext4. */
  mkfsExt4(path: string, label: string): Promise<void>;
  /** `lvs --noheadings -o lv_active <vg>/<lv>`: whether the LV is active on this node. */
  lvActive(vg: string, lv: string): Promise<boolean>;
  /** `lvchange -ay -K <vg>/<lv>`: activate, ignoring the activation-skip flag, as PVE does. */
  lvActivate(vg: string, lv: string): Promise<void>;
  /** `lvchange -an <vg>/<lv>`. */
  lvDeactivate(vg: string, lv: string): Promise<void>;
  /** `zfs clone <dataset>@<snapshot> <target>`. */
  zfsClone(origin: string, target: string): Promise<void>;
  /** `partx -g -r -o NR,START,SECTORS <device>`: the partition table as the kernel would read it. */
  partitions(device: string): Promise<PartitionEntry[]>;
  /** `losetup -f --show [-r] --offset N --sizelimit M <file>`: a loop device over a byte range. */
  loopAttach(file: string, options: LoopOptions): Promise<string>;
  /** `losetup -d <loop>`. */
  loopDetach(loop: string): Promise<void>;
}

/** How much of e2fsck's output is kept (the end of it, where the verdict is). */
export const FSCK_OUTPUT_LIMIT = 64 * 1024;

/** Which Debian package provides each program, for the "install it" hint. */
const PACKAGES: Record<string, string> = {
  e2fsck: "e2fsprogs",
  "mkfs.ext4": "e2fsprogs",
  blkid: "util-linux",
  partx: "util-linux",
  losetup: "mount",
  lvs: "lvm2",
  lvchange: "lvm2",
  zfs: "zfsutils-linux",
};

/** Bounds for the quick commands; e2fsck and mkfs run as long as the volume needs. */
const QUICK_TIMEOUT_MS = 60_000;

/** A command line for people to read and paste: arguments with unusual characters are single-quoted. */
export function renderCommand(argv: readonly string[]): string {
  return argv
    .map((arg) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`))
    .join(" ");
}

/** Find a program the way execa will: the first executable file of that name in PATH. */
export function resolveProgram(name: string, path: string | undefined): string | undefined {
  for (const dir of (path ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      if (!statSync(candidate).isFile()) continue;
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; keep looking.
    }
  }
  return undefined;
}

/** Keeps the last `limit` bytes of a stream, counting what it dropped. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  dropped = 0;

  constructor(private readonly limit: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size - this.chunks[0]!.length >= this.limit) {
      const first = this.chunks.shift()!;
      this.size -= first.length;
      this.dropped += first.length;
    }
  }

  text(): string {
    let all = Buffer.concat(this.chunks);
    if (all.length > this.limit) {
      this.dropped += all.length - this.limit;
      all = all.subarray(all.length - this.limit);
      this.chunks = [all];
      this.size = all.length;
    }
    // Start on a character boundary: skip UTF-8 continuation bytes left by the cut.
    let start = 0;
    if (this.dropped > 0) while (start < all.length && (all[start]! & 0xc0) === 0x80) start++;
    const text = all.subarray(start).toString("utf8");
    return this.dropped + start > 0
      ? `[${this.dropped + start} bytes of earlier output omitted]\n${text}`
      : text;
  }
}

function requireAbsolutePath(what: string, path: string): void {
  if (!isAbsolute(path)) {
    throw new AgentlabError("INVALID_PARAMS", `${what} must be an absolute path, got "${path}"`, {
      hint: "pass the path pvesm path <volid> prints",
    });
  }
}

// LVM's own naming rule; a leading "-" would also read as an option.
const LVM_NAME = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/;
const ZFS_DATASET = /^[A-Za-z0-9][A-Za-z0-9_.:/-]*$/;

function requireLvmNames(vg: string, lv: string): void {
  for (const [what, name] of [
    ["volume group", vg],
    ["logical volume", lv],
  ] as const) {
    if (!LVM_NAME.test(name)) {
      throw new AgentlabError("INVALID_PARAMS", `invalid LVM ${what} name "${name}"`, {
        hint: "use the names lvs prints (letters, digits, + _ . -, not starting with -)",
      });
    }
  }
}

export interface ExecaHostToolsOptions {
  /** Environment for every program; its PATH decides which programs run (the simulator's, in tests). */
  env?: NodeJS.ProcessEnv;
  /** Bound for the quick commands (blkid, lvs, lvchange, zfs, partx, losetup). */
  timeoutMs?: number;
  /** Where every run waits for a slot (the daemon's one host tool pool); none: runs start at once. */
  pool?: HostToolPool;
}

interface RunOptions {
  /** false for programs whose run time grows with the volume (mkfs). */
  timeout?: boolean;
}

interface Ran {
  command: string;
  exitCode: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
}

/** The real host tools: each method is one program run. */
export class ExecaHostTools implements HostTools {
  private readonly env: NodeJS.ProcessEnv;
  private readonly timeoutMs: number;
  private readonly pool: HostToolPool | undefined;

  constructor(options: ExecaHostToolsOptions = {}) {
    this.pool = options.pool;
    // LC_ALL=C keeps the programs' messages in the English the docs and parsers expect.
    this.env = { ...(options.env ?? process.env), LC_ALL: "C" };
    this.timeoutMs = options.timeoutMs ?? QUICK_TIMEOUT_MS;
  }

  async available(): Promise<boolean> {
    return resolveProgram("e2fsck", this.env["PATH"]) !== undefined;
  }

  async blkid(device: string): Promise<BlkidResult> {
    requireAbsolutePath("device", device);
    // blkid says "nothing found" (exit 2) for a missing path too; that must not read as "never formatted".
    try {
      statSync(device);
    } catch {
      throw new AgentlabError("NOT_FOUND", `device ${device} does not exist`, {
        hint: "check the volume path (pvesm path <volid>) and that the volume is active",
      });
    }
    const ran = await this.run("blkid", ["-p", "-o", "export", device]);
    if (ran.exitCode === 2) return "none";
    if (ran.exitCode === 8) return "ambivalent";
    if (ran.exitCode !== 0) throw this.failed(ran, `check the device: ls -l ${device}`);
    const fields: Record<string, string> = {};
    for (const line of ran.stdout.split("\n")) {
      const eq = line.indexOf("=");
      if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
    }
    const info: BlkidInfo = { fields };
    if (fields["TYPE"] !== undefined) info.type = fields["TYPE"];
    if (fields["LABEL"] !== undefined) info.label = fields["LABEL"];
    if (fields["UUID"] !== undefined) info.uuid = fields["UUID"];
    if (fields["PTTYPE"] !== undefined) info.ptType = fields["PTTYPE"];
    if (fields["USAGE"] !== undefined) info.usage = fields["USAGE"];
    return info;
  }

  async e2fsck(device: string, mode: E2fsckMode, signal?: AbortSignal): Promise<E2fsckResult> {
    requireAbsolutePath("device", device);
    const args = ["-f", mode === "repair" ? "-y" : "-n", device];
    const command = renderCommand(["e2fsck", ...args]);
    // Output is streamed into a bounded tail instead of execa's buffer: a badly damaged filesystem can
    // make e2fsck print far more than any buffer, and execa kills a program that overflows its buffer,
    // which in the middle of a repair would do real harm.
    const tail = new TailBuffer(FSCK_OUTPUT_LIMIT);
    const result = await this.slot("e2fsck", signal, async () => {
      const subprocess = execa("e2fsck", args, {
        env: this.env,
        reject: false,
        stdin: "ignore",
        all: true,
        buffer: false,
        ...(signal ? { cancelSignal: signal } : {}),
      });
      subprocess.all?.on("data", (chunk: Buffer) => tail.push(chunk));
      return await subprocess;
    });
    if (result.isCanceled) {
      throw new AgentlabError("CANCELLED", `${command}: cancelled`, {
        cause: signal?.reason,
        details: { command, output: tail.text() },
      });
    }
    if (result.exitCode === undefined && result.signal === undefined) throw this.cannotRun("e2fsck", result);
    return { exitCode: result.exitCode, signal: result.signal, output: tail.text(), command };
  }

  async mkfsExt4(path: string, label: string): Promise<void> {
    requireAbsolutePath("volume path", path);
    // ext4 labels hold 16 bytes; mkfs would silently cut a longer one.
    if (label === "" || Buffer.byteLength(label) > 16) {
      throw new AgentlabError("INVALID_PARAMS", `ext4 label "${label}" must be 1 to 16 bytes long`);
    }
    const ran = await this.run("mkfs.ext4", ["-F", "-q", "-L", label, "-m", "0", path], { timeout: false });
    if (ran.exitCode !== 0) throw this.failed(ran, `check that nothing uses ${path} and that it is writable`);
  }

  async lvActive(vg: string, lv: string): Promise<boolean> {
    requireLvmNames(vg, lv);
    const ran = await this.run("lvs", ["--noheadings", "-o", "lv_active", `${vg}/${lv}`]);
    if (ran.exitCode !== 0) throw this.failed(ran, `check that the LV exists: lvs ${vg}`);
    // "active" (or "local exclusive", ... in clusters) when active; empty when not.
    return ran.stdout.trim() !== "";
  }

  async lvActivate(vg: string, lv: string): Promise<void> {
    requireLvmNames(vg, lv);
    const ran = await this.run("lvchange", ["-ay", "-K", `${vg}/${lv}`]);
    if (ran.exitCode !== 0) throw this.failed(ran, `check the LV and its thin pool: lvs -a ${vg}`);
  }

  async lvDeactivate(vg: string, lv: string): Promise<void> {
    requireLvmNames(vg, lv);
    const ran = await this.run("lvchange", ["-an", `${vg}/${lv}`]);
    if (ran.exitCode !== 0) {
      throw this.failed(
        ran,
        `check what holds the LV open (lsblk /dev/${vg}/${lv}), then lvchange -an ${vg}/${lv}`,
      );
    }
  }

  async zfsClone(origin: string, target: string): Promise<void> {
    const at = origin.indexOf("@");
    if (
      at <= 0 ||
      origin.indexOf("@", at + 1) >= 0 ||
      !ZFS_DATASET.test(origin.slice(0, at)) ||
      at === origin.length - 1
    ) {
      throw new AgentlabError(
        "INVALID_PARAMS",
        `zfs clone origin must be <dataset>@<snapshot>, got "${origin}"`,
      );
    }
    if (!ZFS_DATASET.test(target)) {
      throw new AgentlabError("INVALID_PARAMS", `zfs clone target must be a dataset name, got "${target}"`);
    }
    const ran = await this.run("zfs", ["clone", origin, target]);
    if (ran.exitCode !== 0)
      throw this.failed(ran, `check the datasets: zfs list -t all -r ${origin.slice(0, at)}`);
  }

  async partitions(device: string): Promise<PartitionEntry[]> {
    requireAbsolutePath("device", device);
    const ran = await this.run("partx", ["-g", "-r", "-o", "NR,START,SECTORS", device]);
    if (ran.exitCode !== 0) throw this.failed(ran, `inspect the partition table: partx -s ${device}`);
    const entries: PartitionEntry[] = [];
    for (const line of ran.stdout.split("\n")) {
      const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s*$/.exec(line);
      if (m) entries.push({ number: Number(m[1]), startSector: Number(m[2]), sectors: Number(m[3]) });
    }
    return entries;
  }

  async loopAttach(file: string, options: LoopOptions): Promise<string> {
    requireAbsolutePath("file", file);
    const args = ["-f", "--show"];
    if (options.readOnly) args.push("-r");
    args.push("--offset", String(options.offsetBytes), "--sizelimit", String(options.sizeBytes), file);
    const ran = await this.run("losetup", args);
    const loop = ran.stdout.trim();
    if (ran.exitCode !== 0 || !loop.startsWith("/dev/")) {
      throw this.failed(ran, "check that loop devices are available: losetup -f; modprobe loop");
    }
    return loop;
  }

  async loopDetach(loop: string): Promise<void> {
    requireAbsolutePath("loop device", loop);
    const ran = await this.run("losetup", ["-d", loop]);
    if (ran.exitCode !== 0) throw this.failed(ran, `detach it by hand: losetup -d ${loop}`);
  }

  private async run(program: string, args: string[], options: RunOptions = {}): Promise<Ran> {
    const command = renderCommand([program, ...args]);
    const result = await this.slot(program, undefined, () =>
      execa(program, args, {
        env: this.env,
        reject: false,
        stdin: "ignore",
        ...(options.timeout === false ? {} : { timeout: this.timeoutMs }),
      }),
    );
    if (result.timedOut) {
      throw new AgentlabError("INTERNAL", `${command} did not finish within ${this.timeoutMs} ms`, {
        hint: "the host may be overloaded or the storage stuck: check dmesg and the storage status",
        details: { command },
      });
    }
    if (result.exitCode === undefined && result.signal === undefined) throw this.cannotRun(program, result);
    return {
      command,
      exitCode: result.exitCode,
      signal: result.signal,
      stdout: String(result.stdout ?? ""),
      stderr: String(result.stderr ?? ""),
    };
  }

  /** Run `work` in a host tool slot when the daemon bounds them. */
  private slot<T>(program: string, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    return this.pool ? this.pool.run("host", work, signal, program) : work();
  }

  /** The program could not be started at all: missing (HOST_TOOLS_UNAVAILABLE) or not runnable. */
  private cannotRun(
    program: string,
    result: { cause?: unknown; message?: string | undefined },
  ): AgentlabError {
    const code = (result.cause as NodeJS.ErrnoException | undefined)?.code;
    const pkg = PACKAGES[program] ?? program;
    if (code === "ENOENT") {
      return new AgentlabError("HOST_TOOLS_UNAVAILABLE", `${program} not found in PATH on this host`, {
        hint: `install it on the Proxmox node (apt install ${pkg}) and run agentlabd there, or use a maintenance sandbox`,
        details: { program, package: pkg, path: this.env["PATH"] ?? "" },
        cause: result.cause,
      });
    }
    return new AgentlabError(
      "HOST_TOOLS_UNAVAILABLE",
      `cannot run ${program}: ${result.message ?? "unknown error"}`,
      {
        hint: `check that agentlabd may run ${program} (it must run as root on the node)`,
        details: { program, package: pkg },
        cause: result.cause,
      },
    );
  }

  /** A program ran and said no: its own words, plus what to look at next. */
  private failed(ran: Ran, hint: string): AgentlabError {
    const said = (ran.stderr.trim() || ran.stdout.trim()).split("\n").slice(-5).join("; ");
    const how =
      ran.exitCode === undefined ? `was killed by ${ran.signal}` : `failed with exit status ${ran.exitCode}`;
    return new AgentlabError("INTERNAL", `${ran.command} ${how}${said ? `: ${said}` : ""}`, {
      hint,
      details: { command: ran.command, exit_code: ran.exitCode, stderr: ran.stderr.slice(-4096) },
    });
  }
}
