/**
 * SFTP on a guest connection (ssh2's sftp subsystem), as promises, with SFTP's status codes turned into
 * the errors `sandbox cp` reports: no such file, permission denied, or a failure the server could not
 * name (SFTP v3 has no code for a full disk or a quota: OpenSSH's sftp-server answers "Failure").
 */
import type { Client, FileEntryWithStats, SFTPWrapper, Stats } from "ssh2";
import { AgentlabError } from "../../protocol/errors.js";

/** SFTP v3 status codes (draft-ietf-secsh-filexfer-02 §7) that mean something to a user. */
const NO_SUCH_FILE = 2;
const PERMISSION_DENIED = 3;
const FAILURE = 4;

export type SftpError = Error & { code?: number | string };

/** Open the sftp subsystem on a logged-in connection. */
export function openSftp(client: Client): Promise<SFTPWrapper> {
  return new Promise((resolve, reject) =>
    client.sftp((error, sftp) => (error ? reject(error) : resolve(sftp))),
  );
}

/** Call one callback-style SFTP request and settle with its value. */
function request<T>(
  start: (done: (error: SftpError | null | undefined, value?: T) => void) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    try {
      start((error, value) => (error ? reject(error) : resolve(value as T)));
    } catch (error) {
      reject(error);
    }
  });
}

export type EntryType = "file" | "directory" | "symlink" | "other";

export function entryType(stats: Stats): EntryType {
  if (stats.isFile()) return "file";
  if (stats.isDirectory()) return "directory";
  if (stats.isSymbolicLink()) return "symlink";
  return "other";
}

/** The SFTP requests `sandbox cp` makes, each a promise. */
export class Sftp {
  constructor(readonly wrapper: SFTPWrapper) {}

  stat(path: string): Promise<Stats> {
    return request((done) => this.wrapper.stat(path, done));
  }
  realpath(path: string): Promise<string> {
    return request((done) => this.wrapper.realpath(path, done));
  }
  readdir(path: string): Promise<FileEntryWithStats[]> {
    return request((done) => this.wrapper.readdir(path, done));
  }
  mkdir(path: string, mode: number): Promise<void> {
    return request((done) => this.wrapper.mkdir(path, { mode }, done));
  }
  open(path: string, flags: "r" | "wx", mode?: number): Promise<Buffer> {
    return request((done) => this.wrapper.open(path, flags, mode === undefined ? {} : { mode }, done));
  }
  chmod(path: string, mode: number): Promise<void> {
    return request((done) => this.wrapper.chmod(path, mode, done));
  }
  fstat(handle: Buffer): Promise<Stats> {
    return request((done) => this.wrapper.fstat(handle, done));
  }
  fchmod(handle: Buffer, mode: number): Promise<void> {
    return request((done) => this.wrapper.fchmod(handle, mode, done));
  }
  close(handle: Buffer): Promise<void> {
    return request((done) => this.wrapper.close(handle, done));
  }
  unlink(path: string): Promise<void> {
    return request((done) => this.wrapper.unlink(path, done));
  }
  write(handle: Buffer, data: Buffer, position: number): Promise<void> {
    return request((done) => this.wrapper.write(handle, data, 0, data.length, position, done));
  }
  /** Flush to the guest's disk before the rename makes the file visible (OpenSSH's fsync extension). */
  async fsync(handle: Buffer): Promise<void> {
    try {
      await request((done) => this.wrapper.ext_openssh_fsync(handle, done));
    } catch (error) {
      // A server without the extension: the rename still happens, as cp(1) does without a sync.
      if (!/not supported/i.test((error as Error).message)) throw error;
    }
  }
  /**
   * Replace `to` with `from` in one step: OpenSSH's posix-rename, rename(2) in the guest. Plain SFTP
   * rename refuses an existing target, and removing it first would leave a moment without a file.
   */
  rename(from: string, to: string): Promise<void> {
    return request((done) => this.wrapper.ext_openssh_rename(from, to, done));
  }

  /** Up to `length` bytes from `position`; shorter only at end of file. */
  async read(handle: Buffer, position: number, length: number): Promise<Buffer> {
    const buffer = Buffer.alloc(length);
    let filled = 0;
    while (filled < length) {
      const got = await request<number>((done) =>
        this.wrapper.read(handle, buffer, filled, length - filled, position + filled, (error, bytes) =>
          done(error, bytes),
        ),
      );
      if (got === 0) break;
      filled += got;
    }
    return buffer.subarray(0, filled);
  }
}

/** Whether the server said the path does not exist (stat of a new target). */
export function isNoSuchFile(error: unknown): boolean {
  return (error as SftpError)?.code === NO_SUCH_FILE;
}

/** An SFTP failure as the error a user reads: what was being done, to which path, in which sandbox. */
export function fileError(error: unknown, vmid: number, doing: string, path: string): AgentlabError {
  if (error instanceof AgentlabError) return error;
  const failure = error as SftpError;
  const details = { vmid, path, sftp_code: failure?.code ?? null };
  if (failure?.code === NO_SUCH_FILE) {
    return new AgentlabError("FILE_NOT_FOUND", `sandbox ${vmid}: ${path}: no such file or directory`, {
      details,
      cause: error,
    });
  }
  if (failure?.code === PERMISSION_DENIED) {
    return new AgentlabError("FILE_PERMISSION", `sandbox ${vmid}: ${path}: permission denied (${doing})`, {
      details,
      cause: error,
    });
  }
  const said = failure?.message ?? String(error);
  return new AgentlabError(
    "FILE_TRANSFER_FAILED",
    `sandbox ${vmid}: ${doing} ${path} failed: ${said}${failure?.code === FAILURE ? " (the guest's SFTP server gives no reason; a full disk or a quota is the usual one)" : ""}`,
    { details, cause: error },
  );
}
