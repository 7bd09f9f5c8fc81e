import type { Argv, CommandModule } from "yargs";
import type { ResultOf } from "../../protocol/call-types.js";
import {
  workspaceAttach,
  workspaceCheck,
  workspaceCreate,
  workspaceDestroy,
  workspaceDetach,
  workspaceFork,
  workspaceFsck,
  workspaceLeaseClear,
  workspaceList,
  workspaceRebind,
  workspaceShow,
  workspaceSnapshotCreate,
  workspaceSnapshotList,
  workspaceSnapshotRestore,
} from "../../protocol/wire.js";
import type { FsckResult, Workspace, WorkspaceDetail, WorkspaceSnapshot } from "../../protocol/workspace.js";
import { confirm } from "../confirm.js";
import { execute, type GlobalArgs } from "../context.js";
import { sizeOption, ttlOption, vmidArg } from "../options.js";
import { fields, table } from "../render.js";

type Args<T> = GlobalArgs & T;

const wsPositional = <T>(yargs: Argv<T>) =>
  yargs.positional("workspace", {
    type: "string",
    demandOption: true,
    describe: "workspace name or id",
  }) as Argv<T & { workspace: string }>;

function leaseText(ws: Workspace): string {
  if (!ws.lease_owner) return "-";
  return `${ws.lease_owner}${ws.lease_expires_at ? ` until ${ws.lease_expires_at}` : ""}`;
}

function workspaceTable(workspaces: Workspace[]): string {
  if (workspaces.length === 0) {
    return "no workspaces (create one with agentlab workspace create --name <name> --size 80G)\n";
  }
  return table(
    ["NAME", "ID", "STATE", "STORAGE", "SIZE", "ATTACHED", "LEASE"],
    workspaces.map((w) => [
      w.name,
      w.id,
      w.state,
      w.storage,
      `${w.size_gb}G`,
      w.attached_vmid !== undefined ? String(w.attached_vmid) : "-",
      leaseText(w),
    ]),
  );
}

function workspaceFields(w: Workspace): Array<[string, string]> {
  const pairs: Array<[string, string]> = [
    ["name", w.name],
    ["id", w.id],
    ["state", w.broken_reason ? `${w.state} (${w.broken_reason})` : w.state],
    [
      "storage",
      `${w.storage}${w.storage_type ? ` (${w.storage_type}${w.format ? `, ${w.format}` : ""})` : ""}`,
    ],
    ["node", w.node ?? "-"],
    ["volume", w.volid],
    ["size", `${w.size_gb}G`],
    ["holder vm", w.holder_vmid !== undefined ? String(w.holder_vmid) : "-"],
    ["attached", w.attached_vmid !== undefined ? `sandbox ${w.attached_vmid}` : "no"],
    ["lease", leaseText(w)],
  ];
  if (w.forked_from) {
    pairs.push([
      "forked from",
      `${w.forked_from}${w.fork_origin_snapshot ? ` @ ${w.fork_origin_snapshot}` : ""}${w.copy_mode ? ` (${w.copy_mode === "cow" ? "copy-on-write" : "full copy"})` : ""}`,
    ]);
  }
  pairs.push(["created", w.created_at]);
  return pairs;
}

function snapshotTable(snapshots: WorkspaceSnapshot[]): string {
  if (snapshots.length === 0) return "no snapshots\n";
  return table(
    ["NAME", "KIND", "CREATED", "RESTORABLE"],
    snapshots.map((s) => [
      s.name,
      s.kind,
      s.created_at ?? "-",
      s.restorable ? "yes" : `no${s.reason ? ` (${s.reason})` : ""}`,
    ]),
  );
}

function detailText(d: WorkspaceDetail): string {
  const pairs = workspaceFields(d);
  const h = d.holder;
  pairs.push([
    "holder",
    h.found
      ? `${h.status ?? "?"}${h.lock ? ` (locked: ${h.lock})` : ""}${h.protected === false ? ", NOT protected" : ""}`
      : (h.error ?? "missing"),
  ]);
  if (d.path) pairs.push(["path", d.path]);
  if (d.operation)
    pairs.push(["operation", `${d.operation.kind} (${d.operation.step}) since ${d.operation.started_at}`]);
  if (d.sessions.length > 0) pairs.push(["sessions", d.sessions.map((s) => s.name).join(", ")]);
  if (d.forks.length > 0) pairs.push(["forks", d.forks.map((f) => f.name).join(", ")]);
  const fsck = d.last_fsck as { status?: string; completed_at?: string } | undefined;
  if (fsck?.status)
    pairs.push(["last fsck", `${fsck.status}${fsck.completed_at ? ` at ${fsck.completed_at}` : ""}`]);
  return `${fields(pairs)}snapshots:\n${snapshotTable(d.snapshots)
    .split("\n")
    .filter(Boolean)
    .map((line) => `  ${line}`)
    .join("\n")}\n`;
}

