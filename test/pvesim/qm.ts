/** The fake `qm`: local-node VM management with Proxmox's output formats and exit codes. */
import { readFileSync } from "node:fs";
import {
  bindPositional,
  type Io,
  localNode,
  parseArgs,
  reportError,
  rootCall,
  routeFor,
  specOf,
  taskFailed,
  waitForTask,
} from "./cli-common.js";
import { PveError } from "./errors.js";
import { pad, perlPrettyJson } from "./format.js";
import type { ParamSpec, RawParams } from "./schema.js";
import { uriEscape } from "./vmconfig.js";

interface Command {
  usage: string;
  positional: string[];
  /** The API route whose parameters the options follow (and which validates them). */
  route?: [string, string];
  /** Options of the CLI itself, for commands that do not pass options through to a route. */
  options?: Record<string, ParamSpec>;
  run(dir: string, node: string, p: RawParams, io: Io): Promise<number>;
}

const VM = "/nodes/{node}/qemu/{vmid}";

function fill(path: string, node: string, p: RawParams): string {
  return path
    .replace("{node}", node)
    .replace("{vmid}", String(p["vmid"]))
    .replace("{snapname}", String(p["snapname"] ?? ""));
}

function without(p: RawParams, ...keys: string[]): RawParams {
  const out = { ...p };
  for (const k of keys) delete out[k];
  return out;
}

/** A command that starts a worker and waits for it in the foreground (exit 255 if it fails). */
function taskCommand(usage: string, positional: string[], method: string, path: string): Command {
  return {
    usage,
    positional,
    route: [method, path],
    async run(dir, node, p, io) {
      // Path placeholders travel in the path; everything else is a parameter.
      const inPath = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
      const result = await rootCall(dir, {
        method,
        path: fill(path, node, p),
        params: without(p, ...inPath),
        localNode: node,
      });
      if (!result.task) return 0;
      const task = await waitForTask(dir, result.task.upid, io);
      if (taskFailed(task)) {
        io.err(`${task.exitstatus}\n`);
        return 255;
      }
      return 0;
    },
  };
}

async function get(dir: string, node: string, path: string, params: RawParams = {}): Promise<unknown> {
  return (await rootCall(dir, { method: "GET", path, params, localNode: node })).data;
}

