/**
 * The CLI's half of `sandbox cp`: cp(1)'s rules for where things land, a plan of every file and
 * directory (so progress knows the total), then the bytes moved chunk by chunk through the daemon's
 * sandbox.file_* methods. Whatever is written is written beside its target and renamed over it when
 * complete: locally here, in the guest by the daemon. A failure or Ctrl-C removes the partial file.
 */
import { createHash, randomBytes } from "node:crypto";
import { closeSync, fsyncSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { chmod, lstat, mkdir, readdir, rename, stat } from "node:fs/promises";
import { basename, dirname, join, posix } from "node:path";
import type { ParamsOf, ResultOf } from "../protocol/call-types.js";
import { FILE_CHUNK_BYTES } from "../protocol/chunk-sizes.js";
import { AgentlabError } from "../protocol/errors.js";
import type { Wire } from "../protocol/method.js";
import {
  sandboxFileCancel,
  sandboxFileList,
  sandboxFileMkdir,
  sandboxFileRead,
  sandboxFileStat,
  sandboxFileWrite,
} from "../protocol/wire.js";
import type { CallOptions, CommandContext } from "./context.js";

/** One side of a copy: a local path, or a path in a sandbox. */
export type CopyEnd = { kind: "local"; path: string } | { kind: "guest"; vmid: number; path: string };

/** `<vmid>:<path>` is a guest path (an empty path: the user's home); anything else is local. */
export function parseCopyEnd(text: string): CopyEnd {
  const match = /^(\d+):(.*)$/s.exec(text);
  if (!match) return { kind: "local", path: text };
  const vmid = Number(match[1]);
  if (vmid < 100 || vmid > 999_999_999) {
    throw new AgentlabError("USAGE", `${text}: ${match[1]} is not a VMID (100 to 999999999)`, {
      hint: "a local path with a colon: write it as ./NAME",
    });
  }
  return { kind: "guest", vmid, path: match[2] === "" ? "." : match[2]! };
}

export interface CopiedFile {
  path: string;
  bytes: number;
  sha256: string;
  mode: number;
}

export interface CopySummary {
  direction: "upload" | "download";
  vmid: number;
  source: string;
  destination: string;
  files: CopiedFile[];
  directories: string[];
  skipped: Array<{ path: string; type: string }>;
  bytes: number;
}

interface PlanFile {
  from: string;
  to: string;
  size: number;
  mode: number;
}
interface PlanDir {
  to: string;
  mode: number;
  /** Created by this copy, so its own mode is given once it is full. */
  created?: boolean;
}
type Step = ({ kind: "file" } & PlanFile) | ({ kind: "dir" } & PlanDir) | { kind: "done"; dir: PlanDir };

interface Plan {
  steps: Step[];
  total: number;
  skipped: Array<{ path: string; type: string }>;
}

/** Copies at least this large report progress on stderr. */
export const PROGRESS_MIN_BYTES = 4 * 1024 * 1024;

export interface CopyOptions {
  recursive: boolean;
  user?: string;
  /** Bytes done of the total, after each chunk. */
  onProgress?: (done: number, total: number) => void;
  signal: AbortSignal;
  /** Ctrl-C message for the first interrupt of a call. */
  cancelMessage: string;
}

function cancelled(): AgentlabError {
  return new AgentlabError(
    "CANCELLED",
    "the copy was interrupted; the file being copied was left as it was",
    {
      hint: "files completed before the interrupt are in place; run the copy again for the rest",
    },
  );
}

function localError(error: NodeJS.ErrnoException, path: string): AgentlabError {
  if (error.code === "ENOENT") {
    return new AgentlabError("FILE_NOT_FOUND", `${path}: no such file or directory`, { cause: error });
  }
  if (error.code === "EACCES" || error.code === "EPERM") {
    return new AgentlabError("FILE_PERMISSION", `${path}: permission denied`, { cause: error });
  }
  if (error.code === "EISDIR") {
    return new AgentlabError("FILE_IS_DIRECTORY", `${path} is a directory`, { cause: error });
  }
  if (error.code === "ENOTDIR") {
    return new AgentlabError("FILE_NOT_DIRECTORY", `${path}: not a directory`, { cause: error });
  }
  return new AgentlabError("FILE_TRANSFER_FAILED", `${path}: ${error.message}`, { cause: error });
}

function typeOfLocal(stats: {
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}): string {
  return stats.isFile()
    ? "file"
    : stats.isDirectory()
      ? "directory"
      : stats.isSymbolicLink()
        ? "symlink"
        : "other";
}

function isDirectoryError(path: string, guest?: number): AgentlabError {
  return new AgentlabError(
    "FILE_IS_DIRECTORY",
    `${guest !== undefined ? `sandbox ${guest}: ` : ""}${path} is a directory (not copied)`,
    { hint: "copy a directory with -r: agentlab sandbox cp -r SRC DST" },
  );
}

function notDirectory(path: string, source: string, guest?: number): AgentlabError {
  return new AgentlabError(
    "FILE_NOT_DIRECTORY",
    `cannot overwrite non-directory ${guest !== undefined ? `${guest}:` : ""}${path} with directory ${source}`,
  );
}

/** A file named `dir/` whose directory is not there: cp(1) refuses rather than make a file `dir`. */
function noSuchDirectory(path: string, guest?: number): AgentlabError {
  return new AgentlabError(
    "FILE_NOT_FOUND",
    `${guest !== undefined ? `sandbox ${guest}: ` : ""}${path}: no such directory`,
    { hint: "make the directory first, or drop the trailing / to name the file" },
  );
}

/** Copies local files and directories into a sandbox, and sandbox files out, through the daemon. */
export class SandboxCopier {
  /** The local partial file of a download in progress: removed on every way out. */
  private localTemp: string | undefined;
  private readonly removeTempOnExit = () => {
    if (this.localTemp) rmSync(this.localTemp, { force: true });
  };

  constructor(
    private readonly ctx: CommandContext,
    private readonly options: CopyOptions,
  ) {}

  private call<M extends Wire>(method: M, params: Omit<ParamsOf<M>, "progress_token">): Promise<ResultOf<M>> {
    const callOptions: CallOptions = {
      signal: this.options.signal,
      cancelMessage: this.options.cancelMessage,
    };
    return this.ctx.call(method, params, callOptions);
  }

  private guestUser(): { user?: string } {
    return this.options.user !== undefined ? { user: this.options.user } : {};
  }

  private checkAborted(): void {
    if (this.options.signal.aborted) throw cancelled();
  }

  async upload(source: string, vmid: number, destination: string): Promise<CopySummary> {
    let stats: Awaited<ReturnType<typeof stat>>;
    try {
      stats = await stat(source);
    } catch (error) {
      throw localError(error as NodeJS.ErrnoException, source);
    }
    const isDir = stats.isDirectory();
    if (isDir && !this.options.recursive) throw isDirectoryError(source);
    if (!isDir && !stats.isFile()) {
      throw new AgentlabError("USAGE", `${source} is not a regular file or a directory`);
    }
    const dest = await this.call(sandboxFileStat, { vmid, path: destination, ...this.guestUser() });
    let target = destination;
    if (dest.exists && dest.type === "directory") target = posix.join(destination, basename(source));
    else if (isDir && dest.exists) throw notDirectory(destination, source, vmid);
    else if (!isDir && destination.endsWith("/")) throw noSuchDirectory(destination, vmid);
    const plan: Plan = { steps: [], total: 0, skipped: [] };
    if (isDir) await this.planLocalDir(source, target, stats.mode & 0o7777, plan);
    else {
      plan.steps.push({
        kind: "file",
        from: source,
        to: target,
        size: stats.size,
        mode: stats.mode & 0o7777,
      });
      plan.total += stats.size;
    }
    const summary = this.summary("upload", vmid, source, target, plan);
    for (const step of plan.steps) {
      this.checkAborted();
      if (step.kind === "dir") {
        const made = await this.call(sandboxFileMkdir, {
          vmid,
          path: step.to,
          mode: step.mode | 0o700,
          ...this.guestUser(),
        });
        step.created = made.created;
        summary.directories.push(made.path);
      } else if (step.kind === "done") {
        if (step.dir.created && step.dir.mode !== (step.dir.mode | 0o700)) {
          await this.call(sandboxFileMkdir, {
            vmid,
            path: step.dir.to,
            mode: step.dir.mode,
            ...this.guestUser(),
          });
        }
      } else {
        summary.files.push(await this.uploadFile(vmid, step, (bytes) => this.advance(bytes, plan.total)));
      }
    }
    summary.bytes = this.done;
    return summary;
  }

  async download(vmid: number, source: string, destination: string): Promise<CopySummary> {
    const src = await this.call(sandboxFileStat, { vmid, path: source, ...this.guestUser() });
    if (!src.exists) {
      throw new AgentlabError("FILE_NOT_FOUND", `sandbox ${vmid}: ${source}: no such file or directory`);
    }
    const isDir = src.type === "directory";
    if (isDir && !this.options.recursive) throw isDirectoryError(source, vmid);
    if (!isDir && src.type !== "file") {
      throw new AgentlabError("USAGE", `sandbox ${vmid}: ${source} is not a regular file or a directory`);
    }
    let target = destination;
    const local = await stat(destination).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw localError(error, destination);
    });
    if (local?.isDirectory()) target = join(destination, posix.basename(src.path));
    else if (isDir && local) throw notDirectory(destination, `${vmid}:${source}`);
    else if (!isDir && destination.endsWith("/")) throw noSuchDirectory(destination);
    const plan: Plan = { steps: [], total: 0, skipped: [] };
    if (isDir) await this.planGuestDir(vmid, src.path, target, src.mode ?? 0o755, plan);
    else {
      plan.steps.push({
        kind: "file",
        from: src.path,
        to: target,
        size: src.size ?? 0,
        mode: src.mode ?? 0o644,
      });
      plan.total += src.size ?? 0;
    }
    const summary = this.summary("download", vmid, source, target, plan);
    process.on("exit", this.removeTempOnExit);
    try {
      for (const step of plan.steps) {
        this.checkAborted();
        if (step.kind === "dir") {
          const exists = await stat(step.to).catch(() => undefined);
          if (exists && !exists.isDirectory()) throw notDirectory(step.to, `${vmid}:${source}`);
          if (!exists) {
            await mkdir(step.to, { mode: step.mode | 0o700 }).catch((error) => {
              throw localError(error, step.to);
            });
            await chmod(step.to, step.mode | 0o700);
            step.created = true;
          }
          summary.directories.push(step.to);
        } else if (step.kind === "done") {
          if (step.dir.created) await chmod(step.dir.to, step.dir.mode);
        } else {
          summary.files.push(await this.downloadFile(vmid, step, (bytes) => this.advance(bytes, plan.total)));
        }
      }
    } finally {
      process.off("exit", this.removeTempOnExit);
    }
    summary.bytes = this.done;
    return summary;
  }

  private summary(
    direction: "upload" | "download",
    vmid: number,
    source: string,
    destination: string,
    plan: Plan,
  ) {
    return {
      direction,
      vmid,
      source,
      destination,
      files: [],
      directories: [],
      skipped: plan.skipped,
      bytes: 0,
    } as CopySummary;
  }

  /** Bytes copied so far, of every file of this copy. */
  private done = 0;

  private advance(bytes: number, total: number): void {
    this.done += bytes;
    this.options.onProgress?.(this.done, total);
  }

  /** Every file and directory under a local directory, parents before children, in name order. */
  private async planLocalDir(from: string, to: string, mode: number, plan: Plan): Promise<void> {
    const dir: PlanDir = { to, mode };
    plan.steps.push({ kind: "dir", ...dir });
    const dirStep = plan.steps[plan.steps.length - 1] as { kind: "dir" } & PlanDir;
    let names: string[];
    try {
      names = (await readdir(from)).sort();
    } catch (error) {
      throw localError(error as NodeJS.ErrnoException, from);
    }
    for (const name of names) {
      const path = join(from, name);
      const entry = await lstat(path);
      if (entry.isDirectory()) await this.planLocalDir(path, posix.join(to, name), entry.mode & 0o7777, plan);
      else if (entry.isFile()) {
        plan.steps.push({
          kind: "file",
          from: path,
          to: posix.join(to, name),
          size: entry.size,
          mode: entry.mode & 0o7777,
        });
        plan.total += entry.size;
      } else plan.skipped.push({ path, type: typeOfLocal(entry) });
    }
    plan.steps.push({ kind: "done", dir: dirStep });
  }

  private async planGuestDir(
    vmid: number,
    from: string,
    to: string,
    mode: number,
    plan: Plan,
  ): Promise<void> {
    plan.steps.push({ kind: "dir", to, mode });
    const dirStep = plan.steps[plan.steps.length - 1] as { kind: "dir" } & PlanDir;
    let offset = 0;
    for (;;) {
      const page = await this.call(sandboxFileList, { vmid, path: from, offset, ...this.guestUser() });
      for (const entry of page.entries) {
        const path = posix.join(from, entry.name);
        if (entry.type === "directory")
          await this.planGuestDir(vmid, path, join(to, entry.name), entry.mode, plan);
        else if (entry.type === "file") {
          plan.steps.push({
            kind: "file",
            from: path,
            to: join(to, entry.name),
            size: entry.size,
            mode: entry.mode,
          });
          plan.total += entry.size;
        } else plan.skipped.push({ path: `${vmid}:${path}`, type: entry.type });
      }
      if (!page.more) break;
      offset += page.entries.length;
    }
    plan.steps.push({ kind: "done", dir: dirStep });
  }

  private async uploadFile(vmid: number, file: PlanFile, onBytes: (n: number) => void): Promise<CopiedFile> {
    let fd: number;
    try {
      fd = openSync(file.from, "r");
    } catch (error) {
      throw localError(error as NodeJS.ErrnoException, file.from);
    }
    const hash = createHash("sha256");
    let transfer: string | undefined;
    let offset = 0;
    try {
      const buffer = Buffer.alloc(FILE_CHUNK_BYTES);
      for (;;) {
        let got: number;
        try {
          got = readSync(fd, buffer, 0, buffer.length, offset);
        } catch (error) {
          throw localError(error as NodeJS.ErrnoException, file.from);
        }
        const chunk = buffer.subarray(0, got);
        hash.update(chunk);
        // The last chunk is the one that reaches the size seen when planning, or end of file.
        const last = got < buffer.length || offset + got >= file.size;
        if (this.options.signal.aborted) throw cancelled();
        const answer = await this.call(sandboxFileWrite, {
          vmid,
          path: file.to,
          ...(transfer !== undefined ? { transfer } : {}),
          offset,
          data: chunk.toString("base64"),
          last,
          mode: file.mode,
          ...this.guestUser(),
        });
        transfer = answer.transfer;
        offset += got;
        onBytes(got);
        if (answer.done) {
          transfer = undefined;
          const sha256 = hash.digest("hex");
          if (answer.sha256 !== sha256) {
            throw new AgentlabError(
              "FILE_TRANSFER_FAILED",
              `sandbox ${vmid}: ${answer.path}: the daemon wrote bytes whose SHA-256 differs from ${file.from}'s (${answer.sha256} vs ${sha256})`,
              {
                hint: "the file changed while it was copied, or the bytes were damaged on the way: copy it again",
              },
            );
          }
          return { path: answer.path, bytes: offset, sha256, mode: file.mode };
        }
      }
    } catch (error) {
      // An upload the daemon still holds (the failure was ours, or Ctrl-C between chunks): drop it.
      if (transfer !== undefined) {
        await this.ctx
          .call(sandboxFileCancel, { vmid, transfer }, { cancelMessage: this.options.cancelMessage })
          .catch(() => {});
      }
      if (error instanceof AgentlabError && error.code === "CANCELLED") throw cancelled();
      throw error;
    } finally {
      closeSync(fd);
    }
  }

  private async downloadFile(
    vmid: number,
    file: PlanFile,
    onBytes: (n: number) => void,
  ): Promise<CopiedFile> {
    const temp = join(
      dirname(file.to),
      `.${basename(file.to)}.agentlab-${randomBytes(6).toString("hex")}.part`,
    );
    const existing = await stat(file.to).catch(() => undefined);
    if (existing?.isDirectory()) throw isDirectoryError(file.to);
    let fd: number;
    try {
      fd = openSync(temp, "wx", 0o600);
    } catch (error) {
      throw localError(error as NodeJS.ErrnoException, file.to);
    }
    this.localTemp = temp;
    const hash = createHash("sha256");
    let offset = 0;
    let mode = file.mode;
    try {
      for (;;) {
        if (this.options.signal.aborted) throw cancelled();
        const chunk = await this.call(sandboxFileRead, {
          vmid,
          path: file.from,
          offset,
          length: FILE_CHUNK_BYTES,
          ...this.guestUser(),
        });
        const data = Buffer.from(chunk.data, "base64");
        mode = chunk.mode;
        try {
          writeSync(fd, data, 0, data.length, offset);
        } catch (error) {
          throw localError(error as NodeJS.ErrnoException, file.to);
        }
        hash.update(data);
        offset += data.length;
        onBytes(data.length);
        if (chunk.eof || data.length === 0) break;
      }
      if (this.options.signal.aborted) throw cancelled();
      fsyncSync(fd);
      closeSync(fd);
      fd = -1;
      await chmod(temp, mode);
      await rename(temp, file.to).catch((error) => {
        throw localError(error, file.to);
      });
      this.localTemp = undefined;
      return { path: file.to, bytes: offset, sha256: hash.digest("hex"), mode };
    } catch (error) {
      if (fd >= 0) closeSync(fd);
      rmSync(temp, { force: true });
      this.localTemp = undefined;
      if (error instanceof AgentlabError && error.code === "CANCELLED") throw cancelled();
      throw error;
    }
  }
}
