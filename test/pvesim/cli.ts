/**
 * The simulator's one program: `pvesim init|serve|control` for tests, and the `qm`, `pvesh`, `pvesm`
 * personalities the launchers in bin/ dispatch to.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

// Every other module is imported by the command that needs it: a `pvesh` run is a fresh process whose
// start-up is mostly module loading (test/pvesim/README.md, "The shell face's cost"), and it must not
// pay for the HTTPS server, the seeding or the host tools. Types cost nothing at run time.
import type { Io } from "./cli-common.js";
import type { Control } from "./control.js";

const USAGE = `usage:
  pvesim init DIR [--nodes pve,pve2] [--template 9000|0] [--cluster NAME] [--force]
                  [--storages local,local-lvm,local-zfs[,ID:TYPE[:ARG]]...] [--guest-image DIR]
  pvesim serve DIR [--port N] [--host 127.0.0.1]
  pvesim control DIR [--set key=value]... [--fault name[=args]]... [--clear-faults] [--clear-fault name]
                     [--remove-vm VMID]... [--add-token USER@REALM!ID [--privsep 0|1]]
                     [--add-role NAME:PRIV[,PRIV...]]... [--acl PATH:ROLE:SUBJECT[:0]]...
                     [--host-reboot all|NODE] [--show]
  pvesim qm|pvesh|pvesm|zfs|lvs|lvchange ARGS...      (state directory from PVESIM_DIR)`;

class CliError extends Error {}

/** Pulls `--name value` pairs (repeatable) out of argv; the rest stays positional. */
function takeOptions(
  argv: string[],
  flags: Set<string>,
): { positional: string[]; opts: Map<string, string[]> } {
  const positional: string[] = [];
  const opts = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string;
    if (eq > 0) value = arg.slice(eq + 1);
    else if (flags.has(name)) value = "1";
    else {
      const next = argv[++i];
      if (next === undefined) throw new CliError(`--${name} needs a value`);
      value = next;
    }
    opts.set(name, [...(opts.get(name) ?? []), value]);
  }
  return { positional, opts };
}

function one(opts: Map<string, string[]>, name: string): string | undefined {
  const v = opts.get(name);
  return v ? v[v.length - 1] : undefined;
}

function checkKnown(opts: Map<string, string[]>, known: string[]): void {
  for (const name of opts.keys()) {
    if (!known.includes(name)) throw new CliError(`unknown option --${name}`);
  }
}

function needDir(positional: string[]): string {
  const dir = positional[0];
  if (!dir) throw new CliError("missing DIR");
  return dir;
}

async function init(argv: string[]): Promise<number> {
  const { positional, opts } = takeOptions(argv, new Set(["force"]));
  checkKnown(opts, ["nodes", "template", "cluster", "force", "storages", "guest-image"]);
  const dir = needDir(positional);
  const nodes = (one(opts, "nodes") ?? "pve").split(",").filter(Boolean);
  if (nodes.some((n) => !/^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$/.test(n)))
    throw new CliError("invalid node name");
  const template = Number(one(opts, "template") ?? "9000");
  if (!Number.isInteger(template) || (template !== 0 && (template < 100 || template > 999_999_999))) {
    throw new CliError("--template wants a VMID (>= 100) or 0");
  }
  const { initCluster } = await import("./seed.js");
  const token = initCluster(dir, {
    nodes,
    template,
    cluster: one(opts, "cluster") ?? "agentlab-sim",
    force: opts.has("force"),
    ...(opts.has("storages") ? { storages: (one(opts, "storages") ?? "").split(",").filter(Boolean) } : {}),
    ...(opts.has("guest-image") ? { guestImage: one(opts, "guest-image") ?? "" } : {}),
  });
  process.stdout.write(`${JSON.stringify({ dir, nodes, template, token })}\n`);
  return 0;
}

