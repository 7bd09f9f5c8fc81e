import { type Logger, pino } from "pino";

export type { Logger };

export type LogLevel = "trace" | "debug" | "info" | "warn" | "error";

/**
 * The daemon's JSON logger. Lines go to stdout (journald under systemd), or to a file descriptor the
 * caller gives. The level comes from config.yaml's log_level, overridable with AGENTLAB_LOG_LEVEL for a
 * one-off debugging run.
 */
export function createLogger(level: LogLevel, destination: number = 1): Logger {
  const override = process.env.AGENTLAB_LOG_LEVEL;
  return pino(
    {
      level: override && override !== "" ? override : level,
      base: { service: "agentlabd", pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ fd: destination, sync: true }),
  );
}
