/**
 * Sandbox profiles: the YAML schema (spec §8.1) and the loader for profiles_dir.
 *
 * Upstream validated profiles lazily, at provisioning, and lost documents of multi-document files. Here
 * every document of every *.yaml / *.yml file is checked once at daemon start, all problems are reported
 * together, and the daemon refuses to start on any of them: a bad profile is an operator's typo, and it
 * is cheaper to learn that at `systemctl restart` than at the first `sandbox new`.
 */
import fs from "node:fs";
import path from "node:path";
import { z } from "zod";
import { AgentlabError } from "../protocol/errors.js";
import {
  bool,
  duration,
  integer,
  matching,
  name,
  nonNegativeInt,
  nonNegativeNumber,
  oneOf,
  positiveInt,
  positiveNumber,
  stringList,
  text,
} from "./fields.js";
import {
  checkDocument,
  describeValue,
  FINAL_MESSAGE,
  formatPath,
  isMapping,
  withoutBlanks,
} from "./validate.js";
import { readYamlDocuments } from "./yaml.js";

export const NETWORK_MODES = ["off", "nat", "allowlist"] as const;
/** How warm pool members wait for their claim (docs/warm-pool.md): running, or paused in RAM. */
export const WARM_POOL_STATES = ["running", "paused"] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/** The host firewall group each network mode stands for. */
export const MODE_FIREWALL_GROUPS: Readonly<Record<NetworkMode, string>> = {
  off: "agent_nat_off",
  nat: "agent_nat_default",
  allowlist: "agent_nat_allowlist",
};

/** NIC models Proxmox accepts in netN; anything else would only fail later, at `qm set`. */
const NIC_MODELS = [
  "virtio",
  "e1000",
  "e1000e",
  "e1000-82540em",
  "e1000-82544gc",
  "e1000-82545em",
  "i82551",
  "i82557b",
  "i82559er",
  "ne2k_isa",
  "ne2k_pci",
  "pcnet",
  "rtl8139",
  "vmxnet3",
] as const;

const SCSI_CONTROLLERS = [
  "virtio-scsi-pci",
  "virtio-scsi-single",
  "lsi",
  "lsi53c810",
  "megasas",
  "pvscsi",
] as const;

const INNER_SANDBOX_ON = new Set(["bubblewrap", "bwrap", "true", "yes", "1"]);
const INNER_SANDBOX_OFF = new Set(["off", "none", "false", "0", "disabled"]);
const INNER_SANDBOX_EXPECTED =
  'expected "bubblewrap" (or bwrap, true, yes, 1) or "off" (or none, false, 0, disabled)';

/** Upstream's names for an inner sandbox, folded into the two states the runner knows. */
function innerSandbox() {
  return z
    .union([z.string(), z.boolean(), z.number()], { error: INNER_SANDBOX_EXPECTED })
    .transform((value, ctx): "bubblewrap" | "off" => {
      const word = String(value).trim().toLowerCase();
      if (INNER_SANDBOX_ON.has(word)) return "bubblewrap";
      if (INNER_SANDBOX_OFF.has(word)) return "off";
      ctx.addIssue({ code: "custom", message: INNER_SANDBOX_EXPECTED, input: value });
      return z.NEVER;
    });
}

/** The error of a section given as something other than a mapping, e.g. `network: vmbr1`. */
function section(keys: string) {
  return { error: `expected a mapping of its keys (${keys})` };
}

const NetworkSchema = z
  .strictObject(
    {
      bridge: name(/^[A-Za-z][A-Za-z0-9_.-]{0,14}$/, "expected a bridge name such as vmbr1").optional(),
      model: oneOf(NIC_MODELS).default("virtio"),
      mode: oneOf(NETWORK_MODES).optional(),
      firewall: bool().optional(),
      firewall_group: name(
        /^[A-Za-z0-9._-]+$/,
        "expected a firewall group name from A-Z a-z 0-9 . _ -",
      ).optional(),
    },
    section("bridge, model, mode, firewall, firewall_group"),
  )
  .superRefine((network, ctx) => {
    if (network.firewall === false && (network.mode !== undefined || network.firewall_group !== undefined)) {
      const by = network.mode !== undefined ? "network.mode" : "network.firewall_group";
      ctx.addIssue({
        code: "custom",
        path: ["firewall"],
        message: `network.firewall: is false, but ${by} needs the firewall on; remove network.firewall or set it to true`,
        params: FINAL_MESSAGE,
      });
    }
    if (network.mode !== undefined && network.firewall_group !== undefined) {
      const expected = MODE_FIREWALL_GROUPS[network.mode];
      if (network.firewall_group !== expected) {
        ctx.addIssue({
          code: "custom",
          path: ["firewall_group"],
          message: `network.firewall_group: expected "${expected}" to match network.mode "${network.mode}", got ${describeValue(network.firewall_group)} (or set only one of the two)`,
          params: FINAL_MESSAGE,
        });
      }
    }
  })
  .transform((network) => ({ ...network, mode: effectiveMode(network.mode, network.firewall_group) }));

