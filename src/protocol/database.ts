import { z } from "zod";
import { boundedString, LIMITS, numberLimit } from "./limits.js";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

/**
 * `agentlab db backup` and `agentlab db check`: the database as a whole, through the daemon's own
 * connection, so both are consistent while the daemon writes.
 */

export const DbBackupResult = z.object({
  path: z.string().describe("the backup written (absolute)"),
  size_bytes: z.number().int(),
  integrity: z.string().describe('PRAGMA quick_check of the copy: "ok"'),
  removed: z.array(z.string()).describe("older backups deleted by --keep"),
});
export type DbBackupResult = z.infer<typeof DbBackupResult>;

export const dbBackup = defineMethod(wire.dbBackup, {
  summary:
    "Copy the database with SQLite's online backup API (consistent while the daemon writes) to out, a file or a directory (then agentlab-YYYYMMDD-HHMMSS.db in it), mode 0600, checked before it is kept. With keep, only the newest keep backups named like it stay.",
  params: z
    .object({
      out: boundedString(LIMITS.PATH)
        .min(1)
        .refine((p) => p.startsWith("/"), "out must be an absolute path (the daemon writes it)"),
      keep: z
        .number()
        .int()
        .positive()
        .max(LIMITS.COUNT.max, numberLimit(LIMITS.COUNT))
        .optional()
        .describe("keep only the newest N backups named like this one"),
    })
    .strict(),
  result: DbBackupResult,
});

export const DbCheckResult = z.object({
  path: z.string(),
  ok: z.boolean(),
  lines: z.array(z.string()).describe('PRAGMA integrity_check: ["ok"], or up to 100 lines naming the damage'),
});
export type DbCheckResult = z.infer<typeof DbCheckResult>;

export const dbCheck = defineMethod(wire.dbCheck, {
  summary:
    "PRAGMA integrity_check of the database on the daemon's connection (reads every page: seconds on a large file).",
  params: z.object({}).strict(),
  result: DbCheckResult,
});
