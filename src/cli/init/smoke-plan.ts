/**
 * The pure half of `agentlab init --smoke-test`: option checks, the profile choice, the repository's
 * run.sh, the arguments of scripts/net/smoke_test.sh and the verdict on the finished job. No I/O here,
 * so the unit tests pin every rule without a daemon.
 */
import { isIPv4, isIPv6 } from "node:net";
import type { DaemonStatus } from "../../protocol/daemon.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { JobDetail } from "../../protocol/job.js";

export interface SmokeOptions {
  /** --smoke-profile: required when the daemon has more than one profile. */
  profile?: string | undefined;
  /** --smoke-exec: command prefix that runs a command inside the sandbox, with {ip} and {vmid}. */
  exec?: string | undefined;
  /** --smoke-net-arg: passed to smoke_test.sh verbatim, after the arguments init computes. */
  netArgs: string[];
  /** --smoke-timeout: seconds the job may take from job.run to a terminal status. */
  timeoutSeconds: number;
  /** --smoke-repo: a local repository to serve instead of the generated one. */
  repo?: string | undefined;
}

export const DEFAULT_SMOKE_TIMEOUT_SECONDS = 600;

/** The flags that only mean something with --smoke-test (yargs' names). */
export const SMOKE_ONLY_FLAGS = [
  "smoke-profile",
  "smoke-exec",
  "smoke-net-arg",
  "smoke-timeout",
  "smoke-repo",
] as const;

/** --smoke-timeout: whole seconds, at least 1. */
export function parseSmokeTimeout(text: string | number | undefined): number {
  if (text === undefined) return DEFAULT_SMOKE_TIMEOUT_SECONDS;
  const value =
    typeof text === "number" ? text : /^\d+$/.test(text.trim()) ? Number(text.trim()) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new AgentlabError("USAGE", `--smoke-timeout: expected whole seconds (at least 1), got "${text}"`, {
      hint: "for example --smoke-timeout 900 (the default is 600)",
    });
  }
  return value;
}

const PLACEHOLDER = /\{([^{}]*)\}/g;
const KNOWN_PLACEHOLDERS = new Set(["ip", "vmid"]);

/** --smoke-exec may use {ip} and {vmid}; anything else in braces is a typo caught before anything runs. */
export function checkExecTemplate(template: string): void {
  if (template.trim() === "") {
    throw new AgentlabError("USAGE", "--smoke-exec: the command prefix is empty", {
      hint: 'leave --smoke-exec out to use ssh agent@<ip>, or give a prefix such as --smoke-exec "ip netns exec sb{vmid}"',
    });
  }
  for (const match of template.matchAll(PLACEHOLDER)) {
    if (!KNOWN_PLACEHOLDERS.has(match[1] ?? "")) {
      throw new AgentlabError("USAGE", `--smoke-exec: unknown placeholder ${match[0]}`, {
        hint: "the prefix may use {ip} (the sandbox's address) and {vmid} (its VMID)",
      });
    }
  }
}

/** The --exec prefix for this sandbox. smoke_test.sh splits it on spaces, so values stay single words. */
export function substituteExec(template: string, sandbox: { ip: string; vmid: number }): string {
  return template.replace(PLACEHOLDER, (whole, name: string) =>
    name === "ip" ? sandbox.ip : name === "vmid" ? String(sandbox.vmid) : whole,
  );
}

/** Where guests reach this host: the guest listener's address (the bridge address on a real host). */
export interface GuestEndpoint {
  host: string;
  port: number;
}

function isWildcard(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "";
}

/**
 * The host address the sandbox reaches (for the repo server and the gateway of the network check) and
 * the guest listener's port. A listener bound to every interface says nothing about which address guests
 * use; the bridge address is the one they are given as their gateway.
 */
export function guestEndpoint(
  listener: DaemonStatus["guest_listener"],
  bridgeAddress: string,
): GuestEndpoint | { error: string; hint: string } {
  if (!listener.listening || !listener.url) {
    return {
      error: `the daemon's guest listener (${listener.address}) is not listening${listener.error ? `: ${listener.error}` : ""}; a job's runner cannot fetch its job`,
      hint:
        listener.hint ??
        "agentlab status shows the guest listener; fix bootstrap_listen, then systemctl restart agentlabd",
    };
  }
  const url = new URL(listener.url);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = Number(url.port || 80);
  const bridgeHost = bridgeAddress.split("/")[0] ?? "";
  return { host: isWildcard(host) ? bridgeHost : host, port };
}

/** host:port for URLs (IPv6 in brackets). */
export function urlHost(host: string): string {
  return isIPv6(host) ? `[${host}]` : host;
}

/**
 * The profile the job runs with: the one asked for (it must exist), or the only one loaded. With several
 * profiles and none asked for, the operator chooses: the smoke test is meant for a clean profile.
 */
