import { z } from "zod";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

export const CHECK_STATUSES = ["ok", "warn", "fail"] as const;

/** One line of `agentlab init`: what was checked, how it went, and the command that fixes it. */
export const InitCheck = z.object({
  name: z.string().describe("check name, e.g. bridge_vmbr1, templates"),
  status: z.enum(CHECK_STATUSES),
  detail: z.string().describe("what was found"),
  fix: z.string().optional().describe("the exact command that fixes a non-ok check"),
});
export type InitCheck = z.infer<typeof InitCheck>;

export const DaemonChecks = z.object({
  checks: z
    .array(InitCheck)
    .describe("profiles, templates, snippets, backend, privileges, database, in that order"),
  host: z
    .object({
      bridge: z.string().describe("sandbox bridge name"),
      bridge_address: z.string().describe("address the bridge should have, e.g. 10.77.0.1/16"),
      agent_subnet: z.string(),
      guest_ports: z
        .array(z.number().int())
        .describe("bootstrap and artifact ports guests reach on the bridge"),
      data_dir: z.string(),
      socket_path: z.string(),
    })
    .describe("the daemon's settings the CLI's host-side checks compare against"),
});
export type DaemonChecks = z.infer<typeof DaemonChecks>;

export const daemonChecks = defineMethod(wire.daemonChecks, {
  summary:
    "The Proxmox- and config-side checks of agentlab init: profiles, templates, snippets, backend, API token privileges, database.",
  params: z.object({}).strict(),
  result: DaemonChecks,
});
