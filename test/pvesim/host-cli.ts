/**
 * The host tools a daemon runs on a PVE node next to qm/pvesh, over the simulator's state:
 * `zfs list|get|clone|destroy`, `lvs`, `lvchange -ay [-K] | -an`. Output formats, stderr texts and exit
 * codes follow the real tools (zfs exits 1 on failures and 2 on usage errors, LVM 5 and 3).
 * Subcommands and options the simulator does not model say so instead of pretending to work.
 */
import { type Io, localNode } from "./cli-common.js";
import type { Ctx } from "./context.js";
import { pad } from "./format.js";
import {
  findLv,
  HostToolError,
  hostReboot,
  type LogicalVolume,
  logicalVolumes,
  lvChange,
  type ZfsDataset,
  type ZfsProperty,
  type ZfsType,
  zfsClone,
  zfsDatasets,
  zfsDestroy,
  zfsProperty,
  zfsValue,
} from "./host.js";
import { withModel } from "./runner.js";

class UsageError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** getopt-style parsing: `-Hp` bundles flags, `-o x` / `-ox` take values, `--` ends options. */
function getopt(
  argv: string[],
  valued: Set<string>,
  flags: Set<string>,
): { opts: Map<string, string[]>; args: string[]; bad?: string } {
  const opts = new Map<string, string[]>();
  const args: string[] = [];
  const add = (k: string, v: string): void => {
    opts.set(k, [...(opts.get(k) ?? []), v]);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      args.push(arg);
      continue;
    }
    for (let j = 1; j < arg.length; j++) {
      const c = arg[j]!;
      if (valued.has(c)) {
        const rest = arg.slice(j + 1);
        const value = rest !== "" ? rest : argv[++i];
        if (value === undefined) return { opts, args, bad: `missing argument for '-${c}' option` };
        add(c, value);
        break;
      }
      if (!flags.has(c)) return { opts, args, bad: `invalid option '${c}'` };
      add(c, "1");
    }
  }
  return { opts, args };
}

// ---- zfs ----

const ZFS_USAGE = `usage: zfs command args ...
where 'command' is one of the following (the ones the simulator models):

\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]... [-S property]...
\t    [-t type[,...]] [filesystem|volume|snapshot] ...
\tget [-Hp] [-r|-d max] [-o "all" | field[,...]] [-t type[,...]] <"all" | property[,...]>
\t    [filesystem|volume|snapshot] ...
\tclone <snapshot> <filesystem|volume>
\tdestroy [-r] <filesystem|volume>
\tdestroy <snapshot>
`;

const NOT_MODELLED = new Set([
  "create",
  "snapshot",
  "rollback",
  "rename",
  "promote",
  "set",
  "inherit",
  "send",
  "receive",
  "recv",
  "mount",
  "unmount",
  "hold",
  "release",
  "diff",
  "bookmark",
  "upgrade",
  "userspace",
  "groupspace",
  "allow",
  "unallow",
  "share",
  "unshare",
]);

const HEADERS: Record<ZfsProperty, string> = {
  name: "NAME",
  type: "TYPE",
  origin: "ORIGIN",
  clones: "CLONES",
  volsize: "VOLSIZE",
  used: "USED",
  referenced: "REFER",
  available: "AVAIL",
  creation: "CREATION",
  mountpoint: "MOUNTPOINT",
  refquota: "REFQUOTA",
};
const NUMERIC = new Set<ZfsProperty>(["volsize", "used", "referenced", "available", "refquota"]);

/** zfs_nicenum: 1024-based, three significant digits, `8G`, `1.50G`, `12.3M`, `0B`. */
function nicenum(n: number): string {
  const units = ["B", "K", "M", "G", "T", "P"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0 || Number.isInteger(v)) return `${v}${units[i]}`;
  const digits = v < 10 ? 2 : v < 100 ? 1 : 0;
  return `${v.toFixed(digits)}${units[i]}`;
}

function creationText(epoch: number): string {
  const d = new Date(epoch * 1000);
  const day = d.toLocaleString("en-US", { weekday: "short" });
  const month = d.toLocaleString("en-US", { month: "short" });
  return `${day} ${month} ${String(d.getDate()).padStart(2)} ${String(d.getHours()).padStart(2)}:${String(d.getMinutes()).padStart(2, "0")} ${d.getFullYear()}`;
}

function render(prop: ZfsProperty, value: number | string | undefined, parsable: boolean): string {
  if (value === undefined || value === "") return "-";
  if (typeof value === "string") return value;
  if (prop === "creation") return parsable ? String(value) : creationText(value);
  return parsable ? String(value) : nicenum(value);
}

