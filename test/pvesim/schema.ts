/**
 * Parameter validation with the texts of PVE's JSONSchema: one `errors` entry per bad parameter and
 * a 400 `Parameter verification failed.` when there is any.
 */
import { paramError } from "./errors.js";

export type ParamType = "integer" | "boolean" | "number" | "string";

export interface ParamSpec {
  type: ParamType;
  optional?: boolean;
  minimum?: number;
  maximum?: number;
  enum?: string[];
  pattern?: RegExp;
  maxLength?: number;
  /** Format check returning the reason when the value is bad. */
  format?: (value: string) => string | undefined;
  /** Repeated keys allowed (form encoding of arrays). */
  array?: boolean;
}

export interface Schema {
  params: Record<string, ParamSpec>;
  /** Spec for keys not listed (e.g. VM options by pattern); undefined = not allowed. */
  additional?: (key: string) => ParamSpec | undefined;
}

export type RawParams = Record<string, string | string[]>;
export type Params = Record<string, string | number | boolean | string[] | undefined>;

const NOT_IN_SCHEMA = "property is not defined in schema and the schema does not allow additional properties";

export function parseBoolean(value: string): boolean | undefined {
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  return undefined;
}

export function vmidFormat(value: string): string | undefined {
  return /^[1-9][0-9]{2,8}$/.test(value) ? undefined : "value does not look like a valid VM ID";
}

export const VMID: ParamSpec = { type: "integer", format: vmidFormat, minimum: 100, maximum: 999_999_999 };
export const NODE: ParamSpec = { type: "string", pattern: /^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$/ };
export const STORAGE_ID: ParamSpec = { type: "string", pattern: /^[a-z][a-z0-9\-_.]*[a-z0-9]$/i };
export const BOOL_OPT: ParamSpec = { type: "boolean", optional: true };

export function checkValue(
  spec: ParamSpec,
  value: string,
): { value: string | number | boolean } | { error: string } {
  let out: string | number | boolean = value;
  if (spec.type === "integer") {
    if (!/^[+-]?\d+$/.test(value)) return { error: `type check ('integer') failed - got '${value}'` };
    out = Number(value);
  } else if (spec.type === "number") {
    if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value))
      return { error: `type check ('number') failed - got '${value}'` };
    out = Number(value);
  } else if (spec.type === "boolean") {
    const b = parseBoolean(value);
    if (b === undefined) return { error: `type check ('boolean') failed - got '${value}'` };
    out = b;
  }
  if (spec.format) {
    const reason = spec.format(value);
    if (reason) return { error: reason };
  }
  if (typeof out === "number") {
    if (spec.minimum !== undefined && out < spec.minimum)
      return { error: `value must have a minimum value of ${spec.minimum}` };
    if (spec.maximum !== undefined && out > spec.maximum)
      return { error: `value must have a maximum value of ${spec.maximum}` };
  }
  if (typeof out === "string") {
    if (spec.maxLength !== undefined && out.length > spec.maxLength) {
      return { error: `value may only be ${spec.maxLength} characters long` };
    }
    if (spec.enum && !spec.enum.includes(out)) {
      return { error: `value '${out}' does not have a value in the enumeration '${spec.enum.join(", ")}'` };
    }
    if (spec.pattern && !spec.pattern.test(out)) return { error: "value does not match the regex pattern" };
  }
  return { value: out };
}

/** Validates and types raw (string) parameters; throws the 400 with all errors at once. */
export function validate(schema: Schema, raw: RawParams): Params {
  const errors: Record<string, string> = {};
  const out: Params = {};
  for (const [key, value] of Object.entries(raw)) {
    const spec = schema.params[key] ?? schema.additional?.(key);
    if (!spec) {
      errors[key] = NOT_IN_SCHEMA;
      continue;
    }
    const values = Array.isArray(value) ? value : [value];
    if (values.length > 1 && !spec.array) {
      errors[key] = "property is not defined as an array, got multiple values";
      continue;
    }
    if (spec.array) {
      out[key] = values;
      continue;
    }
    const checked = checkValue(spec, values[0] ?? "");
    if ("error" in checked) errors[key] = checked.error;
    else out[key] = checked.value;
  }
  for (const [key, spec] of Object.entries(schema.params)) {
    if (!spec.optional && raw[key] === undefined && errors[key] === undefined) {
      errors[key] = "property is missing and it is not optional";
    }
  }
  if (Object.keys(errors).length > 0) throw paramError(errors);
  return out;
}

export function str(p: Params, key: string): string | undefined {
  const v = p[key];
  return v === undefined ? undefined : Array.isArray(v) ? v.join(",") : String(v);
}

export function num(p: Params, key: string): number | undefined {
  const v = p[key];
  return typeof v === "number" ? v : v === undefined ? undefined : Number(v);
}

export function bool(p: Params, key: string): boolean | undefined {
  const v = p[key];
  if (v === undefined) return undefined;
  if (typeof v === "boolean") return v;
  return parseBoolean(String(v)) ?? false;
}
