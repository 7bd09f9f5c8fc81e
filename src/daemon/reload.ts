/**
 * SIGHUP (`systemctl reload agentlabd`): read config.yaml and the profiles again. Both are validated
 * before anything changes; a file that does not load keeps everything as it was and the log says why.
 * Profiles and the settings the daemon reads at the moment of use take effect at once; a setting that
 * some part took at start-up (the socket, the database, the listeners, the Proxmox connection, the
 * network parameters) is reported as needing a restart and keeps its running value.
 */
import { type Config, loadConfig } from "../config/config.js";
import { loadProfiles } from "../config/profiles.js";
import type { DaemonContext } from "./context.js";

/** Read from ctx.config where they are used (provisioning, leases, placement, the logger), so live. */
const LIVE_KEYS: ReadonlySet<keyof Config> = new Set<keyof Config>([
  "log_level",
  "profiles_dir",
  "provisioning_timeout_ms",
  "phone_home_grace_ms",
  "orphan_grace_period_ms",
  "workspace_lease_ttl_ms",
  "workspace_storage",
  "proxmox_clone_mode",
  "snippets_dir",
  // Read by each idle stop pass; idle_stop_interval is the timer's, set at start.
  "idle_stop_enabled",
  "idle_stop_minutes_default",
  "idle_stop_cpu_threshold",
]);

export type ReloadResult =
  | { ok: true; profiles: string[]; applied: string[]; restart: string[] }
  | { ok: false; error: string };

export function reloadDaemon(ctx: DaemonContext): ReloadResult {
  let config: Config;
  let profiles: DaemonContext["profiles"];
  let warnings: string[];
  try {
    const loaded = loadConfig(ctx.configPath);
    config = loaded.config;
    const read = loadProfiles(config.profiles_dir);
    profiles = read.profiles;
    warnings = [...loaded.warnings, ...read.warnings];
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    ctx.log.error({ file: ctx.configPath }, `reload refused, nothing changed: ${message}`);
    return { ok: false, error: message };
  }
  for (const warning of warnings) ctx.log.warn({ file: ctx.configPath }, warning);
  const applied: string[] = [];
  const restart: string[] = [];
  const next: Record<string, unknown> = { ...ctx.config };
  for (const key of Object.keys(config) as (keyof Config)[]) {
    if (JSON.stringify(config[key]) === JSON.stringify(ctx.config[key])) continue;
    if (LIVE_KEYS.has(key)) {
      next[key] = config[key];
      applied.push(key);
    } else {
      restart.push(key);
    }
  }
  ctx.config = next as unknown as Config;
  ctx.profiles = profiles;
  if (applied.includes("log_level")) ctx.log.level = config.log_level;
  const names = profiles.map((p) => p.name);
  ctx.log.info({ profiles: names, applied, restart_needed: restart }, "reloaded config.yaml and profiles");
  if (restart.length > 0) {
    ctx.log.warn(
      { restart_needed: restart },
      `changed in config.yaml but only read at start-up: ${restart.join(", ")} (systemctl restart agentlabd applies them)`,
    );
  }
  return { ok: true, profiles: names, applied, restart };
}
