/** The fake `pvesm`: storage status, allocation, paths and listings with pvesm's table layouts. */
import {
  bindPositional,
  type Io,
  localNode,
  parseArgs,
  reportError,
  rootCall,
  taskFailed,
  waitForTask,
} from "./cli-common.js";
import { PveError } from "./errors.js";
import { pad } from "./format.js";
import { withModel } from "./runner.js";
import type { ParamSpec, RawParams } from "./schema.js";
import { getStorage, splitVolid, volumePath } from "./storage.js";

interface Command {
  usage: string;
  positional: string[];
  options: Record<string, ParamSpec>;
  run(dir: string, node: string, p: RawParams, io: Io): Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  status: {
    usage: "pvesm status  [OPTIONS]",
    positional: [],
    options: {
      storage: { type: "string" },
      content: { type: "string" },
      enabled: { type: "boolean" },
      target: { type: "string" },
    },
    async run(dir, node, p, io) {
      const params: RawParams = {};
      if (p["storage"] !== undefined) params["storage"] = p["storage"];
      if (p["content"] !== undefined) params["content"] = p["content"];
      const rows = (
        await rootCall(dir, { method: "GET", path: `/nodes/${node}/storage`, params, localNode: node })
      ).data as Array<Record<string, unknown>>;
      if (p["storage"] !== undefined && rows.length === 0)
        throw new PveError(500, `storage '${p["storage"]}' does not exist`);
      const width = Math.max(...rows.map((r) => String(r["storage"]).length), 0) + 1;
      const line = (a: string, b: string, c: string, d: string, e: string, f: string, g: string): string =>
        `${pad(a, width, true)} ${pad(b, 10)} ${pad(c, 10)} ${pad(d, 15)} ${pad(e, 15)} ${pad(f, 15)} ${pad(g, 8)}\n`;
      io.out(line("Name", "Type", "Status", "Total (KiB)", "Used (KiB)", "Available (KiB)", "%"));
      for (const r of rows) {
        const active = r["active"] === 1;
        const status = r["enabled"] === 0 ? "disabled" : active ? "active" : "inactive";
        const kib = (k: string): string => String(Math.floor(Number(r[k]) / 1024));
        const total = Number(r["total"]);
        const percent = active && total > 0 ? `${((Number(r["used"]) / total) * 100).toFixed(2)}%` : "N/A";
        io.out(
          line(
            String(r["storage"]),
            String(r["type"]),
            status,
            kib("total"),
            kib("used"),
            kib("avail"),
            percent,
          ),
        );
      }
      return 0;
    },
  },
  alloc: {
    usage: "pvesm alloc <storage> <vmid> <filename> <size> [OPTIONS]",
    positional: ["storage", "vmid", "filename", "size"],
    options: { format: { type: "string" } },
    async run(dir, node, p, io) {
      const params: RawParams = { vmid: p["vmid"]!, filename: p["filename"]!, size: p["size"]! };
      if (p["format"] !== undefined) params["format"] = p["format"];
      const result = await rootCall(dir, {
        method: "POST",
        path: `/nodes/${node}/storage/${String(p["storage"])}/content`,
        params,
        localNode: node,
      });
      io.out(`successfully created '${String(result.data)}'\n`);
      return 0;
    },
  },
  free: {
    usage: "pvesm free <volume> [OPTIONS]",
    positional: ["volume"],
    options: { storage: { type: "string" }, delay: { type: "integer" } },
    async run(dir, node, p, io) {
      const volume = String(p["volume"]);
      const { storage } = p["storage"] !== undefined ? { storage: String(p["storage"]) } : splitVolid(volume);
      const result = await rootCall(dir, {
        method: "DELETE",
        path: `/nodes/${node}/storage/${storage}/content/${volume}`,
        params: {},
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
  },
  path: {
    usage: "pvesm path <volume>",
    positional: ["volume"],
    options: {},
    async run(dir, _node, p, io) {
      const path = await withModel(dir, (ctx) => {
        const { storage, volname } = splitVolid(String(p["volume"]));
        // Like the real one: the device path whether or not the device exists now (no activation).
        return volumePath(ctx.dir, getStorage(ctx.state, storage), volname);
      });
      io.out(`${path}\n`);
      return 0;
    },
  },
  list: {
    usage: "pvesm list <storage> [OPTIONS]",
    positional: ["storage"],
    options: { vmid: { type: "integer" }, content: { type: "string" } },
    async run(dir, node, p, io) {
      const params: RawParams = {};
      if (p["vmid"] !== undefined) params["vmid"] = p["vmid"];
      if (p["content"] !== undefined) params["content"] = p["content"];
      const storage = String(p["storage"]);
      await withModel(dir, (ctx) => getStorage(ctx.state, storage));
      const rows = (
        await rootCall(dir, {
          method: "GET",
          path: `/nodes/${node}/storage/${storage}/content`,
          params,
          localNode: node,
        })
      ).data as Array<Record<string, unknown>>;
      const width = Math.max("Volid".length, ...rows.map((r) => String(r["volid"]).length));
      const line = (a: string, b: string, c: string, d: string, e: string): string =>
        `${pad(a, width, true)} ${pad(b, 7, true)} ${pad(c, 10, true)} ${pad(d, 10)} ${e}\n`;
      io.out(line("Volid", "Format", "Type", "Size", "VMID"));
      for (const r of rows) {
        io.out(
          line(
            String(r["volid"]),
            String(r["format"]),
            String(r["content"]),
            String(r["size"]),
            String(r["vmid"] ?? ""),
          ),
        );
      }
      return 0;
    },
  },
};

function usageAll(): string {
  return `USAGE: pvesm <COMMAND> [ARGS] [OPTIONS]\n${Object.values(COMMANDS)
    .map((c) => `       ${c.usage}`)
    .join("\n")}`;
}

export async function pvesmMain(dir: string, argv: string[], io: Io): Promise<number> {
  const [name, ...args] = argv;
  if (!name || name === "help") {
    io.out(`${usageAll()}\n`);
    return name ? 0 : 255;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.err(`unknown command 'pvesm ${name}'\n${usageAll()}\n`);
    return 255;
  }
  try {
    const parsed = parseArgs(args, (key) => command.options[key]);
    const unknown = Object.keys(parsed.options).filter((k) => !command.options[k]);
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
    const params = bindPositional(command.positional, parsed);
    const node = await localNode(dir);
    return await command.run(dir, node, params, io);
  } catch (err) {
    return reportError(err, io, `USAGE: ${command.usage}`);
  }
}
