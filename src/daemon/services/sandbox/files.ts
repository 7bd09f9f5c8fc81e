/**
 * `sandbox cp`, the daemon's half: stat, list, read, mkdir and chunked writes in a running sandbox over
 * SFTP, logged in as exec logs in (the daemon's key, the guest's recorded host keys). Reads are
 * stateless (offset + length). An upload is the one thing kept between requests: the open temporary
 * beside its target, renamed over the target by the last chunk; a failed, cancelled or abandoned upload
 * removes its temporary, so the target is either the old file or the whole new one.
 */
import { createHash, type Hash, randomBytes } from "node:crypto";
import { posix } from "node:path";
import type { ParamsOf, ResultOf } from "../../../protocol/call-types.js";
import { AgentlabError } from "../../../protocol/errors.js";
import {
  FILE_LIST_PAGE,
  type sandboxFileList,
  type sandboxFileMkdir,
  type sandboxFileRead,
  type sandboxFileStat,
  type sandboxFileWrite,
} from "../../../protocol/index.js";
import type { DaemonContext } from "../../context.js";
import type { GuestTarget } from "../../ssh/client.js";
import { entryType, fileError, isNoSuchFile, type Sftp } from "../../ssh/sftp.js";
import { SftpSessions } from "../../ssh/sftp-sessions.js";
import type { Operation } from "../operation.js";
import { GUEST_USER, guestTarget } from "./exec.js";

/** An upload nobody sent a chunk for in this long is abandoned (the CLI was killed): temporary removed. */
export const UPLOAD_IDLE_MS = 60_000;
/** A new file's mode when the caller gives none, as cp(1) gives with the usual umask. */
const DEFAULT_FILE_MODE = 0o644;

interface Upload {
  id: string;
  vmid: number;
  user: string;
  /** The target as the caller named it, and absolute. */
  path: string;
  absolute: string;
  temp: string;
  sftp: Sftp;
  target: GuestTarget;
  handle: Buffer;
  written: number;
  hash: Hash;
  busy: boolean;
  timer?: NodeJS.Timeout;
}

/** `.name.agentlab-<id>.part` beside the target: hidden, and named for whoever finds one left over. */
function temporaryFor(path: string, id: string): string {
  return posix.join(posix.dirname(path), `.${posix.basename(path)}.agentlab-${id.slice(0, 12)}.part`);
}

export class FileService {
  private sessionsOf: SftpSessions | undefined;
  private readonly uploads = new Map<string, Upload>();

  constructor(private readonly ctx: DaemonContext) {}

  async stat(
    params: ParamsOf<typeof sandboxFileStat>,
    op: Operation,
  ): Promise<ResultOf<typeof sandboxFileStat>> {
    const { sftp, vmid } = await this.session(params.vmid, params.user, op);
    try {
      const stats = await sftp.stat(params.path);
      return {
        path: await sftp.realpath(params.path),
        exists: true,
        type: entryType(stats),
        size: stats.size,
        mode: stats.mode & 0o7777,
      };
    } catch (error) {
      if (!isNoSuchFile(error)) throw fileError(error, vmid, "stat", params.path);
      return { path: await this.absolute(sftp, params.path), exists: false };
    }
  }

  async list(
    params: ParamsOf<typeof sandboxFileList>,
    op: Operation,
  ): Promise<ResultOf<typeof sandboxFileList>> {
    const { sftp, vmid } = await this.session(params.vmid, params.user, op);
    try {
      const stats = await sftp.stat(params.path);
      if (!stats.isDirectory()) {
        throw new AgentlabError("FILE_NOT_DIRECTORY", `sandbox ${vmid}: ${params.path}: not a directory`, {
          details: { vmid, path: params.path },
        });
      }
      const all = (await sftp.readdir(params.path))
        .filter((entry) => entry.filename !== "." && entry.filename !== "..")
        .sort((a, b) => (a.filename < b.filename ? -1 : a.filename > b.filename ? 1 : 0));
      const offset = params.offset ?? 0;
      const page = all.slice(offset, offset + FILE_LIST_PAGE);
      return {
        path: await sftp.realpath(params.path),
        entries: page.map((entry) => ({
          name: entry.filename,
          type: entryType(entry.attrs),
          size: entry.attrs.size,
          mode: entry.attrs.mode & 0o7777,
        })),
        more: offset + page.length < all.length,
      };
    } catch (error) {
      throw fileError(error, vmid, "list", params.path);
    }
  }

