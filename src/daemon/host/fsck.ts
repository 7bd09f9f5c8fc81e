/**
 * Checking a workspace's filesystem on the host (design §8.2 steps 4-5, §8.3): find the ext4 on the
 * device, run e2fsck read-only or repairing, and turn its exit bits into the status users see.
 *
 * The status mapping is pure and table-driven; runFsck does the work through HostTools. Layout problems
 * the user must know about (never formatted, another filesystem, no first partition) are results with
 * status `failed`, like an e2fsck operational error; a host tool that cannot run at all is an error.
 */
import { statSync } from "node:fs";
import { AgentlabError } from "../../protocol/errors.js";
import { type BlkidResult, type E2fsckMode, type HostTools, renderCommand } from "./host-tools.js";

export type FsckStatus = "clean" | "repaired" | "needs_repair" | "failed";

/** e2fsck's exit bits, in its own order [up §5.6]. */
export const E2FSCK_EXIT_BITS: readonly { bit: number; meaning: string }[] = [
  { bit: 1, meaning: "errors corrected" },
  { bit: 2, meaning: "errors corrected, reboot needed" },
  { bit: 4, meaning: "errors left uncorrected" },
  { bit: 8, meaning: "operational error" },
  { bit: 16, meaning: "usage error" },
  { bit: 32, meaning: "cancelled" },
  { bit: 128, meaning: "shared-library error" },
];

const KNOWN_BITS = E2FSCK_EXIT_BITS.reduce((all, { bit }) => all | bit, 0);
/** Bits that mean e2fsck did not do its job; 64 is no e2fsck bit, so it is treated as one too. */
const FAILURE_BITS = 8 | 16 | 32 | 128 | (0xff & ~KNOWN_BITS);

/**
 * The status of one run, design §8.3:
 * any failure bit -> failed; read-only: 0 clean, else needs_repair; repair: 0 clean, 4 needs_repair,
 * 1 or 2 repaired. No exit status at all (killed by a signal) is failed.
 */
export function fsckStatus(mode: E2fsckMode, exitCode: number | undefined): FsckStatus {
  if (exitCode === undefined || exitCode < 0 || exitCode > 255 || (exitCode & FAILURE_BITS) !== 0)
    return "failed";
  if (exitCode === 0) return "clean";
  if (mode === "check") return "needs_repair";
  return exitCode & 4 ? "needs_repair" : "repaired";
}

/** The exit status in words, naming every set bit, e.g. `errors left uncorrected (4)`. */
export function exitSummary(exitCode: number | undefined, signal?: string): string {
  if (exitCode === undefined) return `e2fsck was killed by ${signal ?? "a signal"}`;
  if (exitCode === 0) return "no errors";
  const parts: string[] = [];
  for (let bit = 1; bit <= 128; bit <<= 1) {
    if ((exitCode & bit) === 0) continue;
    const known = E2FSCK_EXIT_BITS.find((entry) => entry.bit === bit);
    parts.push(known ? `${known.meaning} (${bit})` : `unknown bit (${bit})`);
  }
  if (exitCode > 255 || exitCode < 0) parts.push(`exit status ${exitCode} outside e2fsck's range`);
  return parts.join("; ");
}

const STATUS_WORDS: Record<FsckStatus, string> = {
  clean: "clean",
  repaired: "repaired",
  needs_repair: "NEEDS REPAIR",
  failed: "failed",
};

/** The word the CLI prints for a status; `NEEDS REPAIR` is the troubleshooting guide's spelling. */
export function fsckStatusWord(status: FsckStatus): string {
  return STATUS_WORDS[status];
}

/**
 * What to do after a needs_repair result (the text after `Remediation: `), or undefined when there is
 * nothing to do (clean, repaired) or the output is the explanation (failed).
 */
