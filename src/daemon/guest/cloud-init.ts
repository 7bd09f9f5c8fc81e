import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { dump } from "js-yaml";

export interface UserDataInput {
  vmid: number;
  hostname: string;
  sshPublicKey?: string;
  /** The phone-home: the guest reports to `<controllerUrl>/v1/guest/ready` with this token once booted. */
  bootstrap?: { token: string; controllerUrl: string };
  /**
   * A job sandbox: the runner (scripts/guest/agent-runner.sh) is installed and started, and fetches its
   * job from the controller with this second, single-use token (docs/jobs.md). Needs `bootstrap`.
   */
  job?: { token: string; runnerScript: string };
}

/** Where the guest finds its token and the daemon's address (spec §7.1: owner agent, mode 0600). */
export const BOOTSTRAP_JSON_PATH = "/etc/agentlab/bootstrap.json";
/** The guest-side script that sends the ready report. */
export const REPORT_READY_PATH = "/usr/local/lib/agentlab/report-ready";
/** Where a job sandbox's runner is installed. */
export const AGENT_RUNNER_PATH = "/usr/local/lib/agentlab/agent-runner";
/** What the runner needs besides a shell and coreutils. */
const RUNNER_PACKAGES = ["git", "curl", "jq"];

/**
 * POSIX sh, run as `report-ready URL BODY`: POST the body until the daemon answers, 1 s doubling to 30 s
 * between 10 attempts. A definite refusal (400, 403, 404, 405) ends it at once; nothing it does can fail
 * the boot, because the daemon also asks the guest agent.
 */
export const REPORT_READY_SCRIPT = `#!/bin/sh
# agentlab: tell agentlabd this guest has booted (see ${BOOTSTRAP_JSON_PATH}).
url="$1"
body="$2"
command -v curl >/dev/null 2>&1 || exit 0
delay=1
attempt=1
while [ "$attempt" -le 10 ]; do
  code=$(curl -sS -o /dev/null -w '%{http_code}' --connect-timeout 5 --max-time 15 -H 'Content-Type: application/json' --data-binary "$body" "$url" 2>/dev/null)
  case "$code" in
    2??|400|403|404|405) exit 0 ;;
  esac
  sleep "$delay"
  delay=$((delay * 2))
  [ "$delay" -gt 30 ] && delay=30
  attempt=$((attempt + 1))
done
exit 0
`;

/** The URL of the ready report under a controller URL (which may carry a path prefix). */
export function readyReportUrl(controllerUrl: string): string {
  return `${controllerUrl.replace(/\/+$/, "")}/v1/guest/ready`;
}

/**
 * The cloud-init user-data a sandbox boots with: the `agent` user (with the configured SSH key), the
 * guest agent the daemon asks for the address, and, with `bootstrap`, the phone-home that tells the
 * daemon the guest is up. Rendered as YAML from an object, so a key or name can never break the document.
 */
export function renderUserData(input: UserDataInput): string {
  const user: Record<string, unknown> = {
    name: "agent",
    shell: "/bin/bash",
    groups: ["sudo"],
    sudo: "ALL=(ALL) NOPASSWD:ALL",
    lock_passwd: true,
  };
  if (input.sshPublicKey) user.ssh_authorized_keys = [input.sshPublicKey];
  const config: Record<string, unknown> = {
    hostname: input.hostname,
    manage_etc_hosts: true,
    users: ["default", user],
    package_update: false,
    packages: ["qemu-guest-agent"],
    runcmd: [["systemctl", "enable", "--now", "qemu-guest-agent"]],
  };
  if (input.job && !input.bootstrap) {
    throw new Error("a job sandbox needs the bootstrap controller URL: render it with bootstrap too");
  }
  if (input.bootstrap) {
    const { token, controllerUrl } = input.bootstrap;
    const bootstrapJson: Record<string, unknown> = { token, controller: controllerUrl, vmid: input.vmid };
    if (input.job) bootstrapJson.job_token = input.job.token;
    config.write_files = [
      {
        path: BOOTSTRAP_JSON_PATH,
        content: `${JSON.stringify(bootstrapJson)}\n`,
        owner: "agent:agent",
        permissions: "0600",
        // write_files runs before the users module; deferred, it runs after `agent` exists.
        defer: true,
      },
      { path: REPORT_READY_PATH, content: REPORT_READY_SCRIPT, owner: "root:root", permissions: "0755" },
    ];
    // Values travel as arguments, never through shell parsing. nohup + & so that a daemon that is
    // down does not hold up the end of cloud-init for the minutes of retries.
    (config.runcmd as unknown[]).push([
      "sh",
      "-c",
      `nohup ${REPORT_READY_PATH} "$1" "$2" >/dev/null 2>&1 &`,
      "agentlab-report-ready",
      readyReportUrl(controllerUrl),
      JSON.stringify({ vmid: input.vmid, token }),
    ]);
  }
  if (input.job) {
    (config.packages as string[]).push(...RUNNER_PACKAGES);
    (config.write_files as unknown[]).push({
      path: AGENT_RUNNER_PATH,
      content: input.job.runnerScript,
      owner: "root:root",
      permissions: "0755",
    });
    // A transient unit as the agent user: it outlives cloud-init, its output is in the journal
    // (journalctl -u agentlab-runner), and runcmd runs after packages are installed.
    (config.runcmd as unknown[]).push([
      "systemd-run",
      "--unit=agentlab-runner",
      "--uid=agent",
      "--gid=agent",
      "--setenv=HOME=/home/agent",
      "--property=WorkingDirectory=/home/agent",
      // /run/agentlab for the runner's secrets and log: /run is root's, the runner is not.
      "--property=RuntimeDirectory=agentlab",
      "--property=RuntimeDirectoryMode=0700",
      AGENT_RUNNER_PATH,
    ]);
  }
  return `#cloud-config\n# agentlab sandbox ${input.vmid}\n${dump(config, { lineWidth: -1 })}`;
}

/**
 * Write the snippet as `agentlab-<vmid>-<16 hex>.yaml`, mode 0600, never over an existing file.
 * Returns the file name (for cicustom) and its full path (stored on the row for cleanup).
 */
export function writeSnippet(dir: string, vmid: number, content: string): { file: string; path: string } {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  for (let attempt = 0; attempt < 5; attempt++) {
    const file = `agentlab-${vmid}-${randomBytes(8).toString("hex")}.yaml`;
    const path = join(dir, file);
    let fd: number;
    try {
      fd = openSync(path, "wx", 0o600);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw error;
    }
    try {
      writeSync(fd, content);
    } finally {
      closeSync(fd);
    }
    return { file, path };
  }
  throw new Error(`could not create a unique snippet file in ${dir}`);
}

export function removeSnippet(path: string | null): void {
  if (path) rmSync(path, { force: true });
}