const FSCK_WORD: Record<FsckResult["status"], string> = {
  clean: "clean",
  repaired: "repaired",
  needs_repair: "NEEDS REPAIR",
  failed: "failed",
};

export function fsckText(r: FsckResult): string {
  const lines = [
    `Workspace: ${r.workspace}`,
    `Volume: ${r.volume.volid} (${r.volume.device ?? r.volume.path})`,
    `Mode: ${r.mode}`,
    `Status: ${FSCK_WORD[r.status]}`,
    `Exit: ${r.exit_code ?? "-"} (${r.exit_summary})`,
  ];
  if (r.remediation) lines.push(`Remediation: ${r.remediation}`);
  if (r.status === "needs_repair" || r.status === "failed") {
    const output = r.output.trimEnd();
    if (output) lines.push("Output:", ...output.split("\n").map((line) => `  ${line}`));
  }
  return `${lines.join("\n")}\n`;
}

const createCommand: CommandModule<GlobalArgs, Args<{ name: string; size: string; storage?: string }>> = {
  command: "create",
  describe: "Create a workspace: a persistent disk that outlives sandboxes",
  builder: (yargs) =>
    yargs
      .option("name", { type: "string", demandOption: true, describe: "workspace name (a-z, 0-9, -)" })
      .option("size", { type: "string", demandOption: true, describe: "disk size: 80G, 80 or 1T" })
      .option("storage", {
        type: "string",
        describe: "Proxmox storage (zfspool, lvmthin or dir); default: config workspace_storage",
      })
      .example(
        "agentlab workspace create --name proj --size 80G",
        "an 80 GiB workspace on the default storage",
      )
      .example("agentlab workspace create --name proj --size 20G --storage local-lvm", "on LVM-thin"),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const ws = await ctx.call(workspaceCreate, {
        name: argv.name,
        size_gb: sizeOption("--size", argv.size),
        ...(argv.storage !== undefined ? { storage: argv.storage } : {}),
      });
      return { data: ws, text: fields(workspaceFields(ws)) };
    }),
};

const listCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "list",
  aliases: ["ls"],
  describe: "List workspaces with their attachment and lease",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceList, {});
      return { data: result, text: workspaceTable(result.workspaces) };
    }),
};

const showCommand: CommandModule<GlobalArgs, Args<{ workspace: string }>> = {
  command: "show <workspace>",
  describe: "Show a workspace: record, holder VM, volume path, snapshots, sessions, last fsck",
  builder: (yargs) => wsPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const detail = await ctx.call(workspaceShow, { workspace: argv.workspace });
      return { data: detail, text: detailText(detail) };
    }),
};

const attachCommand: CommandModule<GlobalArgs, Args<{ workspace: string; vmid: number }>> = {
  command: "attach <workspace> <vmid>",
  describe: "Attach a detached workspace to a sandbox (as scsi1, mounted at /work)",
  builder: (yargs) =>
    wsPositional(yargs)
      .positional("vmid", {
        type: "string",
        demandOption: true,
        coerce: vmidArg("<vmid>"),
        describe: "the sandbox's VMID",
      })
      .example("agentlab workspace attach proj 1012", "give sandbox 1012 the proj workspace") as Argv<
      Args<{ workspace: string; vmid: number }>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceAttach, { workspace: argv.workspace, vmid: argv.vmid });
      return { data: result, text: `${result.message}\n` };
    }),
};

const detachCommand: CommandModule<GlobalArgs, Args<{ workspace: string; hot: boolean }>> = {
  command: "detach <workspace>",
  describe: "Detach a workspace from its sandbox (shuts the sandbox down first unless --hot)",
  builder: (yargs) =>
    wsPositional(yargs)
      .option("hot", {
        type: "boolean",
        default: false,
        describe: "unplug from the running sandbox without stopping it (risky for a mounted filesystem)",
      })
      .epilogue(
        "Detaching from a running sandbox shuts it down cleanly first, so the guest's /work filesystem is unmounted; start it again with agentlab sandbox start <vmid>.",
      ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceDetach, { workspace: argv.workspace, hot: argv.hot });
      return { data: result, text: `${result.message}\n` };
    }),
};

