import { fstatSync } from "node:fs";
import { type Logger, pino } from "pino";
import { AgentlabError } from "../protocol/errors.js";
import { redactString } from "./redact.js";

export type { Logger };

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

/**
 * The daemon's JSON logger. Lines go to stdout (journald under systemd), or to a file descriptor the
 * caller gives. The level comes from config.yaml's log_level, overridable with AGENTLAB_LOG_LEVEL for a
 * one-off debugging run.
 */
const LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error"];

/** syslog priorities (sd-daemon(3)) of pino's levels, for `journalctl -p warning` and friends. */
const PRIORITY: Readonly<Record<string, number>> = {
  trace: 7,
  debug: 7,
  info: 6,
  warn: 4,
  error: 3,
  fatal: 2,
};

/**
 * Whether `fd` is the journal's stream for this service: systemd sets JOURNAL_STREAM to its `dev:ino`
 * (systemd.exec(5)); a redirected or piped stdout has another, and gets no prefixes.
 */
export function writesToJournal(fd: number, env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env.JOURNAL_STREAM?.trim();
  if (!stream) return false;
  try {
    const stat = fstatSync(fd, { bigint: true });
    return stream === `${stat.dev}:${stat.ino}`;
  } catch {
    return false;
  }
}

/** `<N>` before a JSON line, N from its level: journald strips it and files the line at that priority. */
export function withPriority(line: string): string {
  const level = /"level":"([a-z]+)"/.exec(line)?.[1];
  const priority = level === undefined ? undefined : PRIORITY[level];
  return priority === undefined ? line : `<${priority}>${line}`;
}

export function createLogger(level: LogLevel, destination: number = 1): Logger {
  const override = process.env.AGENTLAB_LOG_LEVEL?.trim();
  if (override && !LEVELS.includes(override as LogLevel)) {
    throw new AgentlabError(
      "CONFIG_INVALID",
      `AGENTLAB_LOG_LEVEL: expected one of ${LEVELS.join(", ")}, got "${override}"`,
      {
        hint: "unset AGENTLAB_LOG_LEVEL to use log_level from the config file",
      },
    );
  }
  return pino(
    {
      level: override || level,
      base: { service: "agentlabd", pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // Every line passes the redactor (./redact.ts): a failure reason or a Proxmox error that quotes a
      // token or a URL with credentials must not end up in the journal.
      hooks: {
        streamWrite: writesToJournal(destination)
          ? (line: string) => withPriority(redactString(line))
          : (line: string) => redactString(line),
      },
    },
    pino.destination({ fd: destination, sync: true }),
  );
}
