/**
 * Runs a parsed YAML document through a zod schema the way both loaders need it: every problem at once
 * (one line each, naming the dotted key, what was expected and what was found), unknown keys set aside
 * as warnings rather than errors, and the valid part of the document still returned so that cross-key
 * checks can run in the same pass and the operator sees every problem in one go.
 */
import type { z } from "zod";
import { closest } from "./suggest.js";

/** One thing wrong with a document. `message` is complete, key included, e.g. `a.b: expected ..., got 3`. */
export interface Problem {
  key: string;
  message: string;
}

export interface UnknownKey {
  /** Dotted path of the key that no schema field accepts. */
  key: string;
  /** Dotted path of a known key with a close spelling, when there is one. */
  suggestion?: string;
}

export interface Checked<T> {
  /** The parsed document; undefined only if the invalid parts could not be set aside (e.g. a missing required key). */
  data: T | undefined;
  problems: Problem[];
  unknownKeys: UnknownKey[];
}

export interface CheckOptions {
  /** Dotted keys whose values must never be echoed in a message (tokens end up in logs). */
  secretKeys?: ReadonlySet<string>;
}

/** Issue params a refinement sets when its message is already complete (names its keys, says what was found). */
export const FINAL_MESSAGE = { final: true } as const;

type Path = readonly PropertyKey[];

export function formatPath(path: Path): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? String(segment) : `.${String(segment)}`;
  }
  return out;
}

/** How a value found in the file is shown after "got": strings quoted, containers by kind. */
export function describeValue(value: unknown): string {
  if (typeof value === "string") {
    const shown = value.length > 80 ? `${value.slice(0, 77)}...` : value;
    return JSON.stringify(shown);
  }
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (value instanceof Date) return `a date (${value.toISOString().slice(0, 10)})`;
  if (typeof value === "object") return "a mapping";
  return String(value);
}

export function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/**
 * A copy of `value` without the mapping entries that are null or blank. Upstream reads an empty value
 * as "keep the default" (`key:` or `key: ""`), so such entries must not be type-checked at all.
 */
export function withoutBlanks(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutBlanks);
  if (!isMapping(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [key, entry] of Object.entries(value)) {
    if (entry === null || (typeof entry === "string" && entry.trim() === "")) continue;
    out[key] = withoutBlanks(entry);
  }
  return out;
}

export function checkDocument<S extends z.ZodType>(
  schema: S,
  document: unknown,
  options: CheckOptions = {},
): Checked<z.output<S>> {
  const first = schema.safeParse(document);
  if (first.success) return { data: first.data, problems: [], unknownKeys: [] };

  const problems: Problem[] = [];
  const unknownKeys: UnknownKey[] = [];
  const seen = new Set<string>();
  for (const issue of first.error.issues) {
    if (issue.code === "unrecognized_keys") {
      const known = knownKeysAt(schema, issue.path);
      for (const key of issue.keys) {
        const suggestion = closest(key, known);
        const path = [...issue.path, key];
        unknownKeys.push(
          suggestion === undefined
            ? { key: formatPath(path) }
            : { key: formatPath(path), suggestion: formatPath([...issue.path, suggestion]) },
        );
      }
      continue;
    }
    const problem = toProblem(issue, document, options);
    // Several checks of one field can fail together (-1.5 is neither an integer nor positive); one line is enough.
    if (seen.has(problem.key)) continue;
    seen.add(problem.key);
    problems.push(problem);
  }
  return { data: parseValidPart(schema, document, first.error.issues), problems, unknownKeys };
}

function toProblem(issue: z.core.$ZodIssue, document: unknown, options: CheckOptions): Problem {
  const key = formatPath(issue.path);
  const params = (issue as { params?: { final?: boolean } }).params;
  if (issue.code === "custom" && params?.final) return { key, message: issue.message };
  const prefix = key === "" ? "" : `${key}: `;
  const value = valueAt(document, issue.path);
  if (value === undefined) return { key, message: `${prefix}required, ${issue.message}` };
  if (options.secretKeys?.has(key)) return { key, message: `${prefix}${issue.message} (value not shown)` };
  return { key, message: `${prefix}${issue.message}, got ${describeValue(value)}` };
}

function valueAt(document: unknown, path: Path): unknown {
  let current = document;
  for (const segment of path) {
    if (Array.isArray(current) && typeof segment === "number") current = current[segment];
    else if (isMapping(current) && typeof segment === "string") current = current[segment];
    else return undefined;
  }
  return current;
}

/**
 * Parse again without the unknown keys and the invalid values, so the caller still gets every valid
 * setting. Removing a value can expose a new issue (a required key now missing); a few rounds settle it
 * or show it cannot be done.
 */
function parseValidPart<S extends z.ZodType>(
  schema: S,
  document: unknown,
  issues: readonly z.core.$ZodIssue[],
): z.output<S> | undefined {
  const copy = structuredClone(document);
  let pending = issues;
  for (let round = 0; round < 4; round++) {
    for (const issue of pending) {
      if (issue.code === "unrecognized_keys") {
        for (const key of issue.keys) removeAt(copy, [...issue.path, key]);
      } else if (!removeAt(copy, issue.path)) {
        return undefined;
      }
    }
    const next = schema.safeParse(copy);
    if (next.success) return next.data;
    pending = next.error.issues;
  }
  return undefined;
}

/** Delete the value at `path`; inside a list the whole list goes, since a hole would just fail again. */
function removeAt(document: unknown, path: Path): boolean {
  let parent = document;
  for (let index = 0; index < path.length; index++) {
    const key = path[index];
    if (!isMapping(parent) || typeof key !== "string") return false;
    const child = parent[key];
    if (index === path.length - 1 || Array.isArray(child)) {
      delete parent[key];
      return true;
    }
    parent = child;
  }
  // An empty path: the document as a whole is wrong, nothing valid is left to keep.
  return false;
}

interface LooseDef {
  type: string;
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  element?: z.ZodType;
  in?: z.ZodType;
  out?: z.ZodType;
}

function defOf(schema: z.ZodType): LooseDef {
  return schema._zod.def as unknown as LooseDef;
}

/** The keys the (possibly wrapped) object schema at `path` accepts, for did-you-mean suggestions. */
function knownKeysAt(schema: z.ZodType, path: Path): string[] {
  let current: z.ZodType | undefined = schema;
  let index = 0;
  // Bounded walk: wrappers nest only a few levels deep, and a bound rules out a cycle through lazy schemas.
  for (let step = 0; current !== undefined && step < 64; step++) {
    const def = defOf(current);
    if (def.type === "object") {
      if (index === path.length) return Object.keys(def.shape ?? {});
      current = def.shape?.[String(path[index++])];
    } else if (def.type === "array") {
      index++;
      current = def.element;
    } else if (def.type === "pipe") {
      current = def.in !== undefined && defOf(def.in).type === "transform" ? def.out : def.in;
    } else {
      current = def.innerType;
    }
  }
  return [];
}
