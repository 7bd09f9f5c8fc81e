import { userInfo } from "node:os";
import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import type { SandboxDetail } from "../../protocol/sandbox.js";
import { sandboxShow, sandboxStart } from "../../protocol/wire.js";
import { type CommandContext, connectionOf, execute, type GlobalArgs, parseTimeout } from "../context.js";
import { vmidArg } from "../options.js";
import { loadSaved } from "../remote/saved.js";
import { recordedHostKeys } from "../ssh/host-keys.js";
import type { Identity } from "../ssh/identities.js";
import { keepInUse } from "../ssh/in-use.js";
import { type JumpHost, resolveJumpHost } from "../ssh/jump.js";
import { opensshArgv, shellQuote, writeSandboxKnownHosts } from "../ssh/openssh.js";
import { promptHidden } from "../ssh/terminal.js";

interface SshArgs extends GlobalArgs {
  vmid: number;
  user: string;
  identity?: string;
  "jump-host"?: string;
  "jump-user"?: string;
  wait: boolean;
  "no-start": boolean;
  print: boolean;
  "--"?: Array<string | number>;
}

/** How long --wait waits for the sandbox (booting, its IP, port 22) without --timeout: the daemon's SSH readiness window. */
const DEFAULT_WAIT_MS = 3 * 60_000;

/** States a sandbox gets out of by itself: --wait waits for them to end. */
const COMING_UP = ["REQUESTED", "PROVISIONING", "BOOTING"];

/**
 * The sandbox, started when STOPPED (unless --no-start) and, with --wait, polled until it is up with
 * an address; otherwise a state it cannot be reached in is an error saying what to run.
 */
async function reachableSandbox(
  ctx: CommandContext,
  argv: SshArgs,
  deadline: number,
  progress: (line: string) => void,
): Promise<SandboxDetail> {
  let sandbox = await ctx.call(sandboxShow, { vmid: argv.vmid, events: 0 });
  for (;;) {
    if (sandbox.state === "STOPPED") {
      if (argv["no-start"]) {
        throw new AgentlabError("INVALID_STATE", `sandbox ${argv.vmid} is STOPPED (--no-start)`, {
          hint: `start it: agentlab sandbox start ${argv.vmid} (or run agentlab ssh without --no-start)`,
        });
      }
      progress(`sandbox ${argv.vmid} is STOPPED: starting it`);
      await ctx.call(sandboxStart, { vmid: argv.vmid });
      sandbox = await ctx.call(sandboxShow, { vmid: argv.vmid, events: 0 });
      continue;
    }
    const up = sandbox.state === "READY" || sandbox.state === "RUNNING";
    if (up && sandbox.ip) return sandbox;
    const waitable = COMING_UP.includes(sandbox.state) || (up && !sandbox.ip);
    if (!waitable) {
      const hint =
        sandbox.state === "SUSPENDED"
          ? `resume it first: agentlab sandbox resume ${argv.vmid}`
          : `it cannot be reached in this state: agentlab sandbox show ${argv.vmid}`;
      throw new AgentlabError("INVALID_STATE", `sandbox ${argv.vmid} is ${sandbox.state}`, { hint });
    }
    const why = up ? "has no IP address yet" : `is ${sandbox.state}`;
    if (!argv.wait) {
      throw new AgentlabError("INVALID_STATE", `sandbox ${argv.vmid} ${why}`, {
        hint: `wait for it: agentlab ssh ${argv.vmid} --wait`,
      });
    }
    if (Date.now() >= deadline) {
      throw new AgentlabError("INVALID_STATE", `sandbox ${argv.vmid} still ${why} after waiting`, {
        hint: `check it: agentlab sandbox show ${argv.vmid}; wait longer with --timeout, e.g. agentlab ssh ${argv.vmid} --wait --timeout 10m`,
      });
    }
    progress(`waiting: sandbox ${argv.vmid} ${why}`);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    sandbox = await ctx.call(sandboxShow, { vmid: argv.vmid, events: 0 });
  }
}

/** The jump host for this invocation: flags, else what `agentlab connect` saved for the endpoint in use. */
function jumpHostOf(argv: SshArgs): { jump?: JumpHost; endpointHost?: string } {
  const connection = connectionOf(argv);
  return resolveJumpHost({
    flags: { host: argv["jump-host"], user: argv["jump-user"] },
    endpoint: connection.kind === "remote" ? connection.endpoint : undefined,
    saved: connection.kind === "remote" ? loadSaved() : undefined,
    localUser: localUser(),
    vmid: argv.vmid,
  });
}

function localUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? "root";
  }
}

/** The key file --print names: one ssh would not find by itself (--identity, /etc/agentlab/keys). */
function printedIdentity(identities: Identity[]): string | undefined {
  for (const identity of identities) {
    if (identity.kind === "agent") return undefined;
    if (identity.source !== "~/.ssh") return identity.path;
    return undefined;
  }
  return undefined;
}

