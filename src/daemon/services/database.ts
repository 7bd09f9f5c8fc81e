/**
 * `agentlab db backup` and `agentlab db check` (docs/maintenance.md). The backup is taken on the
 * daemon's connection with SQLite's online backup API, so it is consistent while the daemon writes
 * (a plain `cp` of a WAL database can miss what is still in the -wal file); it is written under a
 * temporary name, mode 0600 (it holds everything the daemon knows), checked, and only then renamed.
 */
import { chmodSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { DbBackupResult, DbCheckResult } from "../../protocol/database.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonContext } from "../context.js";
import { backupDatabase, checkCopy, integrityCheck } from "../store/backup.js";
import { describe } from "./maintenance-steps.js";

export const BACKUP_MODE = 0o600;

/** `agentlab-YYYYMMDD-HHMMSS.db` (UTC), the name a backup into a directory gets. */
export function defaultBackupName(at: Date): string {
  const iso = at.toISOString(); // 2026-12-07T06:30:00.000Z
  return `agentlab-${iso.slice(0, 10).replaceAll("-", "")}-${iso.slice(11, 19).replaceAll(":", "")}.db`;
}

/**
 * Backups "named like" `name`: the same name with every run of digits free, so
 * agentlab-20261207-063000.db matches agentlab-20261130-063000.db but not agentlab.db or notes.txt.
 */
export function sameSeries(name: string): RegExp {
  const parts = name.split(/\d+/).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${parts.join("\\d+")}$`);
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export class DatabaseService {
  constructor(private readonly ctx: DaemonContext) {}

  async backup(out: string, keep?: number): Promise<DbBackupResult> {
    const { ctx } = this;
    const target =
      out.endsWith("/") || isDirectory(out) ? join(out, defaultBackupName(ctx.clock.now())) : out;
    const dir = dirname(target);
    if (!isDirectory(dir)) {
      throw new AgentlabError("USAGE", `--out: directory ${dir} does not exist`, {
        hint: `create it first (mkdir -p -m 0700 ${dir}), or choose another --out`,
      });
    }
    if (target === ctx.store.path) {
      throw new AgentlabError("USAGE", "--out: that is the database itself", { hint: "choose another path" });
    }
    const tmp = `${target}.tmp-${process.pid}`;
    try {
      await backupDatabase(ctx.store, tmp);
      chmodSync(tmp, BACKUP_MODE);
      const integrity = checkCopy(tmp);
      if (integrity !== "ok") {
        throw new AgentlabError("DB_CORRUPT", `the backup copy does not pass quick_check: ${integrity}`, {
          hint: "run agentlab db check; nothing was kept",
        });
      }
      renameSync(tmp, target);
    } catch (error) {
      for (const suffix of ["", "-wal", "-shm", "-journal"]) rmSync(`${tmp}${suffix}`, { force: true });
      if (error instanceof AgentlabError) throw error;
      throw new AgentlabError("DB_UNAVAILABLE", `cannot write the backup ${target}: ${describe(error)}`, {
        hint: "check the directory's permissions and free space (df -h)",
        cause: error,
      });
    }
    const removed = keep === undefined ? [] : this.#rotate(target, keep);
    ctx.log.info({ path: target, removed }, `database backed up to ${target}`);
    return { path: target, size_bytes: statSync(target).size, integrity: "ok", removed };
  }

  /** Keep the newest `keep` backups of the series `target` belongs to (it counts as one). */
  #rotate(target: string, keep: number): string[] {
    const dir = dirname(target);
    const series = sameSeries(basename(target));
    const backups = readdirSync(dir)
      .filter((name) => series.test(name))
      .map((name) => ({ path: join(dir, name), mtime: statSync(join(dir, name)).mtimeMs }))
      .sort((a, b) => b.mtime - a.mtime || (a.path < b.path ? 1 : -1));
    const removed: string[] = [];
    for (const old of backups.slice(keep)) {
      if (old.path === target || old.path === this.ctx.store.path) continue;
      rmSync(old.path, { force: true });
      removed.push(old.path);
    }
    return removed;
  }

  check(): DbCheckResult {
    const lines = integrityCheck(this.ctx.store);
    return { path: this.ctx.store.path, ok: lines.length === 1 && lines[0] === "ok", lines };
  }
}