export function chooseProfile(
  loaded: readonly string[],
  requested: string | undefined,
): { profile: string } | { error: string; hint: string } {
  const names = [...loaded].sort();
  const list = names.join(", ");
  if (requested !== undefined) {
    if (names.includes(requested)) return { profile: requested };
    return {
      error:
        names.length === 0
          ? `unknown profile "${requested}": the daemon has no profiles`
          : `unknown profile "${requested}"`,
      hint:
        names.length === 0
          ? "add a profile to profiles_dir, then systemctl restart agentlabd (agentlab profile list)"
          : `choose one of: ${list} (--smoke-profile NAME)`,
    };
  }
  if (names.length === 1) return { profile: names[0]! };
  if (names.length === 0) {
    return {
      error: "the daemon has no profiles: a job needs one",
      hint: "add a profile to profiles_dir, then systemctl restart agentlabd (agentlab profile list)",
    };
  }
  return {
    error: `the daemon has ${names.length} profiles; say which one the smoke test uses`,
    hint: `add --smoke-profile NAME, one of: ${list}`,
  };
}

/** The generated repository's .agentlab/run.sh: it proves it ran by printing the marker and leaving a file. */
export function smokeRunScript(marker: string): string {
  return [
    "#!/bin/sh",
    "# Written by agentlab init --smoke-test: the runner runs this file as the job's agent.",
    "set -eu",
    `echo "agentlab smoke marker: ${marker}"`,
    `echo "${marker}" > agentlab-smoke.txt`,
    'echo "wrote $(pwd)/agentlab-smoke.txt"',
    "",
  ].join("\n");
}

/** The job's task text (the runner hands it to the agent on stdin and as AGENTLAB_TASK). */
export function smokeTask(marker: string | undefined): string {
  const what = "agentlab init --smoke-test: run .agentlab/run.sh";
  return marker ? `${what}, which prints ${marker}` : what;
}

/**
 * Minutes of the job's ttl: the whole smoke timeout plus 5 minutes for the network check and the destroy.
 * The ttl also bounds the sandbox's life, so a smoke test killed with SIGKILL leaves nothing for long.
 */
export function smokeTtlMinutes(timeoutSeconds: number): number {
  return Math.ceil(timeoutSeconds / 60) + 5;
}

/** Arguments of smoke_test.sh: ours first, the operator's --smoke-net-arg after (the script's last value wins). */
export function smokeTestArgs(input: {
  ip: string;
  vmid: number;
  gateway: GuestEndpoint;
  bridge: string;
  exec?: string | undefined;
  netArgs: readonly string[];
}): string[] {
  const args = ["--ip", input.ip];
  if (isIPv4(input.gateway.host)) args.push("--gateway", input.gateway.host);
  args.push("--bootstrap-port", String(input.gateway.port), "--bridge", input.bridge);
  if (input.exec !== undefined) args.push("--exec", substituteExec(input.exec, input));
  args.push(...input.netArgs);
  return args;
}

/** What the runner reports in result.result (contract §3). */
interface RunnerResult {
  exit_code?: number | null;
  commit?: string | null;
  output_tail?: string;
}

export interface JobVerdict {
  ok: boolean;
  detail: string;
  hint?: string;
  /** The last lines of the agent's output, shown under a failure. */
  tail?: string[];
}

function lastLines(text: string | undefined, count: number): string[] {
  if (!text) return [];
  return text.trimEnd().split("\n").slice(-count);
}

/**
 * Did the job do what the smoke test asked: COMPLETED, on the served commit, and (for the generated
 * repository) with the marker in the agent's output?
 */
export function judgeJob(
  job: JobDetail,
  expected: { commit: string; marker?: string | undefined },
): JobVerdict {
  // The sandbox is destroyed after this; the job's record (and the daemon's log) is what stays.
  const hint = `agentlab job show ${job.id}; journalctl -u agentlabd -f`;
  const result = (job.result?.result ?? {}) as RunnerResult;
  const tail = lastLines(result.output_tail, 5);
  if (job.status !== "COMPLETED") {
    const why = job.result?.message ?? job.failure_reason ?? "no reason reported";
    const exit = typeof result.exit_code === "number" ? ` (exit ${result.exit_code})` : "";
    return { ok: false, detail: `${job.id} ended ${job.status}: ${why}${exit}`, hint, tail };
  }
  if (result.commit !== expected.commit) {
    return {
      ok: false,
      detail: `${job.id} ran commit ${result.commit ?? "(none reported)"}, the served repository's HEAD is ${expected.commit}`,
      hint,
      tail,
    };
  }
  if (expected.marker !== undefined && !(result.output_tail ?? "").includes(expected.marker)) {
    return {
      ok: false,
      detail: `${job.id} COMPLETED but its output lacks the marker ${expected.marker}: .agentlab/run.sh did not run`,
      hint: `${hint}; an AGENTLAB_AGENT_COMMAND in the guest's /etc/agentlab/agent-runner.env replaces run.sh`,
      tail,
    };
  }
  return {
    ok: true,
    detail: `${job.id} COMPLETED on ${expected.commit.slice(0, 12)}${expected.marker ? ", marker found in its output" : ""}`,
  };
}