export function fsckRemediation(
  status: FsckStatus,
  mode: E2fsckMode,
  target: { workspace: string; node: string },
): string | undefined {
  if (status !== "needs_repair") return undefined;
  if (mode === "check") return `agentlab workspace fsck ${target.workspace} --repair`;
  return `repair left errors: restore a snapshot (agentlab workspace snapshot list ${target.workspace}) or run e2fsck interactively on ${target.node}`;
}

/**
 * The error for a volume this host cannot check, in the troubleshooting guide's words (design §8.1):
 * `workspace fsck unsupported for volume path <path>: <reason>`. Without a reason it is the "no host
 * tools here" case, whose hint sends the user to the node.
 */
export function fsckUnsupportedError(options: {
  path: string;
  node?: string;
  reason?: string;
  hint?: string;
  cause?: unknown;
}): AgentlabError {
  const node = options.node ?? "the workspace's node";
  const reason = options.reason ?? `agentlabd is not running on node ${node}`;
  return new AgentlabError(
    "HOST_TOOLS_UNAVAILABLE",
    `workspace fsck unsupported for volume path ${options.path}: ${reason}`,
    {
      hint:
        options.hint ??
        `run agentlabd on ${node}, use a maintenance sandbox, or run e2fsck -f -n ${options.path} on ${node}`,
      details: { path: options.path, ...(options.node ? { node: options.node } : {}) },
      ...(options.cause === undefined ? {} : { cause: options.cause }),
    },
  );
}

/** Filesystems e2fsck checks; the workspace contract is ext4, and ext2/3 are the same code path. */
const EXT_TYPES = new Set(["ext2", "ext3", "ext4"]);

export interface RunFsckOptions {
  /** The activated volume (prepareDevice's `device`): a block device or an image file. */
  device: string;
  mode: E2fsckMode;
  tools: HostTools;
  /** Cancels a read-only check. A repair is not cancellable once e2fsck started: it runs to its end. */
  signal?: AbortSignal;
  clock?: { now(): Date };
}

export interface FsckRun {
  mode: "read-only" | "repair";
  status: FsckStatus;
  /** e2fsck's exit status; absent when e2fsck did not run or was killed by a signal. */
  exit_code?: number;
  exit_summary: string;
  /** What ran last: the e2fsck command, or the blkid command whose answer stopped the check. */
  command: string;
  output: string;
  /** What e2fsck was pointed at: the volume, or a device for its first partition. */
  device: string;
  started_at: string;
  completed_at: string;
}

type Layout = { ok: true } | { ok: false; summary: string };

/** Design §8.2 step 4: the contract is a whole-disk ext4 (a partition table is handled by the caller). */
function layoutVerdict(found: BlkidResult, device: string): Layout {
  if (found === "none") return { ok: false, summary: "no ext4 filesystem (never formatted?)" };
  if (found === "ambivalent") {
    return {
      ok: false,
      summary: `more than one filesystem signature on ${device}, so none can be trusted; list them with wipefs -n ${device}`,
    };
  }
  if (found.type === undefined) return { ok: false, summary: "no ext4 filesystem (never formatted?)" };
  if (!EXT_TYPES.has(found.type)) {
    return { ok: false, summary: `filesystem type ${found.type} is not checked by workspace fsck` };
  }
  return { ok: true };
}

function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

/** The kernel's own node for partition 1, where the naming is fixed: zvol `-part1`, nbd/loop `p1`. */
function kernelPartitionNode(device: string): string | undefined {
  if (device.startsWith("/dev/zvol/")) return `${device}-part1`;
  if (/^\/dev\/(nbd|loop)\d+$/.test(device)) return `${device}p1`;
  return undefined;
}

/**
 * Check the filesystem on `device` (design §8.2 steps 4-5). A whole-disk filesystem is checked in
 * place. A partition table without one means partition 1 is checked: through the kernel's partition
 * node where one exists, otherwise through a loop device over partition 1's byte range (read-only for
 * a check), which needs neither the kernel's partition scan nor udev. The loop device is always
 * detached again.
 */
