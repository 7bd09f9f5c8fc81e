/**
 * Parsers for the human units that cross the CLI and the config file: durations ("30s", "5m", "1h30m",
 * Go's syntax, which upstream configs use) and TTLs in whole minutes. Pure functions; a bad value throws
 * a plain Error whose message says what was expected, for the caller to wrap with the field's name.
 */

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;

/**
 * Parse a duration such as "30s", "5m", "1h30m", "250ms" or "1.5h" into milliseconds.
 * A bare number is not accepted here: the unit would be a guess. Use parseTtlMinutes for TTLs.
 */
export function parseDuration(text: string): number {
  const input = text.trim();
  if (input === "") throw new Error("expected a duration such as 30s, 5m or 1h30m, got an empty value");
  if (input === "0") return 0;
  let total = 0;
  DURATION_PART.lastIndex = 0;
  let consumed = 0;
  while (consumed < input.length) {
    DURATION_PART.lastIndex = consumed;
    const match = DURATION_PART.exec(input);
    if (!match) {
      throw new Error(`expected a duration such as 30s, 5m or 1h30m, got "${text}"`);
    }
    const [whole, amount, unit] = match;
    total += Number(amount) * DURATION_UNITS_MS[unit as string]!;
    consumed += whole.length;
  }
  return Math.round(total);
}

/** Render milliseconds the way parseDuration reads them back: 90000 -> "1m30s". */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms < 1000) return `${ms}ms`;
  let rest = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [unit, size] of [
    ["d", 86_400],
    ["h", 3_600],
    ["m", 60],
    ["s", 1],
  ] as const) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.join("");
}

/**
 * A TTL as given on the command line: integer minutes ("90") or a duration ("2h", "90m"), rounded up to
 * whole minutes. Zero and negative values are refused with the spec's wording.
 */
export function parseTtlMinutes(text: string): number {
  const input = text.trim();
  let minutes: number;
  if (/^-?\d+$/.test(input)) {
    minutes = Number(input);
  } else if (input.startsWith("-")) {
    minutes = -1;
  } else {
    minutes = Math.ceil(parseDuration(input) / 60_000);
  }
  if (!Number.isFinite(minutes) || minutes <= 0) throw new Error("ttl must be positive");
  return minutes;
}

const MEMORY_UNITS_MIB: Record<string, number> = {
  k: 1 / 1024,
  m: 1,
  g: 1024,
  t: 1024 * 1024,
};

const MEMORY_FORMAT = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?$/i;

/**
 * A memory size as given on the command line, in MiB (the unit of Proxmox's `memory`): a bare number
 * is MiB ("8192"); a unit may follow, with or without "B"/"iB" ("512M", "8G", "8GB", "8GiB", "1.5g").
 * Units are binary whichever way they are written, as Proxmox counts memory: 8G and 8GB are 8192 MiB.
 * The result must be a whole, positive number of MiB.
 */
export function parseMemoryMb(text: string): number {
  const input = text.trim();
  if (/^-\d/.test(input)) throw new Error("memory must be positive");
  const match = MEMORY_FORMAT.exec(input);
  if (!match) throw new Error(`expected a memory size such as 8192, 512M, 8G or 8GiB, got "${text}"`);
  const amount = Number(match[1]);
  const unit = (match[2] ?? "m").toLowerCase();
  const mib = amount * MEMORY_UNITS_MIB[unit]!;
  if (!Number.isFinite(mib) || mib <= 0) throw new Error("memory must be positive");
  if (!Number.isInteger(mib)) {
    throw new Error(
      `memory must be a whole number of MiB: "${text}" is ${Math.round(mib * 1000) / 1000} MiB`,
    );
  }
  return mib;
}

const SIZE_FORMAT = /^(\d+(?:\.\d+)?)\s*(?:([gt])(?:i?b)?)?$/i;

/**
 * A disk size in whole GiB, as Proxmox allocates disks: a bare number is GiB ("80"); G or T may follow,
 * with or without "B"/"iB" ("80G", "80GB", "1T"). Units are binary (1T = 1024G), as in Proxmox.
 */
export function parseSizeGb(text: string): number {
  const input = text.trim();
  if (/^-\d/.test(input)) throw new Error("size must be positive");
  const match = SIZE_FORMAT.exec(input);
  if (!match) throw new Error(`expected a disk size such as 80G, 80 or 1T, got "${text}"`);
  const gib = Number(match[1]) * ((match[2] ?? "g").toLowerCase() === "t" ? 1024 : 1);
  if (!Number.isFinite(gib) || gib <= 0) throw new Error("size must be positive");
  if (!Number.isInteger(gib)) throw new Error(`size must be a whole number of GiB: "${text}" is ${gib} GiB`);
  return gib;
}
