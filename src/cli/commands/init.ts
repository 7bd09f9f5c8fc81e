import { type Stats, statSync } from "node:fs";
import path from "node:path";
import type { Argv, CommandModule } from "yargs";
import { hostSettings } from "../../config/host-settings.js";
import { groupId, SOCKET_GROUP } from "../../config/socket-group.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonChecks, InitCheck } from "../../protocol/init.js";
import { daemonChecks } from "../../protocol/wire.js";
import { type CommandContext, execute, type GlobalArgs, parseTimeout } from "../context.js";
import {
  type HostEnv,
  type HostSettings,
  hostChecks,
  hostEnvFromProcess,
  nftArgs,
  setupArgs,
  unscriptableSettings,
} from "../init/host-checks.js";
import { runSmokeTest, type SmokeReport } from "../init/smoke.js";
import {
  checkExecTemplate,
  parseSmokeTimeout,
  SMOKE_ONLY_FLAGS,
  type SmokeOptions,
} from "../init/smoke-plan.js";
import { runCommand } from "../init/spawn.js";
import { asAgentlabError } from "../render.js";

interface InitArgs extends GlobalArgs {
  apply: boolean;
  force: boolean;
  "smoke-test": boolean;
  "smoke-profile"?: string;
  "smoke-exec"?: string;
  "smoke-net-arg"?: string | string[];
  "smoke-timeout"?: string;
  "smoke-repo"?: string;
}

export interface AppliedStep {
  step: "setup_vmbr1" | "apply_nftables";
  command: string;
  exit_code: number;
}

export interface InitReport {
  checks: InitCheck[];
  ok: boolean;
  applied?: AppliedStep[];
  /** With --smoke-test: each step of the end-to-end run. */
  smoke?: SmokeReport;
}

/** The --smoke-* flags as SmokeOptions; a bad value is a usage error before anything is created. */
export function smokeOptions(argv: Omit<InitArgs, keyof GlobalArgs>): SmokeOptions {
  const netArgs = argv["smoke-net-arg"] === undefined ? [] : [argv["smoke-net-arg"]].flat().map(String);
  if (netArgs.some((arg) => arg === "")) {
    throw new AgentlabError("USAGE", "--smoke-net-arg: an empty argument", {
      hint: "give each smoke_test.sh argument with =, e.g. --smoke-net-arg=--no-dns --smoke-net-arg=--egress --smoke-net-arg=203.0.113.2:443",
    });
  }
  if (argv["smoke-exec"] !== undefined) checkExecTemplate(argv["smoke-exec"]);
  return {
    profile: argv["smoke-profile"],
    exec: argv["smoke-exec"],
    netArgs,
    timeoutSeconds: parseSmokeTimeout(argv["smoke-timeout"]),
    repo: argv["smoke-repo"],
  };
}

/** The checks --apply can fix by running scripts/net; everything else only gets its fix printed. */
const SETUP_CHECKS = new Set(["ip_forward"]);

/**
 * Settings for the host checks when the daemon cannot say: its config file, else the defaults. The
 * config loader (zod schemas) is imported only on this path, so `init` does not pay for it to start.
 */
async function settingsWithoutDaemon(): Promise<HostSettings> {
  const { configPathFromEnv, loadConfig, parseConfig } = await import("../../config/config.js");
  try {
    return hostSettings(loadConfig(configPathFromEnv()).config);
  } catch {
    return hostSettings(parseConfig("", path.resolve("config.yaml")).config);
  }
}

