/**
 * Zod field builders shared by the config and profile schemas. Every builder attaches one "expected ..."
 * message to all of its checks, so a bad value produces one line that says what would have been
 * accepted; validate.ts adds the key and the value actually found.
 */
import { z } from "zod";
import { parseDuration } from "../protocol/units.js";

/** Words YAML 1.1 (and so upstream's Go loader) reads as booleans; js-yaml follows YAML 1.2 and does not. */
const BOOLEAN_WORDS: Record<string, boolean> = {
  true: true,
  yes: true,
  on: true,
  false: false,
  no: false,
  off: false,
};

export function bool() {
  const expected = { error: "expected true or false" };
  return z.preprocess((value) => {
    if (typeof value !== "string") return value;
    return BOOLEAN_WORDS[value.trim().toLowerCase()] ?? value;
  }, z.boolean(expected));
}

export function positiveInt(expected = "expected a positive integer") {
  const error = { error: expected };
  return z.number(error).int(error).positive(error);
}

export function nonNegativeInt(expected = "expected an integer >= 0") {
  const error = { error: expected };
  return z.number(error).int(error).nonnegative(error);
}

export function integer(expected = "expected an integer") {
  const error = { error: expected };
  return z.number(error).int(error);
}

export function numberBetween(
  min: number,
  max: number,
  expected = `expected a number from ${min} to ${max}`,
) {
  const error = { error: expected };
  return z.number(error).min(min, error).max(max, error);
}

export function nonNegativeNumber(expected = "expected a number >= 0") {
  const error = { error: expected };
  return z.number(error).nonnegative(error);
}

export function positiveNumber(expected = "expected a number > 0") {
  const error = { error: expected };
  return z.number(error).positive(error);
}

export function text(expected = "expected a string") {
  return z.string({ error: expected });
}

/** A string made only of the characters in `pattern`'s description, e.g. storage or group names. */
export function name(pattern: RegExp, expected: string) {
  const error = { error: expected };
  return z.string(error).regex(pattern, error);
}

/** `expected "a", "b" or "c"`: the exact spellings, quoted, so they can be copied into the file. */
export function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  const quoted = values.map((value) => JSON.stringify(value));
  const list = quoted.length === 1 ? quoted[0] : `${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}`;
  return z.enum(values, { error: `expected ${list}` });
}

export function stringList(expected = "expected a list of strings") {
  const error = { error: expected };
  return z.array(z.string(error), error);
}

/** A string that `accept` returns true for; for formats zod has no built-in check for. */
export function matching(accept: (value: string) => boolean, expected: string) {
  const error = { error: expected };
  return z.string(error).refine(accept, error);
}

const DURATION_EXPECTED = "expected a duration such as 30s, 5m or 1h30m";

/**
 * A Go-style duration string, as milliseconds. A bare number is refused (its unit would be a guess), except
 * 0, which YAML hands over as a number and which means the same in every unit.
 */
export function duration() {
  return z.union([z.string(), z.number()], { error: DURATION_EXPECTED }).transform((value, ctx) => {
    try {
      return parseDuration(String(value));
    } catch {
      ctx.addIssue({ code: "custom", message: DURATION_EXPECTED, input: value });
      return z.NEVER;
    }
  });
}
