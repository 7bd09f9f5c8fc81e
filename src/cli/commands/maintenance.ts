import type { Argv, CommandModule } from "yargs";
import type { HousekeepingResult } from "../../protocol/maintenance.js";
import { maintenanceRun } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";
import { formatBytes } from "../render.js";

type Args<T> = GlobalArgs & T;

/** One line per step, its items indented under it, then what could not be done. */
export function housekeepingText(result: HousekeepingResult): string {
  const lines: string[] = [];
  for (const s of result.steps) {
    const freed = s.freed_bytes > 0 ? ` (${formatBytes(s.freed_bytes)})` : "";
    lines.push(`${`${s.step}:`.padEnd(10)} ${s.summary}${freed}`);
    for (const item of s.items.slice(0, 20)) lines.push(`           ${item}`);
    if (s.items.length > 20)
      lines.push(`           ... and ${s.items.length - 20} more (--json lists them all)`);
  }
  lines.push(
    result.dry_run
      ? `dry run: nothing was changed; would free ${formatBytes(result.freed_bytes)}`
      : `freed ${formatBytes(result.freed_bytes)}`,
  );
  for (const s of result.steps) for (const e of s.errors) lines.push(`error: ${s.step}: ${e}`);
  return `${lines.join("\n")}\n`;
}

const runCommand: CommandModule<GlobalArgs, Args<{ "dry-run"?: boolean }>> = {
  command: "run",
  describe:
    "Prune orphaned and never-created FAILED sandboxes, retire expired tokens, delete leftover snippets, artifacts past artifact_retention_days and events past event_retention_days, compact the database when worth it. Exits 1 naming what could not be done",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option("dry-run", { type: "boolean", describe: "show what would be removed and change nothing" })
      .example("agentlab maintenance run --dry-run", "see what a run would remove")
      .example("agentlab maintenance run", "what agentlab-maintenance.timer runs daily"),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(maintenanceRun, { dry_run: argv["dry-run"] === true });
      return { data: result, text: housekeepingText(result), exitCode: result.ok ? 0 : 1 };
    }),
};

export const maintenanceCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "maintenance <command>",
  describe: "Keep a long-lived host clean (docs/maintenance.md)",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs.command(runCommand).demandCommand(1, "name a maintenance command"),
  handler: () => {},
};