const COMMANDS: Record<string, Command> = {
  list: {
    usage: "qm list  [OPTIONS]",
    positional: [],
    options: { full: { type: "boolean" } },
    async run(dir, node, p, io) {
      const full = p["full"] !== undefined && p["full"] !== "0";
      const vms = (await get(dir, node, `/nodes/${node}/qemu`, { full: "1" })) as Array<
        Record<string, unknown>
      >;
      if (vms.length === 0) return 0;
      const line = (a: unknown, b: unknown, c: unknown, d: unknown, e: string, f: unknown): string =>
        `${pad(String(a), 10)} ${pad(String(b), 20, true)} ${pad(String(c), 10, true)} ${pad(String(d), 10, true)} ${pad(e, 12)} ${pad(String(f), 10, true)}\n`;
      io.out(line("VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)", "PID"));
      for (const vm of vms) {
        const status = full ? vm["qmpstatus"] : vm["status"];
        const mem = Math.floor(Number(vm["maxmem"]) / 1024 / 1024);
        const disk = (Number(vm["maxdisk"]) / 1024 ** 3).toFixed(2);
        io.out(line(vm["vmid"], vm["name"], status, mem, disk, vm["pid"] ?? 0));
      }
      return 0;
    },
  },
  status: {
    usage: "qm status <vmid> [OPTIONS]",
    positional: ["vmid"],
    options: { verbose: { type: "boolean" } },
    async run(dir, node, p, io) {
      const verbose = p["verbose"] !== undefined && p["verbose"] !== "0";
      const st = (await get(dir, node, fill(`${VM}/status/current`, node, p))) as Record<string, unknown>;
      if (!verbose) {
        io.out(`status: ${st["qmpstatus"]}\n`);
        return 0;
      }
      for (const key of Object.keys(st).sort()) {
        const v = st[key];
        io.out(`${key}: ${typeof v === "object" ? JSON.stringify(v) : String(v)}\n`);
      }
      return 0;
    },
  },
  config: {
    usage: "qm config <vmid> [OPTIONS]",
    positional: ["vmid"],
    route: ["GET", `${VM}/config`],
    async run(dir, node, p, io) {
      const config = (await get(dir, node, fill(`${VM}/config`, node, p), without(p, "vmid"))) as Record<
        string,
        unknown
      >;
      for (const key of Object.keys(config).sort()) {
        if (key === "digest") continue;
        const value = String(config[key]);
        io.out(`${key}: ${key === "description" ? value.replace(/\n/g, "%0A") : value}\n`);
      }
      return 0;
    },
  },
  pending: {
    usage: "qm pending <vmid>",
    positional: ["vmid"],
    async run(dir, node, p, io) {
      const rows = (await get(dir, node, fill(`${VM}/pending`, node, p))) as Array<Record<string, unknown>>;
      for (const r of rows) {
        if (r["key"] === "digest") continue;
        if (r["delete"]) io.out(`del ${r["key"]}: ${r["value"] ?? ""}\n`);
        else if (r["pending"] !== undefined) io.out(`new ${r["key"]}: ${r["pending"]}\n`);
        if (r["value"] !== undefined && !r["delete"]) io.out(`cur ${r["key"]}: ${r["value"]}\n`);
      }
      return 0;
    },
  },
  set: {
    usage: "qm set <vmid> [OPTIONS]",
    positional: ["vmid"],
    route: ["PUT", `${VM}/config`],
    async run(dir, node, p, io) {
      const params = without(p, "vmid");
      const keys = params["sshkeys"];
      if (keys !== undefined) {
        // The CLI takes a file and encodes it itself.
        const file = String(keys);
        let text: string;
        try {
          text = readFileSync(file, "utf8");
        } catch (err) {
          throw new PveError(
            500,
            `unable to open file '${file}' - ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "No such file or directory" : (err as Error).message}`,
          );
        }
        params["sshkeys"] = uriEscape(text);
      }
      const result = await rootCall(dir, {
        method: "PUT",
        path: fill(`${VM}/config`, node, p),
        params,
        localNode: node,
      });
      for (const w of result.warnings ?? []) io.err(`${w}\n`);
      for (const m of result.messages ?? []) io.out(`${m}\n`);
      return 0;
    },
  },
  unlock: {
    usage: "qm unlock <vmid>",
    positional: ["vmid"],
    async run(dir, node, p) {
      await rootCall(dir, {
        method: "PUT",
        path: fill(`${VM}/config`, node, p),
        params: { delete: "lock", skiplock: "1" },
        localNode: node,
      });
      return 0;
    },
  },
  unlink: {
    usage: "qm disk unlink <vmid> --idlist <string> [OPTIONS]",
    positional: ["vmid"],
    route: ["PUT", `${VM}/unlink`],
    async run(dir, node, p, io) {
      const result = await rootCall(dir, {
        method: "PUT",
        path: fill(`${VM}/unlink`, node, p),
        params: without(p, "vmid"),
        localNode: node,
      });
      for (const w of result.warnings ?? []) io.err(`${w}\n`);
      return 0;
    },
  },
  create: taskCommand("qm create <vmid> [OPTIONS]", ["vmid"], "POST", "/nodes/{node}/qemu"),
  clone: taskCommand("qm clone <vmid> <newid> [OPTIONS]", ["vmid", "newid"], "POST", `${VM}/clone`),
  start: taskCommand("qm start <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/start`),
  stop: taskCommand("qm stop <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/stop`),
  shutdown: taskCommand("qm shutdown <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/shutdown`),
  reboot: taskCommand("qm reboot <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/reboot`),
  reset: taskCommand("qm reset <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/reset`),
  suspend: taskCommand("qm suspend <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/suspend`),
  resume: taskCommand("qm resume <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/status/resume`),
  destroy: taskCommand("qm destroy <vmid> [OPTIONS]", ["vmid"], "DELETE", VM),
  template: taskCommand("qm template <vmid> [OPTIONS]", ["vmid"], "POST", `${VM}/template`),
  resize: taskCommand(
    "qm disk resize <vmid> <disk> <size> [OPTIONS]",
    ["vmid", "disk", "size"],
    "PUT",
    `${VM}/resize`,
  ),
  snapshot: taskCommand(
    "qm snapshot <vmid> <snapname> [OPTIONS]",
    ["vmid", "snapname"],
    "POST",
    `${VM}/snapshot`,
  ),
  rollback: taskCommand(
    "qm rollback <vmid> <snapname> [OPTIONS]",
    ["vmid", "snapname"],
    "POST",
    `${VM}/snapshot/{snapname}/rollback`,
  ),
  delsnapshot: taskCommand(
    "qm delsnapshot <vmid> <snapname> [OPTIONS]",
    ["vmid", "snapname"],
    "DELETE",
    `${VM}/snapshot/{snapname}`,
  ),
  listsnapshot: {
    usage: "qm listsnapshot <vmid>",
    positional: ["vmid"],
    async run(dir, node, p, io) {
      const snaps = (await get(dir, node, fill(`${VM}/snapshot`, node, p))) as Array<Record<string, unknown>>;
      const byParent = new Map<string, Array<Record<string, unknown>>>();
      for (const s of snaps) {
        const parent = String(s["parent"] ?? "");
        byParent.set(parent, [...(byParent.get(parent) ?? []), s]);
      }
      const time = (s: Record<string, unknown>): number =>
        s["name"] === "current" ? Number.MAX_SAFE_INTEGER : Number(s["snaptime"] ?? 0);
      const print = (parent: string, depth: number): void => {
        const children = (byParent.get(parent) ?? []).sort((a, b) => time(a) - time(b));
        for (const s of children) {
          const name = String(s["name"]);
          const when =
            s["snaptime"] !== undefined
              ? new Date(Number(s["snaptime"]) * 1000)
                  .toLocaleString("sv-SE", { hour12: false })
                  .replace("T", " ")
              : "";
          const description =
            name === "current" ? "You are here!" : String(s["description"] || "no-description");
          io.out(
            `${pad(`${" ".repeat(depth)}\`-> ${name}`, 32, true)} ${pad(when, 23, true)} ${description}\n`,
          );
          if (name !== "current") print(name, depth + 1);
        }
      };
      print("", 0);
      return 0;
    },
  },
  guest: {
    usage: "qm guest cmd <vmid> <command>",
    positional: ["vmid", "command"],
    async run(dir, node, p, io) {
      const command = String(p["command"]);
      const known: Record<string, [string, string]> = {
        ping: ["POST", "agent/ping"],
        info: ["GET", "agent/info"],
        "network-get-interfaces": ["GET", "agent/network-get-interfaces"],
        "get-osinfo": ["GET", "agent/get-osinfo"],
      };
      const target = known[command];
      if (!target) {
        throw new PveError(400, "Parameter verification failed.", {
          errors: {
            command: `value '${command}' does not have a value in the enumeration '${Object.keys(known).join(", ")}'`,
          },
        });
      }
      const result = await rootCall(dir, {
        method: target[0],
        path: `${fill(VM, node, p)}/${target[1]}`,
        params: {},
        localNode: node,
      });
      const value = (result.data as { result?: unknown } | null)?.result;
      const empty =
        value === undefined ||
        (typeof value === "object" && value !== null && Object.keys(value).length === 0);
      if (!empty) io.out(`${perlPrettyJson(value)}\n`);
      return 0;
    },
  },
};

function usageAll(): string {
  return `USAGE: qm <COMMAND> [ARGS] [OPTIONS]\n${Object.values(COMMANDS)
    .map((c) => `       ${c.usage}`)
    .join("\n")}`;
}

export async function qmMain(dir: string, argv: string[], io: Io): Promise<number> {
  const args = [...argv];
  let name = args.shift();
  if (name === "guest") {
    const sub = args.shift();
    if (sub !== "cmd") {
      io.err(`unknown command 'qm guest ${sub ?? ""}'\n`);
      return 255;
    }
  } else if (name === "disk") {
    name = args.shift();
    if (name !== "resize" && name !== "unlink") {
      io.err(`unknown command 'qm disk ${name ?? ""}'\n`);
      return 255;
    }
  }
  if (!name || name === "help") {
    io.out(`${usageAll()}\n`);
    return name ? 0 : 255;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.err(`unknown command 'qm ${name}'\n${usageAll()}\n`);
    return 255;
  }
  try {
    const route = command.route ? routeFor(command.route[0], command.route[1]) : undefined;
    const parsed = parseArgs(
      args,
      (key) => command.options?.[key] ?? (route ? specOf(route, key) : undefined),
    );
    if (!route) {
      const unknown = Object.keys(parsed.options).filter((k) => !command.options?.[k]);
      if (unknown.length > 0) {
        throw new PveError(400, "Parameter verification failed.", {
          errors: Object.fromEntries(
            unknown.map((k) => [
              k,
              "property is not defined in schema and the schema does not allow additional properties",
            ]),
          ),
        });
      }
    }
    const params = bindPositional(command.positional, parsed);
    const node = await localNode(dir);
    return await command.run(dir, node, params, io);
  } catch (err) {
    return reportError(err, io, `USAGE: ${command.usage}`);
  }
}