  async read(
    params: ParamsOf<typeof sandboxFileRead>,
    op: Operation,
  ): Promise<ResultOf<typeof sandboxFileRead>> {
    const { sftp, vmid } = await this.session(params.vmid, params.user, op);
    let handle: Buffer | undefined;
    try {
      handle = await sftp.open(params.path, "r");
      const stats = await sftp.fstat(handle);
      if (stats.isDirectory()) {
        throw new AgentlabError("FILE_IS_DIRECTORY", `sandbox ${vmid}: ${params.path} is a directory`, {
          hint: "copy a directory with -r",
          details: { vmid, path: params.path },
        });
      }
      const data = await sftp.read(handle, params.offset, params.length);
      return {
        data: data.toString("base64"),
        size: stats.size,
        eof: data.length < params.length || params.offset + data.length >= stats.size,
        mode: stats.mode & 0o7777,
      };
    } catch (error) {
      throw fileError(error, vmid, "reading", params.path);
    } finally {
      if (handle) await sftp.close(handle).catch(() => {});
    }
  }

  /**
   * Make a directory, or find it there. With `mode`, an existing directory takes that mode too: a copy
   * makes its directories writable for itself first and gives them their own mode once they are full.
   */
  async mkdir(
    params: ParamsOf<typeof sandboxFileMkdir>,
    op: Operation,
  ): Promise<ResultOf<typeof sandboxFileMkdir>> {
    const { sftp, vmid } = await this.session(params.vmid, params.user, op);
    try {
      let created = false;
      try {
        const stats = await sftp.stat(params.path);
        if (!stats.isDirectory()) {
          throw new AgentlabError(
            "FILE_NOT_DIRECTORY",
            `sandbox ${vmid}: ${params.path} exists and is not a directory`,
            { details: { vmid, path: params.path } },
          );
        }
      } catch (error) {
        if (!isNoSuchFile(error)) throw error;
        await sftp.mkdir(params.path, params.mode ?? 0o755);
        created = true;
      }
      // mkdir's mode passes through the guest's umask; chmod gives exactly what was asked.
      if (params.mode !== undefined) await sftp.chmod(params.path, params.mode);
      return { path: await sftp.realpath(params.path), created };
    } catch (error) {
      throw fileError(error, vmid, "making directory", params.path);
    }
  }

  async write(
    params: ParamsOf<typeof sandboxFileWrite>,
    op: Operation,
  ): Promise<ResultOf<typeof sandboxFileWrite>> {
    const upload = params.transfer === undefined ? await this.begin(params, op) : this.resume(params);
    upload.busy = true;
    clearTimeout(upload.timer);
    try {
      const data = Buffer.from(params.data, "base64");
      try {
        if (data.length > 0) await upload.sftp.write(upload.handle, data, upload.written);
      } catch (error) {
        throw fileError(error, upload.vmid, "writing", upload.path);
      }
      upload.hash.update(data);
      upload.written += data.length;
      if (op.signal.aborted) {
        throw new AgentlabError("CANCELLED", `the copy to sandbox ${upload.vmid} was cancelled`, {
          details: { vmid: upload.vmid, path: upload.path },
        });
      }
      if (!params.last) {
        upload.busy = false;
        this.armIdle(upload);
        return { transfer: upload.id, written: upload.written, done: false, path: upload.absolute };
      }
      try {
        await upload.sftp.fchmod(upload.handle, params.mode ?? DEFAULT_FILE_MODE);
        await upload.sftp.fsync(upload.handle);
        await upload.sftp.close(upload.handle);
        await upload.sftp.rename(upload.temp, upload.path);
      } catch (error) {
        throw fileError(error, upload.vmid, "putting in place", upload.path);
      }
      this.uploads.delete(upload.id);
      op.log.info(
        { vmid: upload.vmid, path: upload.absolute, bytes: upload.written },
        "sandbox cp: file written",
      );
      return {
        transfer: upload.id,
        written: upload.written,
        done: true,
        path: upload.absolute,
        sha256: upload.hash.digest("hex"),
      };
    } catch (error) {
      await this.abandon(upload, op);
      throw error;
    }
  }

  /** The client gave up (Ctrl-C between chunks): the temporary goes, the target stays. */
  async cancel(vmid: number, transfer: string, op: Operation): Promise<{ cancelled: boolean }> {
    const upload = this.uploads.get(transfer);
    if (!upload || upload.vmid !== vmid) return { cancelled: false };
    await this.abandon(upload, op);
    return { cancelled: true };
  }

