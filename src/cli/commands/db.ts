import { resolve } from "node:path";
import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import { dbBackup, dbCheck } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";
import { formatBytes } from "../render.js";

type Args<T> = GlobalArgs & T;

/** The troubleshooting guide's "Corrupted database" steps, with the daemon's real path. */
export function recoverySteps(path: string): string {
  return [
    "recovery (docs/troubleshooting.md, Corrupted database):",
    "  1. systemctl stop agentlabd",
    `  2. cp ${path} ${path}.backup`,
    `  3. sqlite3 ${path} "PRAGMA integrity_check;"`,
    `     sqlite3 ${path} "VACUUM;"`,
    "     (or restore the newest good backup: agentlab db backup keeps them, e.g. in /var/backups/agentlab/)",
    `  4. if repair fails, start fresh (WARNING: this deletes all data): rm ${path}; systemctl start agentlabd`,
    "",
  ].join("\n");
}

const backupCommand: CommandModule<GlobalArgs, Args<{ out: string; keep?: number }>> = {
  command: "backup",
  describe:
    "Back the database up with SQLite's online backup API (consistent while the daemon writes), mode 0600",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option("out", {
        type: "string",
        demandOption: true,
        describe:
          "the backup file, or a directory (existing, or ending in /) to write agentlab-YYYYMMDD-HHMMSS.db into",
      })
      .option("keep", {
        type: "number",
        describe: "then keep only the newest N backups named like this one (digits may differ)",
      })
      .example("agentlab db backup --out /var/backups/agentlab/ --keep 7", "what agentlab-backup.timer runs")
      .example(
        "agentlab db backup --out /backup/agentlab-$(date +%Y%m%d-%H%M%S).db --keep 7",
        "the troubleshooting guide's cron line, with retention",
      ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.keep !== undefined && (!Number.isInteger(argv.keep) || argv.keep < 1)) {
        throw new AgentlabError("USAGE", `--keep: expected a positive whole number, got ${argv.keep}`);
      }
      // The daemon writes the file: it needs an absolute path; a trailing / still means "a directory".
      const out = resolve(argv.out) + (argv.out.endsWith("/") && argv.out !== "/" ? "/" : "");
      const result = await ctx.call(dbBackup, {
        out,
        ...(argv.keep !== undefined ? { keep: argv.keep } : {}),
      });
      const removed = result.removed.map((p) => `removed old backup ${p}\n`).join("");
      return {
        data: result,
        text: `database backed up to ${result.path} (${formatBytes(result.size_bytes)}, integrity ok)\n${removed}`,
      };
    }),
};

const checkCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "check",
  describe: "Run PRAGMA integrity_check on the database; on damage print it and the recovery steps, exit 1",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(dbCheck, {});
      if (result.ok) return { data: result, text: `database ${result.path}: integrity ok\n` };
      const lines = result.lines.map((l) => `  ${l}\n`).join("");
      return {
        data: result,
        text: `database ${result.path}: integrity check FAILED:\n${lines}${recoverySteps(result.path)}`,
        exitCode: 1,
      };
    }),
};

export const dbCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "db <command>",
  describe: "Back up and check the daemon's database (docs/maintenance.md)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs.command(backupCommand).command(checkCommand).demandCommand(1, "name a db command"),
  handler: () => {},
};
