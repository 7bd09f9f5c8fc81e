/**
 * Turning SQLite and filesystem failures into AgentlabErrors an operator can act on.
 *
 * These surface at daemon start (open, quick_check, migrations) and later from any query, so each
 * carries the real database path and the troubleshooting steps in the order they must be done.
 */

import fs from "node:fs";
import nodePath from "node:path";
import { AgentlabError } from "../../protocol/errors.js";

/** A process that has the database (or its -wal/-shm/-journal) open. */
export interface DbHolder {
  pid: number;
  command: string;
}

const OS_REASONS: Record<string, string> = {
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  ENOTDIR: "a parent path is not a directory",
  EISDIR: "is a directory",
  EROFS: "read-only file system",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EEXIST: "a file is in the way",
  ELOOP: "too many symbolic links",
  ENAMETOOLONG: "path too long",
};

/** The SQLite extended result code of a better-sqlite3 error (SQLITE_CONSTRAINT_UNIQUE, ...), if any. */
export function sqliteCode(err: unknown): string | undefined {
  return errorCode(err);
}

function errorCode(err: unknown): string | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" ? code : undefined;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Quote a path for a shell command in a hint, only when it needs it. */
export function shellQuote(text: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

function numbered(lines: string[]): string {
  return lines.map((line, i) => `${i + 1}. ${line}`).join("\n");
}

function realPathOf(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    // The file may be gone or not yet created; its directory still resolves symlinks such as /tmp.
    try {
      return nodePath.join(fs.realpathSync(nodePath.dirname(file)), nodePath.basename(file));
    } catch {
      return nodePath.resolve(file);
    }
  }
}

/**
 * Processes other than this one that have the database open, found through /proc/<pid>/fd. Best
 * effort: processes we may not inspect are skipped, and a system without /proc gives an empty list.
 */
