/**
 * Bounds on every RPC input. A request over a bound is refused while its params are validated, before
 * any handler runs, with a message that names the field and the limit and never echoes the value (a
 * 1 MB name must not come back as a 2 MB answer). The figures come from the systems the values end up
 * in; docs/rpc.md prints this table (scripts/gen-docs.ts) and docs/reliability.md explains it.
 */
import { z } from "zod";
import { EXEC_MAX_STDIN_BYTES } from "./chunk-sizes.js";

export { EXEC_MAX_STDIN_BYTES } from "./chunk-sizes.js";

export interface Limit {
  max: number;
  unit: "characters" | "items" | "entries" | "";
  why: string;
}

/** Every bound the protocol's params use, by name; the schemas refer to these, never to bare numbers. */
export const LIMITS = {
  NAME: {
    max: 63,
    unit: "characters",
    why: "sandbox, session and token names: a DNS label, Proxmox's VM name (pve-common pve_verify_dns_name) and the guest's hostname",
  },
  PROFILE: { max: 64, unit: "characters", why: "profile names: the profile loader allows up to 64" },
  REF: {
    max: 64,
    unit: "characters",
    why: "a workspace, session, job or token given by name or id (names at most 63, ids are shorter)",
  },
  STORAGE: {
    max: 64,
    unit: "characters",
    why: "a Proxmox storage ID ([a-z][a-z0-9._-]*, pve-common pve_verify_storage_id; real ones are a word or two)",
  },
  SNAPSHOT: { max: 40, unit: "characters", why: "snapshot names: Proxmox's pve-configid, at most 40" },
  TAG: { max: 64, unit: "characters", why: "one VM tag (Proxmox's tag rule; tags are short labels)" },
  TAGS: { max: 16, unit: "items", why: "tags on one sandbox" },
  GIT_REF: {
    max: 200,
    unit: "characters",
    why: "a branch, tag or commit name; git refs are path components of at most 255 bytes each",
  },
  URL: {
    max: 8192,
    unit: "characters",
    why: "repo_url: 8 KiB, the request-line limit of common web servers (nginx large_client_header_buffers, Apache LimitRequestLine)",
  },
  TASK: { max: 65536, unit: "characters", why: "a job's task text (64 KiB): the agent's prompt" },
  PATH: { max: 4096, unit: "characters", why: "paths (cwd, db.backup out, artifact names): Linux PATH_MAX" },
  WORD: { max: 32, unit: "characters", why: "short words: a login name (useradd), a job's mode" },
  ARG: {
    max: 65536,
    unit: "characters",
    why: "one argument of sandbox.exec's command (the kernel's MAX_ARG_STRLEN is 128 KiB)",
  },
  ARGS: { max: 4096, unit: "items", why: "arguments of sandbox.exec's command" },
  ENV_NAME: { max: 255, unit: "characters", why: "an environment variable's name in sandbox.exec" },
  ENV_VALUE: { max: 65536, unit: "characters", why: "an environment variable's value (as ARG)" },
  ENV: { max: 256, unit: "entries", why: "environment variables of one sandbox.exec" },
  STDIN: {
    max: Math.ceil(EXEC_MAX_STDIN_BYTES / 3) * 4,
    unit: "characters",
    why: "sandbox.exec stdin: 512 KiB once decoded, so the request fits a frame (base64 is 4/3 longer)",
  },
  PROGRESS_TOKEN: { max: 128, unit: "characters", why: "a progress token (clients use short ids)" },
  TTL_MINUTES: {
    max: 525_600,
    unit: "",
    why: "ttl_minutes: one year; a lease longer than that is keepalive",
  },
  TIMEOUT_MS: { max: 7 * 86_400_000, unit: "", why: "sandbox.exec timeout_ms: one week" },
  MEMORY_MB: {
    max: 4_194_304,
    unit: "",
    why: "memory_mb: Proxmox's maximum (qemu-server Memory.pm $MAX_MEM, 4 TiB)",
  },
  VMID: { max: 999_999_999, unit: "", why: "a VMID: Proxmox's pve-vmid range is 100 to 999999999" },
  COUNT: { max: 1000, unit: "", why: "how many events or backups to keep or show" },
  OFFSET: {
    max: Number.MAX_SAFE_INTEGER,
    unit: "",
    why: "byte offsets and event ids: any whole number JSON carries exactly",
  },
} as const satisfies Record<string, Limit>;

/** How an echoed value is shortened: the first 64 characters and an ellipsis. */
export const PREVIEW_CHARS = 64;

/** `value` as an error message may quote it: at most PREVIEW_CHARS characters, then "…". */
export function preview(value: string, max = PREVIEW_CHARS): string {
  return value.length <= max ? value : `${value.slice(0, max)}…`;
}

/**
 * A string of at most `limit.max` characters. The length check comes first and stops validation, so
 * no pattern or refinement ever runs on an oversized value; its message reads "<field> is N characters;
 * the limit is M" once the RPC layer puts the field's name in front.
 */
export function boundedString(limit: Limit): z.ZodString {
  return z.string().max(limit.max, {
    abort: true,
    error: (issue) => `is ${(issue.input as string).length} characters; the limit is ${limit.max}`,
  });
}

/** An array of at most `limit.max` items, checked as boundedString is. */
export function boundedArray<T extends z.ZodType>(item: T, limit: Limit): z.ZodArray<T> {
  return z.array(item).max(limit.max, {
    abort: true,
    error: (issue) => `has ${(issue.input as unknown[]).length} items; the limit is ${limit.max}`,
  });
}

/** For a number's .max(): "<field> is N; the limit is M". */
export function numberLimit(limit: Limit): { error: (issue: { input: unknown }) => string } {
  return { error: (issue) => `is ${String(issue.input)}; the limit is ${limit.max}` };
}

/** The entry bound of each record made by boundedRecord, for the test that every input is bounded. */
export const RECORD_LIMITS = new WeakMap<z.ZodType, Limit>();

/** A record of at most `limit.max` entries whose keys and values are bounded strings. */
export function boundedRecord<V extends z.ZodType>(key: z.ZodString, value: V, limit: Limit) {
  const record = z.record(key, value).check((ctx) => {
    const entries = Object.keys(ctx.value).length;
    if (entries > limit.max) {
      ctx.issues.push({
        code: "too_big",
        origin: "object",
        maximum: limit.max,
        input: ctx.value,
        message: `has ${entries} entries; the limit is ${limit.max}`,
        continue: false,
      });
    }
  });
  RECORD_LIMITS.set(record, limit);
  return record;
}