/** Socket exists, mode 0660, group agentlab, and the daemon answered (the call's failure otherwise). */
export function socketCheck(
  socketPath: string,
  failure: AgentlabError | undefined,
  stat: (file: string) => Stats = statSync,
  agentlabGid: number | undefined = groupId(SOCKET_GROUP),
): InitCheck {
  if (failure?.code === "DAEMON_UNREACHABLE") {
    return { name: "socket", status: "fail", detail: failure.message, fix: "systemctl start agentlabd" };
  }
  if (failure?.code === "SOCKET_PERMISSION") {
    return { name: "socket", status: "fail", detail: failure.message, fix: failure.hint };
  }
  let info: Stats;
  try {
    info = stat(socketPath);
  } catch (error) {
    return {
      name: "socket",
      status: "fail",
      detail: `cannot stat ${socketPath}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      fix: "systemctl restart agentlabd",
    };
  }
  const mode = info.mode & 0o777;
  const problems: string[] = [];
  let fix: string | undefined;
  if (mode !== 0o660) {
    problems.push(`mode ${mode.toString(8).padStart(4, "0")}, expected 0660`);
    fix = "systemctl restart agentlabd";
  }
  if (agentlabGid === undefined) {
    problems.push(`group ${SOCKET_GROUP} does not exist`);
    fix = `groupadd --system ${SOCKET_GROUP} && systemctl restart agentlabd`;
  } else if (info.gid !== agentlabGid) {
    problems.push(`group ${info.gid}, expected ${SOCKET_GROUP}`);
    fix = "systemctl restart agentlabd";
  }
  if (problems.length > 0) {
    return {
      name: "socket",
      status: "warn",
      detail: `${socketPath}: ${problems.join("; ")}`,
      ...(fix ? { fix } : {}),
    };
  }
  return {
    name: "socket",
    status: "ok",
    detail: `${socketPath}: 0660, group ${SOCKET_GROUP}, daemon answers`,
  };
}

/** Every check: the host's (here), the socket's, then the daemon's when it answers. */
export async function runChecks(
  ctx: CommandContext,
  host: HostEnv,
): Promise<{ checks: InitCheck[]; settings: HostSettings }> {
  let daemon: DaemonChecks | undefined;
  let failure: AgentlabError | undefined;
  try {
    daemon = await ctx.call(daemonChecks, {});
  } catch (error) {
    failure = asAgentlabError(error);
  }
  const settings = daemon?.host ?? (await settingsWithoutDaemon());
  const checks = await hostChecks(host, settings);
  const socketFailure =
    failure && (failure.code === "DAEMON_UNREACHABLE" || failure.code === "SOCKET_PERMISSION");
  checks.push(socketCheck(ctx.args.socket, socketFailure ? failure : undefined));
  if (failure && !socketFailure) {
    checks.push({ name: "daemon", status: "fail", detail: failure.message, fix: failure.hint });
  }
  if (daemon) checks.push(...daemon.checks);
  return { checks, settings };
}

export function checksText(checks: readonly InitCheck[]): string {
  const width = Math.max(...checks.map((c) => c.name.length));
  const lines: string[] = [];
  for (const check of checks) {
    lines.push(`${check.status.padEnd(4)}  ${check.name.padEnd(width)}  ${check.detail}`);
    if (check.status !== "ok" && check.fix) lines.push(`      fix: ${check.fix}`);
  }
  const count = (status: InitCheck["status"]) => checks.filter((c) => c.status === status).length;
  lines.push(`${count("ok")} ok, ${count("warn")} warn, ${count("fail")} fail`);
  return `${lines.join("\n")}\n`;
}

/** --apply needs root, except against a temp root (AGENTLAB_ROOT), as the scripts themselves allow. */
export function requireRoot(host: HostEnv, uid: number | undefined = process.getuid?.()): void {
  if (uid === 0 || host.root !== "/") return;
  throw new AgentlabError("ROOT_REQUIRED", "agentlab init --apply must run as root", {
    hint: "run it with sudo: sudo agentlab init --apply (without --apply it only checks)",
  });
}

async function runScript(script: string, args: string[], json: boolean): Promise<number> {
  // Under --json the scripts' narration goes to stderr, so stdout stays one JSON document.
  return (await runCommand("sh", [script, ...args], { output: json ? 2 : 1 })).code;
}

/** Run the network scripts for the failing bridge/ip_forward/nftables checks. */
export async function applyFixes(
  checks: readonly InitCheck[],
  settings: HostSettings,
  host: HostEnv,
  force: boolean,
  json: boolean,
  run: (script: string, args: string[], json: boolean) => Promise<number> = runScript,
): Promise<AppliedStep[]> {
  const failing = (name: string) => checks.some((c) => c.name === name && c.status !== "ok");
  const steps: AppliedStep[] = [];
  const problems = unscriptableSettings(settings);
  if (
    problems.length > 0 &&
    (failing(`bridge_${settings.bridge}`) || [...SETUP_CHECKS].some(failing) || failing("nftables"))
  ) {
    throw new AgentlabError(
      "USAGE",
      `init --apply: the config's network settings cannot be applied: ${problems.join("; ")}`,
      {
        hint: "set bootstrap_listen: 10.77.0.1:8844 and agent_subnet: 10.77.0.0/16 in config.yaml (or your bridge's address and subnet), restart agentlabd, then run agentlab init --apply again; nothing was changed",
      },
    );
  }
  const forceArg = force ? ["--force"] : [];
  if (failing(`bridge_${settings.bridge}`) || [...SETUP_CHECKS].some(failing)) {
    const script = path.join(host.scriptsDir, "setup_vmbr1.sh");
    const args = ["--apply", ...forceArg, ...setupArgs(settings)];
    steps.push({
      step: "setup_vmbr1",
      command: [script, ...args].join(" "),
      exit_code: await run(script, args, json),
    });
  }
  if (failing("nftables")) {
    const script = path.join(host.scriptsDir, "apply.sh");
    const args = ["--apply", ...forceArg, ...nftArgs(settings)];
    steps.push({
      step: "apply_nftables",
      command: [script, ...args].join(" "),
      exit_code: await run(script, args, json),
    });
  }
  return steps;
}

