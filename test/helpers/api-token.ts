import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { addAcl, addRole, addToken } from "../pvesim/access.js";
import { inspect, type Sim } from "../pvesim/harness.js";

const RUNBOOK = join(fileURLToPath(new URL("../../../", import.meta.url)), "docs", "runbook.md");

export const TOKEN_USER = "agentlab@pve";
export const TOKEN_ID = `${TOKEN_USER}!agentlabd`;

/** The privileges of each `pveum role add AgentLab -privs "..."` line in docs/runbook.md, in order. */
export function runbookRoleLines(): string[][] {
  const text = readFileSync(RUNBOOK, "utf8");
  return [...text.matchAll(/^pveum role add AgentLab -privs "([^"]*)"$/gm)].map((m) => m[1]!.split(","));
}

export function runbookText(): string {
  return readFileSync(RUNBOOK, "utf8");
}

/**
 * What the runbook's "API backend install" does, in the simulator: the AgentLab role with `privs`,
 * the user, a privilege-separated token and the role on / for both. Returns `USER@REALM!ID=SECRET`.
 */
export function runbookToken(privs: readonly string[]): (sim: Sim) => Promise<string> {
  return (sim) =>
    inspect(sim.dir, (ctx) => {
      addRole(ctx.state, "AgentLab", [...privs], ctx.control.pve_version);
      const secret = addToken(ctx.state, TOKEN_ID, true);
      addAcl(ctx.state, "/", "AgentLab", TOKEN_USER);
      addAcl(ctx.state, "/", "AgentLab", TOKEN_ID);
      return `${TOKEN_ID}=${secret}`;
    });
}