const checkCommand: CommandModule<GlobalArgs, Args<{ workspace: string }>> = {
  command: "check <workspace>",
  describe: "Report drift between the database, the holder VM, the volume and VM configs (read-only)",
  builder: (yargs) =>
    wsPositional(yargs).epilogue(
      "Exit status: 0 when no finding is an error, 1 otherwise. Nothing is changed.",
    ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceCheck, { workspace: argv.workspace });
      const text =
        result.findings.length === 0
          ? `workspace ${result.workspace.name}: no drift found\n`
          : `${result.findings
              .map(
                (f) =>
                  `${f.severity.padEnd(7)} ${f.code}: ${f.message}${f.fix ? `\n        fix: ${f.fix}` : ""}`,
              )
              .join("\n")}\n`;
      return { data: result, text, exitCode: result.ok ? 0 : 1 };
    }),
};

const fsckCommand: CommandModule<GlobalArgs, Args<{ workspace: string; repair: boolean }>> = {
  command: "fsck <workspace>",
  describe: "Check a detached workspace's filesystem on the host (read-only unless --repair)",
  builder: (yargs) =>
    wsPositional(yargs)
      .option("repair", { type: "boolean", default: false, describe: "let e2fsck fix what it finds (-y)" })
      .example("agentlab workspace fsck proj", "read-only check (e2fsck -f -n)")
      .example("agentlab workspace fsck proj --repair", "repair after a NEEDS REPAIR result")
      .epilogue(
        "The workspace must be detached (agentlab workspace detach <workspace>). Exit status: 0 for clean or repaired, 1 for NEEDS REPAIR or failed.",
      ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceFsck, { workspace: argv.workspace, repair: argv.repair });
      const ok = result.status === "clean" || result.status === "repaired";
      return { data: result, text: fsckText(result), exitCode: ok ? 0 : 1 };
    }),
};

const snapshotCreate: CommandModule<GlobalArgs, Args<{ workspace: string; name: string }>> = {
  command: "create <workspace> <name>",
  describe: "Snapshot a detached workspace",
  builder: (yargs) =>
    wsPositional(yargs).positional("name", {
      type: "string",
      demandOption: true,
      describe: "snapshot name",
    }) as Argv<Args<{ workspace: string; name: string }>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceSnapshotCreate, { workspace: argv.workspace, name: argv.name });
      return {
        data: result,
        text: `snapshot ${result.snapshot.name} of workspace ${result.workspace} created\n`,
      };
    }),
};

const snapshotList: CommandModule<GlobalArgs, Args<{ workspace: string }>> = {
  command: "list <workspace>",
  aliases: ["ls"],
  describe: "List a workspace's snapshots",
  builder: (yargs) => wsPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceSnapshotList, { workspace: argv.workspace });
      return { data: result, text: snapshotTable(result.snapshots) };
    }),
};

const snapshotRestore: CommandModule<
  GlobalArgs,
  Args<{ workspace: string; name: string; force: boolean }>
> = {
  command: "restore <workspace> <name>",
  describe: "Roll a detached workspace back to a snapshot (asks first unless --force)",
  builder: (yargs) =>
    (
      wsPositional(yargs)
        .positional("name", {
          type: "string",
          demandOption: true,
          describe: "snapshot name",
        })
        .option("force", {
          type: "boolean",
          default: false,
          describe: "do not ask for confirmation (needed with --json or without a terminal)",
        }) as Argv<Args<{ workspace: string; name: string; force: boolean }>>
    ).epilogue(
      "Everything written to the workspace since the snapshot is lost. To keep the current data, fork " +
        "instead: agentlab workspace fork <workspace> --name <new> --from-snapshot <name>",
    ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      // Like destroy: the data written since the snapshot cannot be recovered afterwards.
      await confirm({
        question: `roll workspace ${argv.workspace} back to snapshot ${argv.name}; what was written since is lost`,
        action: "restore a workspace snapshot",
        force: argv.force,
        json: argv.json,
        out: ctx.out,
      });
      const result = await ctx.call(workspaceSnapshotRestore, { workspace: argv.workspace, name: argv.name });
      return {
        data: result,
        text: `workspace ${result.workspace} restored to snapshot ${result.snapshot}\n`,
      };
    }),
};

const snapshotCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "snapshot <command>",
  describe: "Create, list and restore workspace snapshots (the workspace must be detached)",
  builder: (yargs) =>
    yargs
      .command(snapshotCreate)
      .command(snapshotList)
      .command(snapshotRestore)
      .demandCommand(1, "name a snapshot command"),
  handler: () => {},
};

const forkCommand: CommandModule<
  GlobalArgs,
  Args<{ workspace: string; name: string; "from-snapshot"?: string }>
