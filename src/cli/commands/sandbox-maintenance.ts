import type { CommandModule } from "yargs";
import type {
  DriftFinding,
  Inventory,
  ReconcileChange,
  ReconcileResult,
} from "../../protocol/maintenance.js";
import { sandboxInventory, sandboxReconcile } from "../../protocol/wire.js";
import { execute, type GlobalArgs } from "../context.js";

type Args<T> = GlobalArgs & T;

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : word.endsWith("x") ? "es" : "s"}`;
}

function summary(inv: Inventory): string {
  const errors = inv.findings.filter((f) => f.severity === "error").length;
  const warnings = inv.findings.length - errors;
  const compared = `${plural(inv.sandboxes, "sandbox")} against ${plural(inv.proxmox_vms, "Proxmox VM")}`;
  const busy =
    inv.busy.length > 0
      ? `; skipped ${inv.busy.join(", ")} (an operation is in flight, checked next time)`
      : "";
  if (inv.findings.length === 0) return `no drift: compared ${compared}${busy}\n`;
  return `compared ${compared}: ${plural(errors, "error")}, ${plural(warnings, "warning")}${busy}\n`;
}

function findingText(f: DriftFinding, withPlan: boolean): string {
  const lines = [`${f.severity.padEnd(7)} ${String(f.vmid).padEnd(6)} ${f.code}: ${f.message}`];
  lines.push(`${" ".repeat(15)}fix: ${f.fix}`);
  if (withPlan) lines.push(`${" ".repeat(15)}reconcile --apply: ${f.reconcile ?? "leaves it alone"}`);
  return `${lines.join("\n")}\n`;
}

export function inventoryText(inv: Inventory, withPlan = false): string {
  return summary(inv) + inv.findings.map((f) => findingText(f, withPlan)).join("");
}

function changeText(c: ReconcileChange): string {
  return `changed ${String(c.vmid).padEnd(6)} ${c.message}\n`;
}

export function reconcileText(result: ReconcileResult): string {
  if (!result.applied) {
    const planned = result.findings.filter((f) => f.reconcile !== undefined).length;
    const tail =
      planned > 0
        ? `run agentlab sandbox reconcile --apply to make ${planned === 1 ? "this change" : `these ${planned} changes`}\n`
        : "";
    return inventoryText(result, true) + tail;
  }
  const parts = [summary(result)];
  for (const change of result.changes) parts.push(changeText(change));
  for (const error of result.errors)
    parts.push(`failed  ${String(error.vmid).padEnd(6)} ${error.message} (the daemon retries every 30 s)\n`);
  if (result.changes.length === 0 && result.errors.length === 0) parts.push("nothing changed\n");
  const manual = result.findings.filter((f) => f.reconcile === undefined).length;
  if (manual > 0) {
    parts.push(
      `${plural(manual, "finding")} ${manual === 1 ? "is" : "are"} not for reconcile: agentlab sandbox inventory shows the fix\n`,
    );
  }
  return parts.join("");
}

export const inventoryCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "inventory",
  describe: "Report drift between the database and Proxmox (read-only), with the command that fixes each",
  builder: (yargs) =>
    yargs.epilog(
      "Codes: missing_in_proxmox, stopped_while_marked_running, running_while_marked_stopped, " +
        "stuck_before_ready, unmanaged_proxmox_vm (agentlab-tagged VM no live sandbox owns), " +
        "missing_agent_ip, vm_left_behind (a FAILED sandbox's VM still exists).",
    ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const inventory = await ctx.call(sandboxInventory, {});
      return { data: inventory, text: inventoryText(inventory) };
    }),
};

export const reconcileCommand: CommandModule<GlobalArgs, Args<{ apply: boolean }>> = {
  command: "reconcile",
  describe: "Show what a reconciler pass would change; with --apply, run one now and show what changed",
  builder: (yargs) =>
    yargs
      .option("apply", {
        type: "boolean",
        default: false,
        describe: "make the changes (the daemon also runs a pass every 30 s)",
      })
      .example("agentlab sandbox reconcile", "what would change, and why")
      .example("agentlab sandbox reconcile --apply --json", "fix it now; print what changed as JSON"),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(sandboxReconcile, { apply: argv.apply });
      return { data: result, text: reconcileText(result) };
    }),
};