export async function runFsck(options: RunFsckOptions): Promise<FsckRun> {
  const { device, mode, tools, signal } = options;
  const clock = options.clock ?? { now: () => new Date() };
  const startedAt = clock.now();
  const finish = (fields: Omit<FsckRun, "mode" | "started_at" | "completed_at">): FsckRun => ({
    mode: mode === "repair" ? "repair" : "read-only",
    ...fields,
    started_at: startedAt.toISOString(),
    completed_at: clock.now().toISOString(),
  });
  const stopped = (summary: string, command: string, checked: string): FsckRun =>
    finish({ status: "failed", exit_summary: summary, command, output: `${summary}\n`, device: checked });

  let loop: string | undefined;
  const check = async (): Promise<FsckRun> => {
    const whole = await tools.blkid(device);
    let checked = device;
    if (typeof whole === "object" && whole.type === undefined && whole.ptType !== undefined) {
      // A partition table and no whole-disk filesystem: someone partitioned the volume.
      const node = kernelPartitionNode(device);
      if (node && isBlockDevice(node)) {
        checked = node;
      } else {
        const first = (await tools.partitions(device)).find((entry) => entry.number === 1);
        if (!first || first.sectors <= 0) {
          return stopped(
            `partition table (${whole.ptType}) has no partition 1; workspace fsck checks a whole-disk ext4 or partition 1`,
            renderCommand(["partx", "-g", "-r", "-o", "NR,START,SECTORS", device]),
            device,
          );
        }
        loop = await tools.loopAttach(device, {
          offsetBytes: first.startSector * 512,
          sizeBytes: first.sectors * 512,
          readOnly: mode === "check",
        });
        checked = loop;
      }
      const verdict = layoutVerdict(await tools.blkid(checked), checked);
      if (!verdict.ok) {
        return stopped(
          `partition 1 of ${device}: ${verdict.summary}`,
          renderCommand(["blkid", "-p", "-o", "export", checked]),
          checked,
        );
      }
    } else {
      const verdict = layoutVerdict(whole, device);
      if (!verdict.ok)
        return stopped(verdict.summary, renderCommand(["blkid", "-p", "-o", "export", device]), device);
    }

    if (signal?.aborted) {
      throw new AgentlabError("CANCELLED", `fsck of ${device}: cancelled before e2fsck started`, {
        cause: signal.reason,
      });
    }
    // A repair must not be interrupted half-way (that is how filesystems get hurt), so only a
    // read-only check gets the signal.
    const ran = await tools.e2fsck(checked, mode, mode === "check" ? signal : undefined);
    return finish({
      status: fsckStatus(mode, ran.exitCode),
      ...(ran.exitCode === undefined ? {} : { exit_code: ran.exitCode }),
      exit_summary: exitSummary(ran.exitCode, ran.signal),
      command: ran.command,
      output: ran.output,
      device: checked,
    });
  };

  let run: FsckRun;
  try {
    run = await check();
  } catch (error) {
    if (loop) await detachQuietly(tools, loop);
    // A missing e2fsck/blkid/partx/losetup is reported in the words the troubleshooting guide expects.
    if (error instanceof AgentlabError && error.code === "HOST_TOOLS_UNAVAILABLE") {
      throw fsckUnsupportedError({ path: device, reason: error.message, hint: error.hint, cause: error });
    }
    throw error;
  }
  if (loop) {
    // The check's result (maybe a finished repair) matters more than a leftover loop device, so a
    // failed detach is added to the output instead of replacing the result.
    const problem = await detachQuietly(tools, loop);
    if (problem)
      run = { ...run, output: `${run.output}${run.output.endsWith("\n") ? "" : "\n"}warning: ${problem}\n` };
  }
  return run;
}

/** Detach a loop device; what went wrong, with the command to finish it by hand, or undefined. */
async function detachQuietly(tools: HostTools, loop: string): Promise<string | undefined> {
  try {
    await tools.loopDetach(loop);
    return undefined;
  } catch (error) {
    return `could not detach ${loop} (${error instanceof Error ? error.message : String(error)}); detach it by hand: losetup -d ${loop}`;
  }
}