function parseProps(list: string): ZfsProperty[] {
  return list.split(",").map((p) => {
    const prop = zfsProperty(p);
    if (!prop) throw new UsageError(`bad property list: invalid property '${p}'`, 2);
    return prop;
  });
}

function parseTypes(list: string | undefined): Set<ZfsType> {
  if (list === undefined) return new Set(["filesystem", "volume"]);
  const out = new Set<ZfsType>();
  for (const t of list.split(",")) {
    if (t === "all") for (const x of ["filesystem", "volume", "snapshot"] as const) out.add(x);
    else if (t === "filesystem" || t === "fs") out.add("filesystem");
    else if (t === "volume" || t === "vol") out.add("volume");
    else if (t === "snapshot" || t === "snap") out.add("snapshot");
    else throw new UsageError(`invalid type '${t}'`, 2);
  }
  return out;
}

/** The datasets a list/get names: all, or each argument with its descendants down to `depth`. */
function selectDatasets(
  ctx: Ctx,
  node: string,
  args: string[],
  types: Set<ZfsType>,
  depth: number | undefined,
): ZfsDataset[] {
  const all = zfsDatasets(ctx, node);
  if (args.length === 0) return all.filter((d) => types.has(d.type));
  const out: ZfsDataset[] = [];
  for (const arg of args) {
    const root = all.find((d) => d.name === arg);
    if (!root) throw new HostToolError([`cannot open '${arg}': dataset does not exist`], 1);
    for (const d of all) {
      if (d === root) {
        // A dataset named outright is listed whatever -t says, unless only snapshots are wanted.
        if (types.has(d.type) || (depth === undefined && !(types.size === 1 && types.has("snapshot"))))
          out.push(d);
        continue;
      }
      if (!types.has(d.type) || !d.name.startsWith(arg)) continue;
      const rel = d.name.slice(arg.length);
      if (!(rel.startsWith("/") || rel.startsWith("@"))) continue;
      const level = rel.split("/").length - 1 + (rel.includes("@") ? 1 : 0);
      // `-t snapshot` on a named dataset lists its own snapshots even without -r.
      const limit =
        depth ?? (types.has("snapshot") && d.type === "snapshot" && !rel.slice(1).includes("/") ? 1 : 0);
      if (level <= limit) out.push(d);
    }
  }
  return out;
}

function table(rows: string[][], headers: string[] | undefined, right: boolean[], tabs: boolean): string {
  if (tabs) return rows.map((r) => `${r.join("\t")}\n`).join("");
  const all = headers ? [headers, ...rows] : rows;
  const widths = all[0]?.map((_, i) => Math.max(...all.map((r) => r[i]!.length))) ?? [];
  return all
    .map(
      (r) =>
        `${r
          .map((cell, i) => (i === r.length - 1 && !right[i] ? cell : pad(cell, widths[i]!, !right[i])))
          .join("  ")}\n`,
    )
    .join("");
}

async function zfsList(dir: string, argv: string[], io: Io): Promise<number> {
  const { opts, args, bad } = getopt(argv, new Set(["o", "t", "d", "s", "S"]), new Set(["H", "p", "r"]));
  if (bad) throw new UsageError(bad, 2);
  const props = parseProps(opts.get("o")?.join(",") ?? "name,used,available,referenced,mountpoint");
  const types = parseTypes(opts.get("t")?.join(","));
  const depthArg = opts.get("d")?.at(-1);
  const depth =
    depthArg !== undefined ? Number(depthArg) : opts.has("r") ? Number.POSITIVE_INFINITY : undefined;
  if (depth !== undefined && !(depth >= 0)) throw new UsageError(`invalid depth '${depthArg}'`, 2);
  const sortKeys = [
    ...(opts.get("s") ?? []).map((p) => ({ p, desc: false })),
    ...(opts.get("S") ?? []).map((p) => ({ p, desc: true })),
  ].map(({ p, desc }) => {
    const prop = zfsProperty(p);
    if (!prop) throw new UsageError(`invalid property '${p}'`, 2);
    return { prop, desc };
  });
  const parsable = opts.has("p");
  const node = await localNode(dir);
  const rows = await withModel(dir, (ctx) => {
    const datasets = selectDatasets(ctx, node, args, types, depth);
    const values = datasets.map((d) => props.map((p) => zfsValue(ctx, node, d, p)));
    if (sortKeys.length > 0) {
      const order = datasets.map((d, i) => ({
        i,
        keys: sortKeys.map(({ prop }) => zfsValue(ctx, node, d, prop)),
      }));
      order.sort((a, b) => {
        for (const [k, { desc }] of sortKeys.entries()) {
          const x = a.keys[k] ?? "";
          const y = b.keys[k] ?? "";
          if (x !== y) return (x < y ? -1 : 1) * (desc ? -1 : 1);
        }
        return a.i - b.i;
      });
      return order.map(({ i }) => props.map((p, j) => render(p, values[i]![j], parsable)));
    }
    return values.map((v) => props.map((p, j) => render(p, v[j], parsable)));
  });
  if (rows.length === 0 && args.length === 0 && !opts.has("H")) {
    io.out("no datasets available\n");
    return 0;
  }
  io.out(
    table(
      rows,
      opts.has("H") ? undefined : props.map((p) => HEADERS[p]),
      props.map((p) => NUMERIC.has(p) && !opts.has("H")),
      opts.has("H"),
    ),
  );
  return 0;
}