export const sshCommand: CommandModule<GlobalArgs, SshArgs> = {
  command: "ssh <vmid>",
  describe: "Open a shell in a sandbox over SSH (or run a command after --), checking its recorded host key",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .usage(
        "$0 ssh <vmid> [options] [-- command...]\n\nOpen a shell in a sandbox over SSH, or run a command in it",
      )
      .parserConfiguration({ "populate--": true, "boolean-negation": false })
      .positional("vmid", {
        type: "string",
        demandOption: true,
        coerce: vmidArg("<vmid>"),
        describe: "the sandbox's VMID",
      })
      .option("user", { type: "string", default: "agent", describe: "user to log in as in the sandbox" })
      .option("identity", {
        type: "string",
        describe:
          "private key to offer first (default: $AGENTLAB_SSH_IDENTITY); then ssh-agent's keys, /etc/agentlab/keys, ~/.ssh/id_ed25519, id_ecdsa, id_rsa",
      })
      .option("jump-host", {
        type: "string",
        describe:
          "reach the sandbox through this SSH host ([user@]host[:port]), e.g. the agentlab host on your tailnet",
      })
      .option("jump-user", {
        type: "string",
        describe: "user on the jump host (default: your local user name)",
      })
      .option("wait", {
        type: "boolean",
        default: false,
        describe: "wait (up to --timeout, default 3m) for the sandbox to come up and its port 22 to answer",
      })
      .option("no-start", {
        type: "boolean",
        default: false,
        describe: "do not start a STOPPED sandbox; fail instead",
      })
      .option("print", {
        type: "boolean",
        default: false,
        describe:
          "print the equivalent OpenSSH command line (with --json: its argv) and exit without connecting",
      })
      .example("$0 ssh 1012", "interactive shell as agent")
      .example("$0 ssh 1012 -- uname -a", "run a command; its exit status is agentlab's")
      .example(
        "$0 ssh 1012 --jump-host host.tailnet.ts.net --jump-user <user>",
        "from a device without a route to the sandboxes' subnet",
      )
      .example("$0 ssh 1012 --print", "the same as an ssh command line, for scp, rsync -e or an IDE")
      .epilogue(
        "The sandbox's SSH host keys are recorded when it boots (cloud-init phone-home) and its sshd must present one of them; a jump host's key must be in ~/.ssh/known_hosts (connect to it once with ssh). Saved --jump-host/--jump-user of agentlab connect apply when its endpoint is in use; flags win. The remote command's exit status is agentlab's; 255 when it ended without one. While the session is open the sandbox counts as in use, so idle stop leaves it running.",
      ) as unknown as Argv<SshArgs>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const command = (argv["--"] ?? []).map(String);
      if (argv.json && !argv.print) {
        throw new AgentlabError(
          "USAGE",
          "--json goes with --print only (a session's output is the remote side's)",
          {
            hint: `agentlab ssh ${argv.vmid} --print --json gives the ssh argv as JSON`,
          },
        );
      }
      const progress = (line: string) => {
        if (!argv.json) ctx.out.stderr(`• ${line}\n`);
      };
      const waitMs = argv.timeout !== undefined ? parseTimeout(argv.timeout) : DEFAULT_WAIT_MS;
      const started = Date.now();
      const { jump, endpointHost } = jumpHostOf(argv);
      const sandbox = await reachableSandbox(ctx, argv, started + waitMs, progress);
      const ip = sandbox.ip!;
      const keys = recordedHostKeys(sandbox);
      if (keys.length === 0) {
        throw new AgentlabError(
          "SSH_HOST_KEY_UNKNOWN",
          `sandbox ${argv.vmid} has no recorded SSH host keys, so its identity cannot be checked`,
          {
            hint: `they are recorded when the guest reports at the end of its first boot (cloud-init phone-home); a sandbox created before that, or whose template does not report, has none: create a new one (agentlab sandbox new)`,
            details: { vmid: argv.vmid, ip },
          },
        );
      }
      // ssh2 is loaded only by the command that uses it: every other command starts without it.
      const { collectIdentities } = await import("../ssh/identities.js");
      const identities = collectIdentities({ identity: argv.identity });
      if (argv.print) {
        // The session opens outside agentlab: this counts as one use, no more.
        (await keepInUse(ctx, argv.vmid))();
        const knownHostsFile = writeSandboxKnownHosts(argv.vmid, ip, keys);
        const line = opensshArgv({
          user: argv.user,
          host: ip,
          knownHostsFile,
          identityFile: printedIdentity(identities),
          jump,
          command: command.length > 0 ? command : undefined,
        });
        return {
          data: { argv: line, known_hosts_file: knownHostsFile, vmid: argv.vmid, ip },
          text: `${line.map(shellQuote).join(" ")}\n`,
        };
      }
      const { connectSandbox } = await import("../ssh/route.js");
      const { runSession } = await import("../ssh/session.js");
      const { client, close } = await connectSandbox({
        vmid: argv.vmid,
        ip,
        user: argv.user,
        keys,
        jump,
        identities,
        prompt: promptHidden,
        waitMs: argv.wait ? Math.max(0, started + waitMs - Date.now()) : undefined,
        jumpHostGuess: endpointHost,
        progress,
      });
      const release = await keepInUse(ctx, argv.vmid);
      try {
        const status = await runSession(client, command.length > 0 ? { command: command.join(" ") } : {});
        return { data: { exit_code: status }, text: "", printed: true, exitCode: status };
      } finally {
        release();
        close();
      }
    }),
};
