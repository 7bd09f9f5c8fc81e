import { type Logger, pino } from "pino";
import { AgentlabError } from "../protocol/errors.js";

export type { Logger };

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

/**
 * The daemon's JSON logger. Lines go to stdout (journald under systemd), or to a file descriptor the
 * caller gives. The level comes from config.yaml's log_level, overridable with AGENTLAB_LOG_LEVEL for a
 * one-off debugging run.
 */
const LEVELS: readonly LogLevel[] = ["trace", "debug", "info", "warn", "error"];

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
    },
    pino.destination({ fd: destination, sync: true }),
  );
}