async function serve(argv: string[]): Promise<number> {
  const { positional, opts } = takeOptions(argv, new Set());
  checkKnown(opts, ["port", "host"]);
  const dir = needDir(positional);
  const port = Number(one(opts, "port") ?? "0");
  const { startServer } = await import("./server.js");
  const running = await startServer(dir, { port, host: one(opts, "host") ?? "127.0.0.1" });
  const info = { url: running.url, port: running.port, ca_path: running.caPath };
  process.stdout.write(`${JSON.stringify(info)}\n`);
  const stop = (): void => {
    running.close().then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  return new Promise<number>(() => {});
}

async function control(argv: string[]): Promise<number> {
  const { positional, opts } = takeOptions(argv, new Set(["clear-faults", "show"]));
  checkKnown(opts, [
    "set",
    "fault",
    "clear-faults",
    "clear-fault",
    "remove-vm",
    "add-token",
    "privsep",
    "add-role",
    "acl",
    "host-reboot",
    "show",
  ]);
  const dir = needDir(positional);
  const { parseFault, parseKnob, readControl, updateControl } = await import("./control.js");
  const knobs = (opts.get("set") ?? []).map((a) => parseKnob(a));
  const faults = (opts.get("fault") ?? []).map((f) => parseFault(f));
  const clearAll = opts.has("clear-faults");
  const clear = opts.get("clear-fault") ?? [];
  let result: Control | undefined;
  if (knobs.length || faults.length || clearAll || clear.length) {
    result = await updateControl(dir, (c) => {
      for (const [key, value] of knobs) (c as unknown as Record<string, unknown>)[key] = value;
      if (clearAll) c.faults = [];
      c.faults = c.faults.filter((f) => !clear.includes(f.name));
      c.faults.push(...faults);
    });
  }
  const removals = (opts.get("remove-vm") ?? []).map(Number);
  const tokenId = one(opts, "add-token");
  const acls = opts.get("acl") ?? [];
  const roles = opts.get("add-role") ?? [];
  const printed: Record<string, unknown> = {};
  if (removals.length || tokenId || acls.length || roles.length) {
    const [{ addAcl, addRole, addToken }, { removeVmBehindBack }, { withModel }] = await Promise.all([
      import("./access.js"),
      import("./lifecycle.js"),
      import("./runner.js"),
    ]);
    await withModel(dir, (ctx) => {
      // Like `pveum role add NAME -privs "A,B"`; roles come first so the ACLs below can name them.
      for (const role of roles) {
        const colon = role.indexOf(":");
        if (colon <= 0) throw new CliError(`--add-role wants NAME:PRIV[,PRIV...], got '${role}'`);
        const privs = role
          .slice(colon + 1)
          .split(/[,;\s]+/)
          .filter(Boolean);
        addRole(ctx.state, role.slice(0, colon), privs, ctx.control.pve_version);
      }
      for (const vmid of removals) {
        if (!removeVmBehindBack(ctx, vmid)) throw new CliError(`VM ${vmid} does not exist`);
      }
      if (tokenId) {
        const secret = addToken(ctx.state, tokenId, (one(opts, "privsep") ?? "1") !== "0");
        printed["token"] = `${tokenId}=${secret}`;
      }
      for (const acl of acls) {
        const [path, role, subject, propagate] = acl.split(":");
        if (!path || !role || !subject) throw new CliError(`--acl wants PATH:ROLE:SUBJECT, got '${acl}'`);
        addAcl(ctx.state, path, role, subject, propagate !== "0");
      }
    });
  }
  const reboot = one(opts, "host-reboot");
  if (reboot !== undefined) {
    const { rebootNodes } = await import("./host-cli.js");
    await rebootNodes(dir, reboot === "all" ? undefined : reboot);
  }
  if (opts.has("show")) printed["control"] = result ?? readControl(dir);
  if (Object.keys(printed).length > 0) process.stdout.write(`${JSON.stringify(printed)}\n`);
  return 0;
}

/**
 * A CLI that may run a worker in the foreground: signals stop the worker, not the CLI (cli-common.ts).
 * The handlers are armed once its modules are loaded, as when they were all imported before `main`.
 */
async function foreground(
  load: () => Promise<(dir: string, argv: string[], io: Io) => Promise<number>>,
  argv: string[],
): Promise<number> {
  const run = await load();
  const { armForegroundInterrupt, exitIfInterrupted, processIo } = await import("./cli-common.js");
  const { dirFromEnv } = await import("./paths.js");
  armForegroundInterrupt();
  const code = await run(dirFromEnv(), argv, processIo);
  exitIfInterrupted();
  return code;
}

/** A host tool (zfs, lvs, lvchange): no foreground worker, so no signal handling of its own. */
async function hostTool(name: "zfsMain" | "lvsMain" | "lvchangeMain", argv: string[]): Promise<number> {
  const tools = await import("./host-cli.js");
  const { processIo } = await import("./cli-common.js");
  const { dirFromEnv } = await import("./paths.js");
  return await tools[name](dirFromEnv(), argv, processIo);
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "init":
        return await init(rest);
      case "serve":
        return await serve(rest);
      case "control":
        return await control(rest);
      case "qm":
        return await foreground(async () => (await import("./qm.js")).qmMain, rest);
      case "pvesh":
        return await foreground(async () => (await import("./pvesh.js")).pveshMain, rest);
      case "pvesm":
        return await foreground(async () => (await import("./pvesm.js")).pvesmMain, rest);
      case "zfs":
        return await hostTool("zfsMain", rest);
      case "lvs":
        return await hostTool("lvsMain", rest);
      case "lvchange":
        return await hostTool("lvchangeMain", rest);
      default:
        process.stderr.write(`${USAGE}\n`);
        return 2;
    }
  } catch (err) {
    process.stderr.write(`pvesim: ${err instanceof Error ? err.message : String(err)}\n`);
    return err instanceof CliError ? 2 : 1;
  }
}

// Only as a program: importing this module must not run anything. Node's test runner also executes
// every .js file under a `test/` directory as a test file; run that way (no arguments) it is a no-op.
const isEntry =
  process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href;
const underTestRunner = process.env["NODE_TEST_CONTEXT"] !== undefined && process.argv.length <= 2;
if (isEntry && !underTestRunner) {
  // A closed pipe (`qm list | head`) ends the program quietly, as it would a Perl CLI.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  });
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