async function zfsGet(dir: string, argv: string[], io: Io): Promise<number> {
  const { opts, args, bad } = getopt(argv, new Set(["o", "t", "d", "s"]), new Set(["H", "p", "r"]));
  if (bad) throw new UsageError(bad, 2);
  const [propList, ...datasets] = args;
  if (!propList) throw new UsageError("missing property argument", 2);
  const props = parseProps(propList);
  const fields = (opts.get("o")?.join(",") ?? "name,property,value,source").split(",");
  for (const f of fields) {
    if (!["name", "property", "value", "source"].includes(f))
      throw new UsageError(`invalid column name '${f}'`, 2);
  }
  const types = parseTypes(opts.get("t")?.join(",") ?? "all");
  const depthArg = opts.get("d")?.at(-1);
  const depth =
    depthArg !== undefined ? Number(depthArg) : opts.has("r") ? Number.POSITIVE_INFINITY : undefined;
  const parsable = opts.has("p");
  const node = await localNode(dir);
  const rows = await withModel(dir, (ctx) => {
    const out: string[][] = [];
    for (const d of selectDatasets(ctx, node, datasets, types, depth)) {
      for (const prop of props) {
        const value = render(prop, zfsValue(ctx, node, d, prop), parsable);
        const source = prop === "volsize" && d.type === "volume" ? "local" : "-";
        const cells: Record<string, string> = { name: d.name, property: prop, value, source };
        out.push(fields.map((f) => cells[f]!));
      }
    }
    return out;
  });
  const headers = fields.map((f) => f.toUpperCase());
  io.out(
    table(
      rows,
      opts.has("H") ? undefined : headers,
      fields.map(() => false),
      opts.has("H"),
    ),
  );
  return 0;
}

async function zfsCloneCmd(dir: string, argv: string[]): Promise<number> {
  const { args, bad } = getopt(argv, new Set(), new Set());
  if (bad) {
    // -o property=value and -p exist in real zfs; the simulator has no dataset properties to set.
    throw new UsageError(`pvesim: zfs clone takes no options in the simulator (${bad})`, 2);
  }
  if (args.length !== 2)
    throw new UsageError(args.length < 2 ? "missing source dataset argument" : "too many arguments", 2);
  const node = await localNode(dir);
  await withModel(dir, (ctx) => zfsClone(ctx, node, args[0]!, args[1]!));
  return 0;
}

async function zfsDestroyCmd(dir: string, argv: string[]): Promise<number> {
  const { opts, args, bad } = getopt(argv, new Set(), new Set(["r", "R", "f", "n", "v", "p", "d"]));
  if (bad) throw new UsageError(bad, 2);
  for (const flag of ["R", "f", "n", "v", "p", "d"]) {
    if (opts.has(flag)) throw new UsageError(`pvesim: zfs destroy -${flag} is not modelled (only -r)`, 2);
  }
  if (args.length !== 1)
    throw new UsageError(args.length === 0 ? "missing dataset argument" : "too many arguments", 2);
  const node = await localNode(dir);
  await withModel(dir, (ctx) => zfsDestroy(ctx, node, args[0]!, opts.has("r")));
  return 0;
}

export async function zfsMain(dir: string, argv: string[], io: Io): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "list":
        return await zfsList(dir, rest, io);
      case "get":
        return await zfsGet(dir, rest, io);
      case "clone":
        return await zfsCloneCmd(dir, rest);
      case "destroy":
        return await zfsDestroyCmd(dir, rest);
      case undefined:
      case "help":
        io.err(ZFS_USAGE);
        return 2;
      default:
        if (NOT_MODELLED.has(command)) {
          io.err(
            `pvesim: 'zfs ${command}' is not modelled; Proxmox's own operations (qm snapshot, rollback, ...) are\n`,
          );
          return 2;
        }
        io.err(`unrecognized command '${command}'\n${ZFS_USAGE}`);
        return 2;
    }
  } catch (err) {
    return hostError(err, io, ZFS_USAGE);
  }
}