/** The mode a profile runs in: as written, else implied by a standard firewall group, else upstream's "nat". */
function effectiveMode(mode: NetworkMode | undefined, group: string | undefined): NetworkMode {
  if (mode !== undefined) return mode;
  const implied = NETWORK_MODES.find((candidate) => MODE_FIREWALL_GROUPS[candidate] === group);
  return implied ?? "nat";
}

const ResourcesSchema = z.strictObject(
  {
    cores: positiveInt().optional(),
    memory_mb: positiveInt().optional(),
    cpulist: z
      .preprocess(
        (value) => (typeof value === "number" ? String(value) : value),
        matching((value) => /^\d+(-\d+)?(,\d+(-\d+)?)*$/.test(value), "expected a CPU list such as 0-3,8"),
      )
      .optional(),
    cpu_over_commit: positiveNumber().optional(),
    allow_burst: bool().optional(),
    mem_over_commit: positiveNumber().optional(),
    /** Ignored by the daemon (spec §8.1); accepted so shipped upstream profiles load cleanly. */
    balloon: z.unknown().optional(),
  },
  section("cores, memory_mb, cpulist, ..."),
);

const StorageSchema = z.strictObject(
  {
    root_size_gb: positiveInt().optional(),
    scsihw: oneOf(SCSI_CONTROLLERS).optional(),
    /** Ignored by the daemon (spec §8.1). */
    workspace: z.unknown().optional(),
  },
  section("root_size_gb, scsihw"),
);

const BehaviorSchema = z.strictObject(
  {
    keepalive_default: bool().default(false),
    /** Minutes; a value <= 0 means "no TTL", as upstream. */
    ttl_minutes_default: integer().optional(),
    /** Minutes; 0 disables idle stop, a negative value defers to the daemon's idle_stop_minutes_default. */
    idle_stop_minutes_default: integer().optional(),
    inner_sandbox: innerSandbox().default("off"),
    inner_sandbox_args: stringList().default([]),
    /** Ignored by the daemon (spec §8.1): jobs carry their own mode. */
    mode: text().optional(),
  },
  section("keepalive_default, ttl_minutes_default, inner_sandbox, ..."),
);

const retention = () => nonNegativeNumber("expected a number >= 0 (0 keeps artifacts forever)").optional();
const ArtifactsSchema = z.strictObject(
  {
    ttl_minutes: retention(),
    retention_minutes: retention(),
    retention_hours: retention(),
    retention_days: retention(),
    /** Ignored by the daemon (spec §8.1). */
    upload: z.unknown().optional(),
    /** Ignored by the daemon (spec §8.1). */
    endpoint: z.unknown().optional(),
  },
  section("ttl_minutes, retention_minutes, retention_hours, retention_days"),
);

const PROFILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const ProfileSchema = z.strictObject({
  name: name(
    PROFILE_NAME,
    "expected a profile name: up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
  ),
  type: z.literal("vm", { error: 'only "vm" is supported' }).default("vm"),
  template_vmid: positiveInt("expected the template's VMID, a positive integer"),
  // prefault, not default: an absent section is parsed as {} so its own defaults (model, mode) apply.
  network: NetworkSchema.prefault({}),
  resources: ResourcesSchema.prefault({}),
  storage: StorageSchema.prefault({}),
  behavior: BehaviorSchema.prefault({}),
  artifacts: ArtifactsSchema.prefault({}),
  /** Sandboxes of this profile the daemon keeps provisioned ahead, for `sandbox new` to claim (docs/warm-pool.md). */
  warm_pool: nonNegativeInt("expected how many sandboxes to keep ready: an integer >= 0").default(0),
  /** Members wait running, or paused in RAM (no guest CPU used; a claim resumes them). */
  warm_pool_state: oneOf(WARM_POOL_STATES).default("running"),
  /**
   * How long a RUNNING sandbox of this profile may sit idle before the daemon stops it (docs/runbook.md
   * "Idle stop"); 0 disables it. Another spelling of behavior.idle_stop_minutes_default (upstream's key):
   * a profile gives one of the two.
   */
  idle_stop: duration().optional(),
  /** Idle stop applies to keepalive sandboxes of this profile too (by default they are never idle-stopped). */
  idle_stop_keepalive: bool().default(false),
  /** Ignored by the daemon (spec §8.1). */
  secrets_bundle: text().optional(),
  /** Ignored by the daemon (spec §8.1). */
  repo: z.strictObject({ clone_path: text().optional() }, section("clone_path")).optional(),
});

