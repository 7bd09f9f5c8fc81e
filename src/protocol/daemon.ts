import { z } from "zod";
import { CheckedAt } from "./checked-at.js";
import { InitCheck } from "./init.js";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

export const SandboxCounts = z
  .record(z.string(), z.number().int().nonnegative())
  .describe("number of sandboxes in each state; states without sandboxes are left out");

export const DaemonStatus = z.object({
  version: z.string().describe("agentlabd version"),
  pid: z.number().int(),
  started_at: z.string().describe("RFC 3339 UTC time the daemon started"),
  uptime_seconds: z.number().nonnegative(),
  node_version: z.string(),
  schema_version: z.number().int().describe("database schema version (newest migration applied)"),
  backend: z.object({
    kind: z.enum(["shell", "api"]).describe("configured Proxmox backend"),
    reachable: z.boolean().describe("whether Proxmox answered the probe of checked_at"),
    calls: z
      .number()
      .int()
      .nonnegative()
      .describe("Proxmox calls since the daemon started: pvesh spawns (shell) or HTTP requests (api)"),
    version: z.string().optional().describe("Proxmox VE version it reported, e.g. 9.0.3"),
    nodes: z
      .array(z.object({ node: z.string(), online: z.boolean() }))
      .optional()
      .describe("cluster nodes as Proxmox lists them"),
    error: z
      .object({ code: z.string(), message: z.string(), hint: z.string() })
      .optional()
      .describe("why Proxmox could not be reached"),
    checked_at: CheckedAt,
  }),
  privileges: InitCheck.describe(
    "the api backend token's effective privileges against what agentlabd uses (not applicable on the shell backend)",
  ),
  database: z.object({
    path: z.string(),
    size_bytes: z.number().int().nonnegative().describe("database file plus its write-ahead log"),
  }),
  artifacts: z
    .object({
      path: z.string().describe("artifact_dir"),
      size_bytes: z.number().int().nonnegative().describe("disk use of everything under it"),
      checked_at: CheckedAt,
    })
    .optional()
    .describe("absent from older daemons"),
  maintenance: z
    .object({
      last_run_at: z.string().optional().describe("RFC 3339; absent when agentlab maintenance run never ran"),
      ok: z.boolean().optional().describe("false when that run could not do everything"),
      freed_bytes: z.number().int().optional(),
    })
    .optional()
    .describe("the last agentlab maintenance run (dry runs are not recorded); absent from older daemons"),
  guest_listener: z
    .object({
      address: z.string().describe("bootstrap_listen"),
      listening: z.boolean(),
      url: z.string().optional().describe("where guests report readiness"),
      error: z.string().optional().describe("why it is not listening"),
      hint: z.string().optional(),
    })
    .describe("the guest listener; when not listening, guests are found through the guest agent only"),
  socket_path: z.string(),
  control_listener: z
    .object({
      listening: z.boolean(),
      url: z.string().optional(),
      fingerprint: z
        .string()
        .optional()
        .describe("SHA-256 of the listener's certificate: what agentlab connect shows and pins"),
    })
    .optional()
    .describe("the remote control listener (control_listen); absent from older daemons"),
  isolation: z
    .object({
      mode: z.enum(["auto", "on", "off"]).describe("network_isolation from config.yaml"),
      in_force: z
        .boolean()
        .describe("true when the agentlab nftables ruleset is loaded and agentlabd binds sandboxes to it"),
      reason: z.string(),
      hint: z.string().optional(),
      ruleset: z.object({
        loaded: z.boolean(),
        tables: z.array(z.string()).describe('nftables tables found, e.g. "inet agentlab"'),
        error: z.string().optional().describe("why the ruleset could not be read"),
      }),
      bound: z.number().int().nonnegative().describe("sandboxes with an address that are bound"),
      unbound_vmids: z.array(z.number().int()).describe("sandboxes with an address but no binding"),
      checked_at: CheckedAt,
    })
    .optional()
    .describe("host network isolation as it is now (nftables, not iptables); absent from older daemons"),
  config_path: z.string(),
  profiles: z.number().int().nonnegative().describe("number of profiles loaded"),
  sandboxes: SandboxCounts,
  pools: z
    .array(
      z.object({
        profile: z.string(),
        wanted: z.number().int().nonnegative().describe("the profile's warm_pool"),
        ready: z.number().int().nonnegative().describe("members running and free to claim"),
        filling: z.number().int().nonnegative().describe("members being provisioned"),
        last_error: z
          .string()
          .optional()
          .describe("why the last fill failed; the pool retries after a wait that doubles up to 10 min"),
      }),
    )
    .optional()
    .describe(
      "each warm pool's fill (profiles with warm_pool > 0, or with members left); absent from older daemons",
    ),
});
export type DaemonStatus = z.infer<typeof DaemonStatus>;

export const daemonStatus = defineMethod(wire.daemonStatus, {
  summary:
    "Daemon health: version, uptime, schema version, backend, database path and size, sandbox counts by state.",
  params: z.object({}).strict(),
  result: DaemonStatus,
});
