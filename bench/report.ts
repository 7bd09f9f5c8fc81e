/**
 * What a benchmark reports: figures with their unit and, where the issue sets one, the goal beside
 * them; the table printed on stdout and the results.json written from them with the machine's facts.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";

export interface Goal {
  /** The figure must be at most (<=) or below (<) the target. */
  op: "<=" | "<";
  target: number;
  /** The goal in the words, e.g. "<= 8 Proxmox calls per create at realistic latency". */
  text: string;
}

export interface Figure {
  name: string;
  value: number;
  unit: string;
  goal?: Goal;
  /** Filled in by `check` when there is a goal. */
  met?: boolean;
  note?: string;
}

export interface BenchResult {
  name: string;
  title: string;
  seconds: number;
  figures: Figure[];
  /** Set when the benchmark threw: its figures are then missing. */
  error?: string;
}

export function check(figure: Figure): Figure {
  if (!figure.goal) return figure;
  const { op, target } = figure.goal;
  const met = Number.isFinite(figure.value) && (op === "<=" ? figure.value <= target : figure.value < target);
  return { ...figure, met };
}

export interface MachineFacts {
  cores: number;
  cpu_model: string;
  memory_gib: number;
  node: string;
  platform: string;
  commit: string;
  dirty: boolean;
  date: string;
  /** 1-minute load average when the bench began and ended: other work on the machine shows here. */
  load_before: number;
  load_after?: number;
}

export function machineFacts(repoRoot: string): MachineFacts {
  const git = (...args: string[]) => {
    try {
      return execFileSync("git", ["-C", repoRoot, ...args], { encoding: "utf8" }).trim();
    } catch {
      return "";
    }
  };
  return {
    cores: cpus().length,
    cpu_model: cpus()[0]?.model ?? "unknown",
    memory_gib: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    commit: git("rev-parse", "--short=12", "HEAD") || "unknown",
    dirty: git("status", "--porcelain", "--untracked-files=no") !== "",
    date: new Date().toISOString(),
    load_before: round(loadavg()[0] ?? 0),
  };
}

export function round(value: number, digits = 2): number {
  if (!Number.isFinite(value)) return value;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

function formatValue(figure: Figure): string {
  if (!Number.isFinite(figure.value)) return String(figure.value);
  const digits = Math.abs(figure.value) >= 100 || Number.isInteger(figure.value) ? 0 : 2;
  return `${figure.value.toFixed(digits)} ${figure.unit}`;
}

function goalCell(figure: Figure): string {
  if (!figure.goal) return "";
  return `${figure.goal.op} ${figure.goal.target} ${figure.unit}: ${figure.met ? "met" : "NOT met"}`;
}

/** The results as a plain-text table, one section per benchmark. */
export function renderTable(results: readonly BenchResult[]): string {
  const rows: string[][] = [["benchmark", "figure", "value", "goal"]];
  for (const r of results) {
    if (r.error) rows.push([r.name, "FAILED", r.error.split("\n")[0]!.slice(0, 100), ""]);
    for (const f of r.figures) rows.push([r.name, f.name, formatValue(f), goalCell(f)]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) =>
    row
      .map((cell, i) => (i === 2 ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  const out = [line(rows[0]!), widths.map((w) => "-".repeat(w)).join("  ")];
  let last = "";
  for (const row of rows.slice(1)) {
    out.push(line(row[0] === last ? ["", ...row.slice(1)] : row));
    last = row[0]!;
  }
  return out.join("\n");
}

export interface ResultsFile {
  machine: MachineFacts;
  scale: string;
  seconds: number;
  benchmarks: BenchResult[];
}

export function writeResults(path: string, results: ResultsFile): void {
  writeFileSync(path, `${JSON.stringify(results, null, 2)}\n`);
}
