/**
 * `sandbox exec`: a command in a running sandbox, over SSH from the daemon (its own key; the guest's
 * host key checked against the keys the guest reported at phone-home). Output goes to `output` as it
 * arrives. It takes no sandbox lock: a command may run for hours and must not hold up stop or destroy
 * (which end it, as they end any login).
 */

import type { ParamsOf, ResultOf } from "../../../protocol/call-types.js";
import { AgentlabError } from "../../../protocol/errors.js";
import type { sandboxExec } from "../../../protocol/index.js";
import type { DaemonContext } from "../../context.js";
import { connectGuest, type GuestTarget } from "../../ssh/client.js";
import { commandLine, runCommand } from "../../ssh/exec.js";
import type { SshIdentity } from "../../ssh/identity.js";
import type { Operation } from "../operation.js";
import { getSandbox, requireState } from "./guards.js";

/** The user cloud-init creates in every sandbox, with agentlabd's key authorized. */
export const GUEST_USER = "agent";

export type ExecParams = Omit<ParamsOf<typeof sandboxExec>, "progress_token">;
export type ExecResult = ResultOf<typeof sandboxExec>;

/**
 * The guest to log in to for `verb` (exec in, copy to or from): the sandbox must be up, with an address,
 * and the daemon must have its key. Shared by exec and cp so both refuse in the same words.
 */
export function guestTarget(
  ctx: DaemonContext,
  vmid: number,
  verb: string,
  user: string = GUEST_USER,
): { target: GuestTarget; identity: SshIdentity } {
  const row = getSandbox(ctx, vmid);
  requireState(row, verb, ["RUNNING", "READY"], {
    hint:
      row.state === "STOPPED"
        ? `start it first: agentlab sandbox start ${row.vmid}`
        : row.state === "SUSPENDED"
          ? `resume it first: agentlab sandbox resume ${row.vmid}`
          : `agentlab sandbox show ${row.vmid} tells its state`,
  });
  if (!row.ip) {
    throw new AgentlabError("GUEST_UNREACHABLE", `sandbox ${row.vmid} has no recorded IP address`, {
      hint: `restart it so the daemon learns its address: agentlab sandbox stop ${row.vmid}, then agentlab sandbox start ${row.vmid}`,
      details: { vmid: row.vmid },
    });
  }
  const identity = ctx.sshIdentity;
  if (!identity) throw new AgentlabError("INTERNAL", "agentlabd has no SSH identity loaded");
  return { target: { vmid: row.vmid, host: row.ip, user, hostKeys: row.ssh_host_keys ?? [] }, identity };
}

export async function execInSandbox(
  ctx: DaemonContext,
  params: ExecParams,
  op: Operation,
  output: (stream: "stdout" | "stderr", chunk: Buffer) => void,
): Promise<ExecResult> {
  const user = params.user ?? GUEST_USER;
  const { target, identity } = guestTarget(ctx, params.vmid, "exec in", user);
  const started = ctx.clock.now().getTime();
  const client = await connectGuest(target, identity, op.signal);
  try {
    const line = commandLine(params.command, {
      ...(params.cwd !== undefined ? { cwd: params.cwd } : {}),
      ...(params.env !== undefined ? { env: params.env } : {}),
    });
    op.log.info({ vmid: target.vmid, user, argv0: params.command[0] }, "sandbox exec");
    const run = await runCommand(client, line, {
      ...(params.stdin !== undefined ? { stdin: Buffer.from(params.stdin, "base64") } : {}),
      onStdout: (chunk) => output("stdout", chunk),
      onStderr: (chunk) => output("stderr", chunk),
      signal: op.signal,
      ...(params.timeout_ms !== undefined ? { timeoutMs: params.timeout_ms } : {}),
    });
    if (run.cancelled) {
      throw new AgentlabError(
        "CANCELLED",
        `the command in sandbox ${target.vmid} was interrupted (SIGINT sent)`,
        {
          details: { vmid: target.vmid, exit_code: run.exitCode },
        },
      );
    }
    return {
      exit_code: run.exitCode,
      ...(run.signal !== undefined ? { signal: run.signal } : {}),
      ...(run.timedOut ? { timed_out: true } : {}),
      duration_ms: Math.max(0, ctx.clock.now().getTime() - started),
    };
  } finally {
    client.end();
  }
}