export type ProfileSpec = z.output<typeof ProfileSchema>;

/**
 * The profile's own idle window in ms, or undefined when it defers to the daemon's
 * idle_stop_minutes_default: `idle_stop`, else `behavior.idle_stop_minutes_default` (minutes; negative
 * defers, as upstream). 0 means idle stop is off for the profile.
 */
export function profileIdleStopMs(profile: ProfileSpec): number | undefined {
  if (profile.idle_stop !== undefined) return profile.idle_stop;
  const minutes = profile.behavior.idle_stop_minutes_default;
  return minutes === undefined || minutes < 0 ? undefined : minutes * 60_000;
}

export interface ProfileSource {
  file: string;
  /** 1-based position of the document in its file. */
  document: number;
}

export interface Profile extends ProfileSpec {
  source: ProfileSource;
  /** The document exactly as parsed, for features that read keys this schema does not model. */
  raw: Record<string, unknown>;
}

/** Minutes after which a profile's job artifacts may be collected; undefined keeps them. First key present wins. */
export function artifactRetentionMinutes(profile: ProfileSpec): number | undefined {
  const { ttl_minutes, retention_minutes, retention_hours, retention_days } = profile.artifacts;
  const minutes =
    ttl_minutes ??
    retention_minutes ??
    (retention_hours === undefined ? undefined : retention_hours * 60) ??
    (retention_days === undefined ? undefined : retention_days * 1440);
  return minutes === undefined || minutes <= 0 ? undefined : minutes;
}

interface ProfileProblem {
  file: string;
  document?: number;
  profile?: string;
  key: string;
  /** The whole line shown to the operator, location included. */
  line: string;
}

/** Load every profile in `dir`. Throws PROFILE_INVALID listing every problem in every file. */
export function loadProfiles(dir: string): { profiles: Profile[]; warnings: string[] } {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? "not found" : code === "ENOTDIR" ? "is not a directory" : (error as Error).message;
    throw new AgentlabError("PROFILE_INVALID", `profiles directory ${dir} ${reason}`, {
      details: { file: dir },
      hint: "create it and put profile YAML files in it, or set profiles_dir in config.yaml",
      cause: error,
    });
  }
  const names = entries
    .filter((entry) => /\.ya?ml$/.test(entry.name) && !entry.isDirectory())
    .map((entry) => entry.name)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

  const files: { file: string; text: string }[] = [];
  const unreadable: ProfileProblem[] = [];
  for (const entry of names) {
    const file = path.join(dir, entry);
    try {
      files.push({ file, text: fs.readFileSync(file, "utf8") });
    } catch (error) {
      unreadable.push({ file, key: "", line: `${file}: cannot read: ${(error as Error).message}` });
    }
  }
  const result = parseFiles(files, unreadable);
  if (result.profiles.length === 0) {
    result.warnings.push(
      `${dir}: no profiles found in *.yaml or *.yml files; sandbox creation needs at least one`,
    );
  }
  return result;
}

/** Parse profile files already read into memory, in the order given (loadProfiles without the disk). */
export function parseProfileFiles(files: readonly { file: string; text: string }[]): {
  profiles: Profile[];
  warnings: string[];
} {
  return parseFiles(files, []);
}

