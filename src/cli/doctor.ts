/**
 * `agentlab sandbox|job|session doctor`: fetch a doctor bundle's files from the daemon and save them as
 * a deterministic tar.gz (upstream §6): entries sorted, mode 0644, owner 0:0, every time epoch 0, and a
 * gzip header named `agentlab-doctor` with mtime 0 and OS 255, so the same state gives the same bytes.
 */
import { chmodSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { crc32, deflateRawSync } from "node:zlib";
import type { Argv, CommandModule } from "yargs";
import type { DoctorBundle, DoctorKind } from "../protocol/doctor.js";
import { AgentlabError } from "../protocol/errors.js";
import { jobDoctor, sandboxDoctor, sessionDoctor } from "../protocol/wire.js";
import { type CommandContext, execute, type GlobalArgs } from "./context.js";

const BLOCK = 512;
/** Mode of the entries inside the archive (upstream §6: deterministic, 0644). */
const FILE_MODE = 0o644;
/**
 * Mode of the bundle file itself: 0600, not upstream's 0644. A bundle describes a host (VM configs,
 * events, addresses); even redacted, it is for its owner to hand on, not for every local user.
 */
export const BUNDLE_MODE = 0o600;
const NEW_DIR_MODE = 0o750;

export interface TarEntry {
  name: string;
  content: Buffer;
}

/** Split a long name at a `/` into ustar's prefix (≤155 bytes) and name (≤100 bytes) fields. */
function splitName(name: string): { prefix: string; name: string } {
  if (Buffer.byteLength(name) <= 100) return { prefix: "", name };
  for (let i = name.indexOf("/"); i !== -1; i = name.indexOf("/", i + 1)) {
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(rest) <= 100 && rest !== "") {
      return { prefix, name: rest };
    }
  }
  throw new AgentlabError("INTERNAL", `tar: the name is too long for a ustar header: ${name}`);
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

/** One ustar header block for a regular file. */
function header(entry: TarEntry): Buffer {
  const block = Buffer.alloc(BLOCK);
  const { prefix, name } = splitName(entry.name);
  block.write(name, 0, 100);
  block.write(octal(FILE_MODE, 8), 100);
  block.write(octal(0, 8), 108); // uid
  block.write(octal(0, 8), 116); // gid
  block.write(octal(entry.content.length, 12), 124);
  block.write(octal(0, 12), 136); // mtime: epoch 0, for identical bytes from identical state
  block.write("0", 156); // typeflag: regular file
  block.write("ustar\0", 257);
  block.write("00", 263);
  block.write(prefix, 345, 155);
  // The checksum is the byte sum with its own field read as spaces.
  block.fill(" ", 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return block;
}

/** A ustar archive of regular files in the given order, ended by two zero blocks. */
export function tarArchive(entries: readonly TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    parts.push(header(entry), entry.content);
    const pad = (BLOCK - (entry.content.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

/** RFC 1952 gzip with a fixed header: FNAME `name`, mtime 0, OS 255 (unknown). */
export function gzipDeterministic(data: Buffer, name: string): Buffer {
  const head = Buffer.from([0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 0xff]);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc32(data), 0);
  trailer.writeUInt32LE(data.length % 2 ** 32, 4);
  return Buffer.concat([
    head,
    Buffer.from(`${name}\0`, "latin1"),
    deflateRawSync(data, { level: 9 }),
    trailer,
  ]);
}

/** The id as it appears in file names: lower case, `_` as `-` (job_ab12 → job-ab12). */
export function doctorSlug(id: string): string {
  return id.toLowerCase().replaceAll("_", "-");
}

export function doctorBaseName(kind: DoctorKind, id: string): string {
  return `agentlab-doctor-${kind}-${doctorSlug(id)}`;
}

/** The bundle as tar.gz bytes, files under one top directory named like the archive. */
export function bundleArchive(bundle: DoctorBundle): Buffer {
  const top = doctorBaseName(bundle.kind, bundle.id);
  const entries = [...bundle.files]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((f) => ({ name: `${top}/${f.path}`, content: Buffer.from(f.content, "utf8") }));
  return gzipDeterministic(tarArchive(entries), "agentlab-doctor");
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Where --out puts the bundle: a file path as given; into an existing directory, or one named with a
 * trailing `/` (created 0750), under the default name; without --out, the default name in the CWD.
 */
export function resolveOut(out: string | undefined, fileName: string, cwd = process.cwd()): string {
  if (out === undefined || out === "") return resolve(cwd, fileName);
  const target = resolve(cwd, out);
  if (out.endsWith("/")) {
    if (!isDirectory(target)) {
      const created = mkdirSync(target, { recursive: true, mode: NEW_DIR_MODE });
      // mkdir's mode passes through the umask; the spec fixes 0750.
      if (created !== undefined) chmodSync(target, NEW_DIR_MODE);
    }
    return join(target, fileName);
  }
  if (isDirectory(target)) return join(target, fileName);
  if (!isDirectory(dirname(target))) {
    throw new AgentlabError("USAGE", `--out: directory ${dirname(target)} does not exist`, {
      hint: "create it first, or end --out with / to have it created",
    });
  }
  return target;
}

/** Write through a temporary name, so a failed write never leaves a truncated bundle behind. */
function saveFile(path: string, data: Buffer): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, data, { mode: BUNDLE_MODE });
    chmodSync(tmp, BUNDLE_MODE);
    renameSync(tmp, path);
  } catch (error) {
    rmSync(tmp, { force: true });
    throw new AgentlabError("USAGE", `--out: cannot write ${path}: ${(error as Error).message}`, {
      hint: "choose a path you can write, e.g. --out /tmp/",
    });
  }
}

const TARGETS: Record<DoctorKind, { arg: string; describe: string }> = {
  sandbox: { arg: "vmid", describe: "the sandbox's VMID" },
  job: { arg: "job_id", describe: "the job's id" },
  session: { arg: "session", describe: "session name or id" },
};

function fetchBundle(ctx: CommandContext, kind: DoctorKind, target: string): Promise<DoctorBundle> {
  switch (kind) {
    case "sandbox": {
      const vmid = Number(target);
      if (!/^\d+$/.test(target) || !Number.isSafeInteger(vmid)) {
        throw new AgentlabError("USAGE", `vmid must be a whole number, got "${target}"`, {
          hint: "list sandboxes with agentlab sandbox list --all",
        });
      }
      return ctx.call(sandboxDoctor, { vmid });
    }
    case "job":
      return ctx.call(jobDoctor, { id: target });
    case "session":
      return ctx.call(sessionDoctor, { session: target });
  }
}

type DoctorArgs = GlobalArgs & { out?: string } & Record<string, unknown>;

/** The `doctor` subcommand of the sandbox, job and session groups: one piece of code for all three. */
export function doctorCommand(kind: DoctorKind): CommandModule<GlobalArgs, DoctorArgs> {
  const { arg, describe } = TARGETS[kind];
  return {
    command: `doctor <${arg}>`,
    describe: `Save a debug bundle of the ${kind} (records, events, Proxmox status/config; secrets redacted) as tar.gz`,
    builder: (yargs) =>
      yargs
        .positional(arg, { type: "string", demandOption: true, describe })
        .option("out", {
          type: "string",
          describe: `file to write, or a directory (existing, or ending in / to create it); default: agentlab-doctor-${kind}-<id>.tar.gz in the current directory`,
        })
        .example(
          `agentlab ${kind} doctor <${arg}> --out /tmp/`,
          "write the bundle into /tmp",
        ) as Argv<DoctorArgs>,
    handler: (argv) =>
      execute(argv, async (ctx) => {
        const bundle = await fetchBundle(ctx, kind, String(argv[arg]));
        const archive = bundleArchive(bundle);
        const out = resolveOut(argv.out, `${doctorBaseName(bundle.kind, bundle.id)}.tar.gz`);
        saveFile(out, archive);
        return {
          data: { kind: bundle.kind, id: bundle.id, out },
          text: `doctor bundle saved to ${out}\n`,
        };
      }),
  };
}