> = {
  command: "fork <workspace>",
  describe: "Copy a detached workspace into a new one (copy-on-write where the storage allows)",
  builder: (yargs) =>
    wsPositional(yargs)
      .option("name", { type: "string", demandOption: true, describe: "name of the new workspace" })
      .option("from-snapshot", {
        type: "string",
        describe: "copy this snapshot instead of the current state",
      })
      .example(
        "agentlab workspace fork proj --name proj-try --from-snapshot before-upgrade",
        "experiment safely",
      ),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const ws = await ctx.call(workspaceFork, {
        workspace: argv.workspace,
        name: argv.name,
        ...(argv["from-snapshot"] !== undefined ? { from_snapshot: argv["from-snapshot"] } : {}),
      });
      const how =
        ws.copy_mode === "full" ? " (full copy: this storage has no copy-on-write fork)" : " (copy-on-write)";
      return {
        data: ws,
        text: `workspace ${ws.name} forked from ${argv.workspace}${how}\n${fields(workspaceFields(ws))}`,
      };
    }),
};

const leaseClear: CommandModule<GlobalArgs, Args<{ workspace: string }>> = {
  command: "clear <workspace>",
  describe: "Clear a workspace's lease whoever holds it (when its holder is gone)",
  builder: (yargs) => wsPositional(yargs),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(workspaceLeaseClear, { workspace: argv.workspace });
      return {
        data: result,
        text: result.previous_owner
          ? `lease of workspace ${result.workspace.name} cleared (was held by ${result.previous_owner})\n`
          : `workspace ${result.workspace.name} had no lease\n`,
      };
    }),
};

const leaseCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "lease <command>",
  describe: "Manage workspace leases",
  builder: (yargs) => yargs.command(leaseClear).demandCommand(1, "name a lease command"),
  handler: () => {},
};

const rebindCommand: CommandModule<
  GlobalArgs,
  Args<{ workspace: string; profile: string; ttl?: string; "keep-old": boolean }>
> = {
  command: "rebind <workspace>",
  describe: "Move a workspace to a new sandbox of a profile (the old one is destroyed unless --keep-old)",
  builder: (yargs) =>
    wsPositional(yargs)
      .option("profile", { type: "string", demandOption: true, describe: "profile of the new sandbox" })
      .option("ttl", { type: "string", describe: "lease of the new sandbox: minutes (90) or 90m, 2h" })
      .option("keep-old", { type: "boolean", default: false, describe: "keep the old sandbox (stopped)" }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const ttl = ttlOption(argv.ttl);
      const result = await ctx.call(workspaceRebind, {
        workspace: argv.workspace,
        profile: argv.profile,
        keep_old: argv["keep-old"],
        ...(ttl !== undefined ? { ttl_minutes: ttl } : {}),
      });
      const old = result.old_vmid !== undefined ? ` (was on sandbox ${result.old_vmid})` : "";
      return {
        data: result,
        text: `workspace ${result.workspace.name} is on sandbox ${result.sandbox.vmid}${result.sandbox.ip ? ` at ${result.sandbox.ip}` : ""}${old}\n`,
      };
    }),
};

const destroyCommand: CommandModule<GlobalArgs, Args<{ workspace: string; force: boolean }>> = {
  command: "destroy <workspace>",
  aliases: ["rm"],
  describe: "Destroy a detached workspace, its disk and its snapshots (asks first unless --force)",
  builder: (yargs) =>
    wsPositional(yargs).option("force", {
      type: "boolean",
      default: false,
      describe: "do not ask for confirmation",
    }),
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (!argv.force) {
        const detail = await ctx.call(workspaceShow, { workspace: argv.workspace });
        const sessions =
          detail.sessions.length > 0
            ? ` and its sessions ${detail.sessions.map((s) => s.name).join(", ")}`
            : "";
        await confirm({
          question: `destroy workspace ${detail.name} (${detail.size_gb}G, ${detail.snapshots.length} snapshot(s))${sessions}; its data cannot be recovered`,
          action: "destroy a workspace",
          force: false,
          json: argv.json,
          out: ctx.out,
        });
      }
      const result = await ctx.call(workspaceDestroy, { workspace: argv.workspace });
      const sessions =
        result.deleted_sessions.length > 0
          ? ` (sessions deleted: ${result.deleted_sessions.join(", ")})`
          : "";
      return { data: result, text: `workspace ${result.name} destroyed${sessions}\n` };
    }),
};

export type WorkspaceCheckResult = ResultOf<typeof workspaceCheck>;

export const workspaceCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "workspace <command>",
  describe: "Create and manage workspaces (persistent /work disks)",
  builder: (yargs) =>
    yargs
      .command(createCommand)
      .command(listCommand)
      .command(showCommand)
      .command(attachCommand)
      .command(detachCommand)
      .command(checkCommand)
      .command(fsckCommand)
      .command(snapshotCommand)
      .command(forkCommand)
      .command(leaseCommand)
      .command(rebindCommand)
      .command(destroyCommand)
      .demandCommand(1, "name a workspace command"),
  handler: () => {},
};