export const initCommand: CommandModule<GlobalArgs, InitArgs> = {
  command: "init",
  describe:
    "Check that this host is ready for sandboxes (bridge, nftables, ip_forward, disk, socket, profiles, templates, snippets, backend, token privileges, database) and print the fix for each problem",
  builder: (yargs: Argv<GlobalArgs>) =>
    yargs
      .option("apply", {
        type: "boolean",
        default: false,
        describe:
          "as root: run scripts/net/setup_vmbr1.sh and apply.sh for failing bridge/ip_forward/nftables checks, then check again (Proxmox storage and templates are never changed)",
      })
      .option("force", {
        type: "boolean",
        default: false,
        describe: "with --apply: let the scripts overwrite managed network files that differ",
      })
      .option("smoke-test", {
        type: "boolean",
        default: false,
        describe:
          "after the checks: create a sandbox through a tiny job served from a temporary local repository, run scripts/net/smoke_test.sh inside it, destroy it; prints each step (root, when the nftables ruleset is loaded: a temporary rule lets the sandbox reach the repo server)",
      })
      .option("smoke-profile", {
        type: "string",
        describe:
          "with --smoke-test: the profile of the job's sandbox (required when the daemon has several)",
      })
      .option("smoke-exec", {
        type: "string",
        describe:
          'with --smoke-test: command prefix that runs the network probes inside the sandbox, {ip} and {vmid} replaced (default: ssh agent@<ip>), e.g. "ip netns exec sb{vmid}"',
      })
      .option("smoke-net-arg", {
        type: "string",
        describe:
          "with --smoke-test: one more argument for scripts/net/smoke_test.sh, passed verbatim (repeatable; write it with =, e.g. --smoke-net-arg=--no-dns)",
      })
      .option("smoke-timeout", {
        type: "string",
        describe: "with --smoke-test: seconds the job may take to finish (default 600)",
      })
      .option("smoke-repo", {
        type: "string",
        describe:
          "with --smoke-test: serve this local git repository (its checked-out branch) instead of a generated one; its job must complete on its HEAD",
      })
      .check((args) => {
        if (args.force && !args.apply) {
          throw new AgentlabError("USAGE", "--force only makes sense with --apply", {
            hint: "sudo agentlab init --apply --force",
          });
        }
        const stray = SMOKE_ONLY_FLAGS.find((flag) => args[flag] !== undefined);
        if (stray && !args["smoke-test"]) {
          throw new AgentlabError("USAGE", `--${stray} only makes sense with --smoke-test`, {
            hint: `agentlab init --smoke-test --${stray} ...`,
          });
        }
        if (args["smoke-test"]) smokeOptions(args as unknown as InitArgs);
        return true;
      }) as unknown as Argv<InitArgs>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const host = hostEnvFromProcess();
      if (argv.apply) requireRoot(host);
      const first = await runChecks(ctx, host);
      let checks = first.checks;
      let applied: AppliedStep[] | undefined;
      let prefix = "";
      if (argv.apply) {
        applied = await applyFixes(checks, first.settings, host, argv.force, argv.json);
        if (applied.length === 0)
          prefix = "nothing to apply: the bridge, ip_forward and nftables checks pass\n";
        else {
          // A script that failed did not apply anything: say so, not "applied ... (exit 1)".
          prefix = `${applied.map((s) => `${s.exit_code === 0 ? "applied" : "FAILED "}  ${s.step}  ${s.command}  (exit ${s.exit_code})`).join("\n")}\n`;
          checks = (await runChecks(ctx, host)).checks;
        }
      }
      const checksOk = checks.every((c) => c.status !== "fail");
      if (!argv["smoke-test"]) {
        const report: InitReport = { checks, ok: checksOk, ...(applied ? { applied } : {}) };
        return { data: report, text: prefix + checksText(checks), exitCode: checksOk ? 0 : 1 };
      }
      // The checks first, shown before the smoke test starts printing its steps.
      if (!argv.json) ctx.out.stdout(prefix + checksText(checks));
      const smoke = await runSmokeTest({
        socket: argv.socket,
        rpcTimeoutMs: argv.timeout === undefined ? undefined : parseTimeout(argv.timeout),
        json: argv.json,
        out: ctx.out,
        host,
        settings: first.settings,
        options: smokeOptions(argv),
      });
      const ok = checksOk && smoke.ok;
      const report: InitReport = { checks, ok, ...(applied ? { applied } : {}), smoke };
      return { data: report, text: "", printed: !argv.json, exitCode: smoke.interrupted ? 130 : ok ? 0 : 1 };
    }),
};