function hostError(err: unknown, io: Io, usage: string): number {
  if (err instanceof HostToolError) {
    io.err(`${err.lines.join("\n")}\n`);
    return err.exitCode;
  }
  if (err instanceof UsageError) {
    io.err(`${err.message}\n${usage}`);
    return err.exitCode;
  }
  io.err(`${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

// ---- LVM ----

const LVS_FIELDS = [
  "lv_name",
  "vg_name",
  "lv_attr",
  "lv_size",
  "pool_lv",
  "origin",
  "lv_active",
  "lv_path",
] as const;
type LvsField = (typeof LVS_FIELDS)[number];
const LVS_HEADINGS: Record<LvsField, string> = {
  lv_name: "LV",
  vg_name: "VG",
  lv_attr: "Attr",
  lv_size: "LSize",
  pool_lv: "Pool",
  origin: "Origin",
  lv_active: "Active",
  lv_path: "Path",
};
const LVS_ALIASES: Record<string, LvsField> = {
  name: "lv_name",
  lvname: "lv_name",
  vg: "vg_name",
  attr: "lv_attr",
  size: "lv_size",
  lvsize: "lv_size",
  pool: "pool_lv",
  active: "lv_active",
  path: "lv_path",
};

const LVS_USAGE = `  lvs [--noheadings] [--nosuffix] [--units b|k|m|g|t|B|K|M|G|T] [--separator String]
      [-o|--options Field[,Field]] [VG|LV ...]
  (fields modelled: ${LVS_FIELDS.join(", ")})
`;

/** LVM's size display: `8.00g` by default (1024-based), `--units b` gives bytes. */
function lvSize(bytes: number, units: string | undefined, suffix: boolean): string {
  const u = units ?? "h";
  if (u === "b" || u === "B") return `${bytes}${suffix ? "B" : ""}`;
  const si = u === u.toUpperCase() && u !== "h";
  const base = si ? 1000 : 1024;
  const names = ["", "k", "m", "g", "t", "p"];
  let i = names.indexOf(u.toLowerCase());
  if (u === "h") {
    i = 0;
    while (bytes / base ** (i + 1) >= 1 && i < names.length - 1) i++;
    if (i === 0) i = 1;
  }
  if (i < 0) throw new UsageError(`  Invalid units specification: ${u}`, 3);
  const text = (bytes / base ** i).toFixed(2);
  return suffix ? `${text}${si ? names[i]!.toUpperCase() : names[i]}` : text;
}

function lvAttr(lv: LogicalVolume): string {
  if (lv.kind === "pool") return "twi-aotz--";
  const type = lv.kind === "thin" ? "V" : "-";
  const perm = lv.readonly ? "r" : "w";
  const state = lv.active ? "a" : "-";
  const open = lv.active && lv.open ? "o" : "-";
  const target = lv.kind === "thin" ? "tz" : "--";
  return `${type}${perm}i-${state}${open}${target}-${lv.skip ? "k" : "-"}`;
}

function lvField(
  lv: LogicalVolume,
  f: LvsField,
  units: string | undefined,
  suffix: boolean,
  dir: string,
): string {
  switch (f) {
    case "lv_name":
      return lv.name;
    case "vg_name":
      return lv.vg;
    case "lv_attr":
      return lvAttr(lv);
    case "lv_size":
      return lvSize(lv.size, units, suffix);
    case "pool_lv":
      return lv.pool ?? "";
    case "origin":
      return lv.origin ?? "";
    case "lv_active":
      return lv.active ? "active" : "";
    case "lv_path":
      return `${dir}/dev/${lv.vg}/${lv.name}`;
  }
}

const LVS_VALUED = new Set(["options", "units", "separator"]);
const LVS_FLAGS = new Set(["noheadings", "nosuffix", "all"]);

/** `--key value`, `--key=value`, `-o value`; LVM-style long options. */
function lvmArgs(
  argv: string[],
  valued: Set<string>,
  flags: Set<string>,
  short: Record<string, string>,
): { opts: Map<string, string>; args: string[] } {
  const opts = new Map<string, string>();
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    let key: string | undefined;
    let value: string | undefined;
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      key = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
      if (eq > 0) value = arg.slice(eq + 1);
    } else if (arg.startsWith("-") && arg.length > 1) {
      const mapped = short[arg.slice(1, 2)];
      if (!mapped) throw new UsageError(`  Invalid option: ${arg}`, 3);
      key = mapped;
      if (arg.length > 2) value = arg.slice(2);
    } else {
      args.push(arg);
      continue;
    }
    if (flags.has(key)) {
      opts.set(key, "1");
      continue;
    }
    if (!valued.has(key)) throw new UsageError(`pvesim: option --${key} is not modelled`, 3);
    if (value === undefined) value = argv[++i];
    if (value === undefined) throw new UsageError(`  Option --${key} requires an argument.`, 3);
    opts.set(key, value);
  }
  return { opts, args };
}

export async function lvsMain(dir: string, argv: string[], io: Io): Promise<number> {
  try {
    const { opts, args } = lvmArgs(argv, LVS_VALUED, LVS_FLAGS, { o: "options", a: "all" });
    const fields = (opts.get("options") ?? "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin")
      .split(",")
      .map((f) => {
        const name = (LVS_FIELDS as readonly string[]).includes(f) ? (f as LvsField) : LVS_ALIASES[f];
        if (!name) throw new UsageError(`  Unrecognised field: ${f}`, 3);
        return name;
      });
    const units = opts.get("units");
    const suffix = !opts.has("nosuffix");
    const node = await localNode(dir);
    const lvs = await withModel(dir, (ctx) => {
      if (args.length === 0) return logicalVolumes(ctx, node);
      const out: LogicalVolume[] = [];
      for (const arg of args) {
        const spec = arg.replace(/^\/dev\//, "");
        if (spec.includes("/")) out.push(findLv(ctx, node, spec));
        else {
          const inVg = logicalVolumes(ctx, node).filter((lv) => lv.vg === spec);
          if (inVg.length === 0) {
            throw new HostToolError(
              [`  Volume group "${spec}" not found`, `  Cannot process volume group ${spec}`],
              5,
            );
          }
          out.push(...inVg);
        }
      }
      return out;
    });
    const rows = lvs.map((lv) => fields.map((f) => lvField(lv, f, units, suffix, dir)));
    const separator = opts.get("separator");
    const headings = fields.map((f) => LVS_HEADINGS[f]);
    const all = opts.has("noheadings") ? rows : [headings, ...rows];
    if (separator !== undefined) {
      for (const r of all) io.out(`  ${r.join(separator)}\n`);
      return 0;
    }
    const widths = fields.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
    const right = fields.map((f) => f === "lv_size");
    for (const r of all) io.out(`  ${r.map((c, i) => pad(c, widths[i]!, !right[i])).join(" ")}\n`);
    return 0;
  } catch (err) {
    return hostError(err, io, LVS_USAGE);
  }
}

const LVCHANGE_USAGE = `  lvchange -a|--activate y|n [-K|--ignoreactivationskip] VG/LV ...
`;

export async function lvchangeMain(dir: string, argv: string[], io: Io): Promise<number> {
  try {
    // `-ay`, `-a y`, `--activate y`, `-K`: split bundles like `-ayK` the way LVM reads them.
    const expanded: string[] = [];
    for (const arg of argv) {
      const m = /^-a([yn])(K?)$/.exec(arg);
      if (m) expanded.push("-a", m[1]!, ...(m[2] ? ["-K"] : []));
      else expanded.push(arg);
    }
    const { opts, args } = lvmArgs(expanded, new Set(["activate"]), new Set(["ignoreactivationskip"]), {
      a: "activate",
      K: "ignoreactivationskip",
    });
    const mode = opts.get("activate");
    if (mode === undefined) {
      throw new UsageError("pvesim: only activation changes (-ay / -an) are modelled", 3);
    }
    if (!["y", "n", "ey", "ly"].includes(mode))
      throw new UsageError(`  Invalid argument for --activate: ${mode}`, 3);
    if (args.length === 0) throw new UsageError("  No command with matching syntax recognised.", 3);
    const node = await localNode(dir);
    await withModel(dir, (ctx) => {
      for (const spec of args) lvChange(ctx, node, spec, mode !== "n", opts.has("ignoreactivationskip"));
    });
    return 0;
  } catch (err) {
    return hostError(err, io, LVCHANGE_USAGE);
  }
}

/** For `pvesim control --host-reboot [NODE]`: reboots one node, or every node when none is named. */
export async function rebootNodes(dir: string, node?: string): Promise<void> {
  await withModel(dir, (ctx) => {
    const nodes = node ? [node] : ctx.state.nodes.map((n) => n.name);
    for (const n of nodes) {
      if (!ctx.state.nodes.some((x) => x.name === n)) throw new Error(`no node '${n}' in this cluster`);
    }
    hostReboot(ctx, nodes);
  });
}
