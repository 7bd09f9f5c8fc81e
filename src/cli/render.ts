import { AgentlabError } from "../protocol/errors.js";
import type { ProgressValue } from "../protocol/progress.js";

/**
 * Everything the CLI writes goes through here: results as text or as the raw protocol JSON, errors as
 * `error:`/`hint:` lines on stderr or one JSON line on stdout, progress as lines on stderr.
 */

export interface Output {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

export const processOutput: Output = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

export function renderJson(out: Output, value: unknown): void {
  out.stdout(`${JSON.stringify(value, null, 2)}\n`);
}

/** The `--json` error envelope: one line on stdout, so scripts parse it with the same reader as results. */
export function errorEnvelope(error: AgentlabError): Record<string, unknown> {
  return {
    error: error.message,
    code: error.code,
    message: error.message,
    details: error.details,
    hint: error.hint,
  };
}

export function renderError(out: Output, error: AgentlabError, json: boolean): void {
  if (json) {
    out.stdout(`${JSON.stringify(errorEnvelope(error))}\n`);
    return;
  }
  out.stderr(`error: ${error.message}\n`);
  const [first, ...rest] = error.hint.split("\n");
  if (first) out.stderr(`hint: ${first}\n`);
  for (const line of rest) out.stderr(`      ${line}\n`);
}

/** Any thrown value as an AgentlabError; unexpected ones keep their message and become INTERNAL. */
export function asAgentlabError(error: unknown): AgentlabError {
  if (error instanceof AgentlabError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new AgentlabError("INTERNAL", message, {
    hint: "this is a bug in the agentlab CLI; please report it with the command you ran",
    cause: error,
  });
}

/** Progress lines for people; nothing when --json asks for the final record only. */
export function progressPrinter(out: Output, json: boolean): ((value: ProgressValue) => void) | undefined {
  if (json) return undefined;
  return (value) => {
    const count = value.total !== undefined ? ` (${value.done ?? 0}/${value.total})` : "";
    out.stderr(`• ${value.message}${count}\n`);
  };
}

/** A plain table: header row, then rows, columns padded to their widest cell. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, i) =>
    Math.max(header.length, ...rows.map((row) => (row[i] ?? "").length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n") + "\n";
}

/** Key/value lines with the values aligned. */
export function fields(pairs: Array<[string, string]>): string {
  const width = Math.max(...pairs.map(([key]) => key.length)) + 1;
  // The lines after a value's first (a hint, a fix) start under the value, however wide the keys are.
  const indent = `\n${" ".repeat(width + 1)}`;
  return (
    pairs.map(([key, value]) => `${`${key}:`.padEnd(width)} ${value.split("\n").join(indent)}`).join("\n") +
    "\n"
  );
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}