/** `earlier` carries problems found while reading, so they are reported together with the rest. */
function parseFiles(
  files: readonly { file: string; text: string }[],
  earlier: readonly ProfileProblem[],
): { profiles: Profile[]; warnings: string[] } {
  const problems: ProfileProblem[] = [...earlier];
  const warnings: string[] = [];
  const profiles: Profile[] = [];
  const byName = new Map<string, ProfileSource>();

  for (const { file, text: content } of files) {
    const parsed = readYamlDocuments(content, file);
    if (!parsed.ok) {
      problems.push({ file, key: "", line: parsed.message });
      continue;
    }
    if (parsed.documents.length === 0) warnings.push(`${file}: no YAML documents, skipped`);
    parsed.documents.forEach((raw, index) => {
      const source: ProfileSource = { file, document: index + 1 };
      const profile = parseProfileDocument(raw, source, problems, warnings);
      if (profile === undefined) return;
      const first = byName.get(profile.name);
      if (first !== undefined) {
        problems.push({
          ...source,
          profile: profile.name,
          key: "name",
          line: `${where(source, profile.name)}: name: duplicate profile name "${profile.name}", also defined in ${first.file} (document ${first.document})`,
        });
        return;
      }
      byName.set(profile.name, source);
      profiles.push(profile);
    });
  }

  if (problems.length > 0) {
    const first = problems[0]!;
    throw new AgentlabError("PROFILE_INVALID", problems.map((problem) => problem.line).join("\n"), {
      details: {
        file: first.file,
        document: first.document,
        key: first.key,
        profile: first.profile,
        problems: problems.map(({ line, ...rest }) => ({ ...rest, message: line })),
      },
    });
  }
  return { profiles, warnings };
}

function parseProfileDocument(
  raw: unknown,
  source: ProfileSource,
  problems: ProfileProblem[],
  warnings: string[],
): Profile | undefined {
  if (raw === null || raw === undefined) {
    warnings.push(`${where(source)}: empty document, skipped`);
    return undefined;
  }
  if (!isMapping(raw)) {
    problems.push({
      ...source,
      key: "",
      line: `${where(source)}: expected a mapping of profile keys (name, template_vmid, ...), got ${describeValue(raw)}`,
    });
    return undefined;
  }
  const profileName = typeof raw["name"] === "string" && raw["name"] !== "" ? raw["name"] : undefined;
  const location = where(source, profileName);
  const report = (key: string, message: string) =>
    problems.push({ ...source, profile: profileName, key, line: `${location}: ${message}` });

  const mounts = hostMountKeys(raw);
  if (mounts.length > 0) {
    report(
      mounts[0]!,
      `profile "${profileName ?? "?"}" requests host mounts at ${mounts.join(", ")}; host bind mounts are not allowed (use workspace disks instead)`,
    );
  }

  const checked = checkDocument(ProfileSchema, withoutBlanks(raw));
  for (const unknown of checked.unknownKeys) {
    if (mounts.includes(unknown.key)) continue;
    const hint = unknown.suggestion ? ` (did you mean "${unknown.suggestion}"?)` : "";
    warnings.push(`${location}: ${unknown.key}: unknown key, ignored${hint}`);
  }
  for (const problem of checked.problems) report(problem.key, problem.message);
  const data = checked.data;
  if (data?.idle_stop !== undefined && data.behavior.idle_stop_minutes_default !== undefined) {
    report(
      "idle_stop",
      "idle_stop: behavior.idle_stop_minutes_default is set too, and both say how long a sandbox may sit idle; keep one (idle_stop: 30m is behavior.idle_stop_minutes_default: 30)",
    );
    return undefined;
  }
  if (checked.problems.length > 0 || mounts.length > 0 || data === undefined) return undefined;
  return { ...data, source, raw };
}

function where(source: ProfileSource, profileName?: string): string {
  const profilePart = profileName === undefined ? "" : `, profile "${profileName}"`;
  return `${source.file} (document ${source.document}${profilePart})`;
}

const HOST_MOUNT_KEYS = new Set([
  "host_mount",
  "host_mounts",
  "host_path",
  "host_paths",
  "bind_mount",
  "bind_mounts",
  "binds",
  "mounts",
  "mount_points",
  "mountpoints",
  "virtiofs",
  "virtio_fs",
]);

/**
 * A sandbox must never see the host's files, whatever section a profile hides the request in, so every
 * key of the tree is checked against upstream's patterns. Returns the dotted paths, sorted.
 */
export function hostMountKeys(document: unknown): string[] {
  const found = new Set<string>();
  const walk = (value: unknown, at: (string | number)[]) => {
    if (Array.isArray(value)) {
      for (const [index, item] of value.entries()) walk(item, [...at, index]);
    } else if (isMapping(value)) {
      for (const [key, child] of Object.entries(value)) {
        if (isHostMountKey(key)) found.add(formatPath([...at, key]));
        walk(child, [...at, key]);
      }
    }
  };
  walk(document, []);
  return [...found].sort();
}

function isHostMountKey(key: string): boolean {
  const word = key.trim().toLowerCase();
  if (HOST_MOUNT_KEYS.has(word)) return true;
  const has = (part: string) => word.includes(part);
  return (has("host") && (has("mount") || has("path") || has("bind"))) || (has("bind") && has("mount"));
}
