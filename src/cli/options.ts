import { AgentlabError, parseSizeGb, parseTtlMinutes } from "../protocol/index.js";

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