export function findDbHolders(dbPath: string): DbHolder[] {
  const base = realPathOf(dbPath);
  const targets = new Set([base, `${base}-wal`, `${base}-shm`, `${base}-journal`]);
  let pids: string[];
  try {
    pids = fs.readdirSync("/proc").filter((name) => /^\d+$/.test(name));
  } catch {
    return [];
  }
  const holders: DbHolder[] = [];
  for (const name of pids) {
    const pid = Number(name);
    if (pid === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${name}/fd`);
    } catch {
      continue;
    }
    const holds = fds.some((fd) => {
      try {
        return targets.has(fs.readlinkSync(`/proc/${name}/fd/${fd}`));
      } catch {
        return false;
      }
    });
    if (!holds) continue;
    let command = "?";
    try {
      // The command line tells "node /usr/local/bin/agentlabd" from "node other.js"; comm says "node" for both.
      const argv = fs.readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").filter(Boolean).join(" ");
      command = (argv || fs.readFileSync(`/proc/${name}/comm`, "utf8").trim() || "?")
        .replace(/\s+/g, " ")
        .slice(0, 160);
    } catch {
      // The process may have exited between the two reads; its pid is still worth showing.
    }
    holders.push({ pid, command });
  }
  return holders;
}

export function dbLockedError(dbPath: string, cause?: unknown): AgentlabError {
  const holders = findDbHolders(dbPath);
  const p = shellQuote(dbPath);
  const steps: string[] = [];
  if (holders.length > 0) {
    const list = holders.map((h) => `pid ${h.pid} (${h.command})`).join(", ");
    steps.push(`processes holding the database: ${list}`);
  }
  steps.push("check for a running daemon: ps aux | grep agentlabd");
  steps.push(`check what else has the database open: lsof ${p}`);
  const kill = holders.length > 0 ? `kill ${holders.map((h) => h.pid).join(" ")}` : "kill <pid>";
  steps.push(`stop the stale process (${kill}) or restart the daemon: systemctl restart agentlabd`);
  return new AgentlabError("DB_LOCKED", `database is locked: ${dbPath}`, {
    hint: `another process holds a lock on the database:\n${numbered(steps)}`,
    details: { path: dbPath, holders },
    cause,
  });
}

export function dbCorruptError(
  dbPath: string,
  options: { cause?: unknown; check?: string[] } = {},
): AgentlabError {
  const p = shellQuote(dbPath);
  // sqlite3 opening <path>.backup looks for <path>.backup-wal, so the WAL copy is named to match:
  // without it, committed transactions not yet checkpointed would be missing from the backup.
  const hasWal = fs.existsSync(`${dbPath}-wal`);
  const backup = hasWal
    ? `cp ${p} ${shellQuote(`${dbPath}.backup`)} && cp ${shellQuote(`${dbPath}-wal`)} ${shellQuote(`${dbPath}.backup-wal`)}`
    : `cp ${p} ${shellQuote(`${dbPath}.backup`)}`;
  const steps = [
    "stop the daemon: systemctl stop agentlabd",
    `back up the database before anything else: ${backup}`,
    `check it: sqlite3 ${p} "PRAGMA integrity_check;"`,
    `try to repair it: sqlite3 ${p} "VACUUM;"`,
    `only if the repair fails, start fresh (WARNING: this deletes all data): rm ${p} ${shellQuote(`${dbPath}-wal`)} ${shellQuote(`${dbPath}-shm`)}; systemctl start agentlabd`,
  ];
  const details: Record<string, unknown> = { path: dbPath };
  if (options.check !== undefined) details["quick_check"] = options.check;
  return new AgentlabError("DB_CORRUPT", `database disk image is malformed: ${dbPath}`, {
    hint: `the database file is damaged:\n${numbered(steps)}`,
    details,
    cause: options.cause,
  });
}

/** Why a database path cannot be opened, in the filesystem's words; undefined when nothing looks wrong. */
export function diagnoseDbPath(dbPath: string, readonly = false): string | undefined {
  const dir = nodePath.dirname(dbPath);
  try {
    const stat = fs.statSync(dir);
    if (!stat.isDirectory()) return `${dir} is not a directory`;
  } catch (err) {
    return `${dir}: ${osReason(err)}`;
  }
  try {
    if (fs.statSync(dbPath).isDirectory()) return `${dbPath} is a directory`;
    fs.accessSync(dbPath, readonly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK);
  } catch (err) {
    if (errorCode(err) !== "ENOENT" || readonly) return `${dbPath}: ${osReason(err)}`;
  }
  if (!readonly) {
    // WAL mode creates <db>-wal and <db>-shm next to the file, so the directory must be writable too.
    try {
      fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
    } catch (err) {
      return `${dir} is not writable: ${osReason(err)}`;
    }
  }
  return undefined;
}

export function osReason(err: unknown): string {
  const code = errorCode(err);
  const text = code === undefined ? undefined : OS_REASONS[code];
  return text === undefined ? errorMessage(err) : `${text} (${code})`;
}

export function dbUnavailableError(dbPath: string, reason: string, cause?: unknown): AgentlabError {
  const dir = nodePath.dirname(dbPath);
  const full = /no space|disk is full|quota/i.test(reason);
  const hint = full
    ? `free space on the filesystem that holds ${shellQuote(dir)} (df -h ${shellQuote(dir)}), then restart the daemon: systemctl restart agentlabd`
    : `check that ${shellQuote(dir)} exists and the daemon's user can write it (ls -ld ${shellQuote(dir)}; ls -l ${shellQuote(dbPath)}), fix ownership or mode, then start the daemon: systemctl start agentlabd`;
  return new AgentlabError("DB_UNAVAILABLE", `cannot open database ${dbPath}: ${reason}`, {
    hint,
    details: { path: dbPath, reason },
    cause,
  });
}

const LOCKED_TEXT = /database is locked|database table is locked/i;
const CORRUPT_TEXT = /database disk image is malformed|file is not a database/i;

export type StorageFailure = "locked" | "corrupt" | "unavailable";

/** Which kind of storage failure an error is, without building the error (no /proc scan). */
export function classifySqliteError(err: unknown): StorageFailure | undefined {
  if (err instanceof AgentlabError) {
    if (err.code === "DB_LOCKED") return "locked";
    if (err.code === "DB_CORRUPT") return "corrupt";
    if (err.code === "DB_UNAVAILABLE") return "unavailable";
    return undefined;
  }
  const code = errorCode(err) ?? "";
  const message = errorMessage(err);
  if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED") || LOCKED_TEXT.test(message)) {
    return "locked";
  }
  if (code.startsWith("SQLITE_CORRUPT") || code === "SQLITE_NOTADB" || CORRUPT_TEXT.test(message)) {
    return "corrupt";
  }
  if (
    code.startsWith("SQLITE_CANTOPEN") ||
    code === "SQLITE_PERM" ||
    code.startsWith("SQLITE_READONLY") ||
    code === "SQLITE_FULL" ||
    code.startsWith("SQLITE_IOERR") ||
    Object.hasOwn(OS_REASONS, code)
  ) {
    return "unavailable";
  }
  return undefined;
}

/**
 * Classify a storage failure: lock contention → DB_LOCKED (with the processes holding the file),
 * damage → DB_CORRUPT (with the repair steps), unreachable file → DB_UNAVAILABLE (with the OS
 * reason). Returns undefined for everything else (constraint violations, SQL mistakes, bugs), which
 * callers rethrow unchanged; an AgentlabError is returned as it is.
 */
export function translateSqliteError(
  err: unknown,
  dbPath: string,
  options: { readonly?: boolean } = {},
): AgentlabError | undefined {
  if (err instanceof AgentlabError) return err;
  const kind = classifySqliteError(err);
  if (kind === "locked") return dbLockedError(dbPath, err);
  if (kind === "corrupt") return dbCorruptError(dbPath, { cause: err });
  if (kind === undefined) return undefined;
  const code = errorCode(err) ?? "";
  const message = errorMessage(err);
  if (code === "SQLITE_FULL") return dbUnavailableError(dbPath, "disk is full", err);
  if (code.startsWith("SQLITE_IOERR")) {
    return dbUnavailableError(dbPath, `I/O error (${code}): ${message}`, err);
  }
  if (code.startsWith("SQLITE_")) {
    const diagnosis = diagnoseDbPath(dbPath, options.readonly ?? false);
    return dbUnavailableError(dbPath, diagnosis ?? message, err);
  }
  return dbUnavailableError(dbPath, osReason(err), err);
}
