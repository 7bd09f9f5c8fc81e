/** Output formats of the Perl CLIs: printf padding, canonical and pretty Perl JSON, pvesh text tables. */

/** `%-Ns` (left) or `%Ns` (right); never truncates, like printf. */
export function pad(value: string | number, width: number, left = false): string {
  const s = String(value);
  if (s.length >= width) return s;
  return left ? s + " ".repeat(width - s.length) : " ".repeat(width - s.length) + s;
}

function sortedKeys(obj: Record<string, unknown>): string[] {
  return Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
}

/** `JSON->canonical->encode`: one line, keys sorted. */
export function canonicalJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const obj = value as Record<string, unknown>;
    return `{${sortedKeys(obj)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

/** `JSON->pretty->canonical->encode`: three-space indent and `"key" : value`. */
export function perlPrettyJson(value: unknown, indent = ""): string {
  const inner = `${indent}   `;
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => inner + perlPrettyJson(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (typeof value === "object") {
    const obj = value as Record<string, unknown>;
    const keys = sortedKeys(obj);
    if (keys.length === 0) return "{}";
    return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)} : ${perlPrettyJson(obj[k], inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

function cell(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return canonicalJson(value);
  return String(value);
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (l: string, m: string, r: string, fill: string): string =>
    l + widths.map((w) => fill.repeat(w + 2)).join(m) + r;
  const row = (cells: string[]): string =>
    `│${cells.map((c, i) => ` ${pad(c, widths[i]!, true)} `).join("│")}│`;
  return [
    line("┌", "┬", "┐", "─"),
    row(header),
    line("╞", "╪", "╡", "═"),
    ...rows.map(row),
    line("└", "┴", "┘", "─"),
  ].join("\n");
}

/** pvesh's default `text` output: bordered tables for lists and objects, the bare value otherwise. */
export function pveshText(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) {
    if (value.length === 0) return "";
    if (value.every((v) => v && typeof v === "object" && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v as object)))].sort();
      return table(
        keys,
        value.map((v) => keys.map((k) => cell((v as Record<string, unknown>)[k]))),
      );
    }
    return value.map(cell).join("\n");
  }
  if (typeof value === "object") {
    const obj = value as Record<string, unknown>;
    return table(
      ["key", "value"],
      sortedKeys(obj).map((k) => [k, cell(obj[k])]),
    );
  }
  return String(value);
}
