import type { CommandModule } from "yargs";
import type { DaemonStatus } from "../../protocol/daemon.js";
import { formatDuration } from "../../protocol/units.js";
import { daemonStatus } from "../../protocol/wire.js";
import { connectionOf, execute, type GlobalArgs } from "../context.js";
import { describeConnection } from "../remote/connection.js";
import { fields, formatBytes } from "../render.js";

function backendLine(backend: DaemonStatus["backend"]): string {
  if (backend.reachable) {
    const nodes = (backend.nodes ?? []).map((n) => `${n.node}${n.online ? "" : " (offline)"}`).join(", ");
    return `${backend.kind}: Proxmox VE ${backend.version ?? "?"}, nodes ${nodes || "none"}`;
  }
  const why = backend.error ? `${backend.error.message}\nhint: ${backend.error.hint}` : "no answer";
  return `${backend.kind}: unreachable: ${why}`;
}

function privilegesLine(check: DaemonStatus["privileges"]): string {
  const fix = check.status !== "ok" && check.fix ? `\nfix: ${check.fix}` : "";
  return `${check.status}: ${check.detail}${fix}`;
}

function guestLine(listener: DaemonStatus["guest_listener"]): string {
  if (listener.listening) return `phone-home on ${listener.url ?? listener.address}`;
  const hint = listener.hint ? `\nhint: ${listener.hint}` : "";
  return `phone-home off: ${listener.error ?? "not listening"} (guest agent only)${hint}`;
}

/** nftables is what isolates sandboxes: say what is in force, so nobody greps iptables and concludes none. */
export function isolationLine(iso: NonNullable<DaemonStatus["isolation"]>): string {
  const hint = iso.hint ? `\nhint: ${iso.hint}` : "";
  if (!iso.in_force) return `NOT in force (network_isolation: ${iso.mode}): ${iso.reason}${hint}`;
  const total = iso.bound + iso.unbound_vmids.length;
  const unbound = iso.unbound_vmids.length > 0 ? `; NOT bound: ${iso.unbound_vmids.join(", ")}` : "";
  return `in force: nftables ${iso.ruleset.tables.join(", ")}; ${iso.bound} of ${total} sandboxes with an address bound${unbound}${hint}`;
}

export function statusText(status: DaemonStatus, connection?: string): string {
  const counts = Object.entries(status.sandboxes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([state, count]) => `${state} ${count}`);
  return fields([
    ...(connection ? ([["connection", connection]] as Array<[string, string]>) : []),
    ["daemon", `agentlabd ${status.version} (pid ${status.pid}, node ${status.node_version})`],
    ["uptime", `${formatDuration(Math.round(status.uptime_seconds) * 1000)} (since ${status.started_at})`],
    ["schema", `version ${status.schema_version}`],
    ["backend", backendLine(status.backend)],
    ["privileges", privilegesLine(status.privileges)],
    ["guests", guestLine(status.guest_listener)],
    ...(status.isolation
      ? ([["isolation", isolationLine(status.isolation)]] as Array<[string, string]>)
      : []),
    ["database", `${status.database.path} (${formatBytes(status.database.size_bytes)})`],
    ...(status.artifacts
      ? ([["artifacts", `${status.artifacts.path} (${formatBytes(status.artifacts.size_bytes)})`]] as Array<
          [string, string]
        >)
      : []),
    ...(status.maintenance
      ? ([["last maintenance", maintenanceLine(status.maintenance)]] as Array<[string, string]>)
      : []),
    ["socket", status.socket_path],
    ...(status.control_listener
      ? ([
          [
            "remote",
            status.control_listener.listening
              ? `${status.control_listener.url} (certificate SHA-256 ${status.control_listener.fingerprint})`
              : "off (control_listen not set)",
          ],
        ] as Array<[string, string]>)
      : []),
    ["config", status.config_path],
    ["profiles", String(status.profiles)],
    ["sandboxes", counts.length > 0 ? counts.join(", ") : "none"],
    ...(status.pools ?? []).map((pool): [string, string] => [`pool ${pool.profile}`, poolLine(pool)]),
  ]);
}

/** One warm pool's fill: "2/3 ready, 1 filling", and why its last fill failed. */
function poolLine(pool: NonNullable<DaemonStatus["pools"]>[number]): string {
  const fill = `${pool.ready}/${pool.wanted} ready, ${pool.filling} filling`;
  return pool.last_error ? `${fill} (last fill failed: ${pool.last_error})` : fill;
}

function maintenanceLine(m: NonNullable<DaemonStatus["maintenance"]>): string {
  if (m.last_run_at === undefined) return "never (agentlab maintenance run; docs/maintenance.md)";
  const outcome = m.ok === false ? "with errors: run agentlab maintenance run --dry-run" : "ok";
  return `${m.last_run_at} (${outcome}, freed ${formatBytes(m.freed_bytes ?? 0)})`;
}

/** `agentlab status`: it takes only the global flags, so it also runs without yargs (cli/direct.ts). */
export function showStatus(argv: GlobalArgs): Promise<void> {
  return execute(argv, async (ctx) => {
    const connection = connectionOf(argv);
    const status = await ctx.call(daemonStatus, {});
    // The JSON says where the CLI connected, never with the token or the pinned certificate's PEM.
    const shown =
      connection.kind === "socket"
        ? { kind: connection.kind, path: connection.path, source: connection.source }
        : {
            kind: connection.kind,
            endpoint: connection.endpoint,
            source: connection.source,
            token_source: connection.tokenSource,
            ...(connection.pin ? { fingerprint: connection.pin.fingerprint } : {}),
          };
    return {
      data: { ...status, connection: shown },
      text: statusText(status, describeConnection(connection)),
    };
  });
}

export const statusCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "status",
  describe: "Show the daemon's version, uptime, schema version, backend, database and sandbox counts",
  handler: showStatus,
};