  private async begin(params: ParamsOf<typeof sandboxFileWrite>, op: Operation): Promise<Upload> {
    if (params.offset !== 0) {
      throw new AgentlabError("USAGE", "the first chunk of an upload starts at offset 0", {
        details: { offset: params.offset },
      });
    }
    const user = params.user ?? GUEST_USER;
    const { sftp, vmid, target } = await this.session(params.vmid, user, op);
    try {
      const stats = await sftp.stat(params.path);
      if (stats.isDirectory()) {
        throw new AgentlabError("FILE_IS_DIRECTORY", `sandbox ${vmid}: ${params.path} is a directory`, {
          hint: "name the file inside it, e.g. <dir>/<name>",
          details: { vmid, path: params.path },
        });
      }
    } catch (error) {
      if (!isNoSuchFile(error)) throw fileError(error, vmid, "stat", params.path);
    }
    const id = randomBytes(16).toString("hex");
    const temp = temporaryFor(params.path, id);
    let handle: Buffer;
    try {
      // O_EXCL: never write into something that was already there. 0600 until it is complete.
      handle = await sftp.open(temp, "wx", 0o600);
    } catch (error) {
      const parent = posix.dirname(params.path);
      if (isNoSuchFile(error)) {
        throw new AgentlabError("FILE_NOT_FOUND", `sandbox ${vmid}: ${parent}: no such directory`, {
          hint: `make it first: agentlab sandbox exec ${vmid} -- mkdir -p ${parent}`,
          details: { vmid, path: params.path },
        });
      }
      throw fileError(error, vmid, "creating a file in", parent);
    }
    const upload: Upload = {
      id,
      vmid,
      user,
      path: params.path,
      absolute: await this.absolute(sftp, params.path),
      temp,
      sftp,
      target,
      handle,
      written: 0,
      hash: createHash("sha256"),
      busy: false,
    };
    this.uploads.set(id, upload);
    return upload;
  }

  private resume(params: ParamsOf<typeof sandboxFileWrite>): Upload {
    const upload = params.transfer !== undefined ? this.uploads.get(params.transfer) : undefined;
    if (
      !upload ||
      upload.vmid !== params.vmid ||
      upload.path !== params.path ||
      upload.user !== (params.user ?? GUEST_USER)
    ) {
      throw new AgentlabError("NOT_FOUND", `no upload ${params.transfer} to ${params.path} is open`, {
        hint: `it failed, was cancelled, or sat idle for ${UPLOAD_IDLE_MS / 1000} s and was removed: copy the file again`,
        details: { vmid: params.vmid, transfer: params.transfer ?? null },
      });
    }
    if (upload.busy) {
      throw new AgentlabError("CONFLICT", `upload ${upload.id} is busy with another chunk`, {
        details: { vmid: upload.vmid, transfer: upload.id },
      });
    }
    if (params.offset !== upload.written) {
      throw new AgentlabError(
        "CONFLICT",
        `upload ${upload.id}: chunk at offset ${params.offset}, but ${upload.written} bytes are written`,
        { hint: "send the chunks in order", details: { vmid: upload.vmid, written: upload.written } },
      );
    }
    return upload;
  }

  /** Remove the temporary; when the connection is what failed, through a new one. The target is untouched. */
  private async abandon(upload: Upload, op: Operation): Promise<void> {
    clearTimeout(upload.timer);
    if (this.uploads.get(upload.id) === upload) this.uploads.delete(upload.id);
    await upload.sftp.close(upload.handle).catch(() => {});
    try {
      await upload.sftp.unlink(upload.temp);
    } catch (error) {
      if (isNoSuchFile(error)) return;
      try {
        this.sessions().drop(upload.vmid);
        const fresh = await this.sessions().get(upload.target, new AbortController().signal);
        await fresh.unlink(upload.temp);
      } catch (again) {
        if (isNoSuchFile(again)) return;
        op.log.warn(
          { vmid: upload.vmid, temp: upload.temp, err: (again as Error).message },
          "sandbox cp: could not remove an upload's temporary",
        );
      }
    }
  }

  private armIdle(upload: Upload): void {
    upload.timer = setTimeout(() => {
      if (upload.busy) return;
      void this.abandon(upload, {
        signal: new AbortController().signal,
        log: this.ctx.log,
        step: () => {},
      });
    }, UPLOAD_IDLE_MS);
    upload.timer.unref();
  }

  private sessions(): SftpSessions {
    if (!this.sessionsOf) {
      const identity = this.ctx.sshIdentity;
      if (!identity) throw new AgentlabError("INTERNAL", "agentlabd has no SSH identity loaded");
      this.sessionsOf = new SftpSessions(identity);
    }
    return this.sessionsOf;
  }

  private async session(vmid: number, user: string | undefined, op: Operation) {
    const { target } = guestTarget(this.ctx, vmid, "copy files to or from", user ?? GUEST_USER);
    try {
      return { sftp: await this.sessions().get(target, op.signal), vmid: target.vmid, target };
    } catch (error) {
      if (error instanceof AgentlabError) throw error;
      // Logged in, but no sftp subsystem (a guest sshd_config without its Subsystem line).
      throw new AgentlabError(
        "GUEST_UNREACHABLE",
        `sandbox ${vmid}: cannot start SFTP: ${(error as Error).message}`,
        {
          hint: "the guest's sshd needs an sftp subsystem: Subsystem sftp internal-sftp (or /usr/lib/openssh/sftp-server) in /etc/ssh/sshd_config",
          details: { vmid },
          cause: error,
        },
      );
    }
  }

  /** The absolute form of a path that may not exist yet: its parent resolved, its name kept. */
  private async absolute(sftp: Sftp, path: string): Promise<string> {
    try {
      return posix.join(await sftp.realpath(posix.dirname(path)), posix.basename(path));
    } catch {
      return path;
    }
  }
}
