import { AgentlabError } from "../protocol/errors.js";
import { parseSizeGb, parseTtlMinutes } from "../protocol/units.js";

/** A flag value the command parses itself; a bad one is a usage error naming the flag and the forms. */
function parsed(flag: string, parse: () => number, hint: string): number {
  try {
    return parse();
  } catch (error) {
    throw new AgentlabError("USAGE", `${flag}: ${(error as Error).message}`, { hint });
  }
}

/** --ttl: minutes (90) or a duration (90m, 2h). */
export function ttlOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  return parsed("--ttl", () => parseTtlMinutes(text), "give minutes (90) or a duration (90m, 2h)");
}

/** A disk size flag such as --size: whole GiB. */
export function sizeOption(flag: string, text: string): number {
  return parsed(flag, () => parseSizeGb(text), "give whole GiB: 80G, 80 or 1T");
}

/**
 * A VMID argument, parsed here rather than by yargs' `type: "number"`, which turns `abc` into NaN and
 * sends it on (as null in JSON). A coerce function: yargs passes what it throws to the fail handler.
 */
export function vmidArg(name: string): (value: unknown) => number | undefined {
  return (value) => {
    if (value === undefined) return undefined;
    const text = String(Array.isArray(value) ? value[value.length - 1] : value).trim();
    if (/^\d+$/.test(text) && Number(text) >= 100 && Number(text) <= 999_999_999) return Number(text);
    // yargs re-wraps what a coerce function throws, keeping only the message: it must say it all.
    throw new AgentlabError(
      "USAGE",
      `${name} must be a VMID, a whole number from 100 to 999999999 (agentlab sandbox list shows them); got "${text}"`,
    );
  };
}
