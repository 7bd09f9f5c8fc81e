import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { dump } from "js-yaml";
import { WORKSPACE_FILES, WORKSPACE_FIRST_BOOT_SCRIPT } from "./workspace-units.js";

export interface UserDataInput {
  vmid: number;
  hostname: string;
  sshPublicKey?: string;
  /** agentlabd's own key (sandbox exec, sandbox cp): authorized for `agent` next to sshPublicKey. */
  daemonPublicKey?: string;
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
/** The guest agent, as `package:program`: the daemon asks it for the address and live status. */
const AGENT_PACKAGES = ["qemu-guest-agent:qemu-ga"];
/** What the runner needs besides a shell and coreutils, as `package:program`. */
const RUNNER_PACKAGES = ["git:git", "curl:curl", "jq:jq"];

/**
 * POSIX sh, run as `sh -c ENSURE_PACKAGES_SCRIPT agentlab-packages package:program...`: installs the
 * packages whose program the template lacks, and nothing when it has them all. Not cloud-init's
 * `packages`: that runs `apt-get update` first even when every package is installed, which took 91 s
 * of a 268 s first boot in a real guest without a reachable mirror (test/pvesim/README.md, "Real guests:
 * the image"). A template built per the docs has the packages; one without them still gets them at
 * first boot when it can reach a mirror.
 */
export const ENSURE_PACKAGES_SCRIPT = `missing=""
for spec in "$@"; do
  command -v "\${spec#*:}" >/dev/null 2>&1 || missing="$missing \${spec%%:*}"
done
[ -n "$missing" ] || exit 0
echo "agentlab: installing$missing (missing from the template)"
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q $missing
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y $missing
else
  echo "agentlab: no apt-get or dnf to install$missing: add them to the template" >&2
  exit 1
fi
`;

/** Start the guest agent only when the template's udev rule has not (enable reloads systemd: seconds). */
export const GUEST_AGENT_START_SCRIPT =
  "systemctl is-active --quiet qemu-guest-agent || systemctl enable --now qemu-guest-agent";

/**
 * POSIX sh, run as `report-ready URL BODY [KEYDIR]`: add the guest's SSH host keys to BODY (a JSON
 * object) and POST it until the daemon answers, 1 s doubling to 30 s between 10 attempts. A definite
 * refusal (400, 403, 404, 405) ends it at once; nothing it does can fail the boot, because the daemon
 * also asks the guest agent.
 *
 * The keys exist only once the guest has booted (cloud-init's ssh module makes them, before runcmd), so
 * the script reads them from KEYDIR (default /etc/ssh) at report time. Only a key's type and base64
 * blob are sent, each checked against their character sets first: what goes between the JSON quotes
 * then never needs escaping, and a comment (free text) never reaches the JSON at all.
 */
export const REPORT_READY_SCRIPT = `#!/bin/sh
# agentlab: tell agentlabd this guest has booted (see ${BOOTSTRAP_JSON_PATH}).
url="$1"
body="$2"
keydir="\${3:-/etc/ssh}"
command -v curl >/dev/null 2>&1 || exit 0
keys=""
for f in "$keydir"/ssh_host_*_key.pub; do
  [ -r "$f" ] || continue
  type=""
  blob=""
  read -r type blob _ < "$f" || [ -n "$blob" ] || continue
  case "$type" in ""|*[!A-Za-z0-9@.-]*) continue ;; esac
  case "$blob" in ""|*[!A-Za-z0-9+/=]*) continue ;; esac
  keys="$keys\${keys:+,}\\"$type $blob\\""
done
[ -n "$keys" ] && body="\${body%"}"},\\"host_keys\\":[$keys]}"
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
 * guest agent the daemon asks for the address (installed only if the template lacks it), the workspace
 * at /work whenever one is attached (formatted first if blank), and, with `bootstrap`, the phone-home
 * that tells the daemon the guest is up. Rendered as YAML from an object, so a key or name can never
 * break the document.
 */
export function renderUserData(input: UserDataInput): string {
  const user: Record<string, unknown> = {
    name: "agent",
    shell: "/bin/bash",
    groups: ["sudo"],
    sudo: "ALL=(ALL) NOPASSWD:ALL",
    lock_passwd: true,
  };
  const keys = [input.sshPublicKey, input.daemonPublicKey].filter((key): key is string => Boolean(key));
  if (keys.length > 0) user.ssh_authorized_keys = keys;
  if (input.job && !input.bootstrap) {
    throw new Error("a job sandbox needs the bootstrap controller URL: render it with bootstrap too");
  }
  const writeFiles: Array<Record<string, unknown>> = WORKSPACE_FILES.map((file) => ({
    path: file.path,
    content: file.content,
    owner: "root:root",
    permissions: file.permissions,
  }));
  const packages = input.job ? [...AGENT_PACKAGES, ...RUNNER_PACKAGES] : AGENT_PACKAGES;
  // runcmd runs in this order, after users and write_files, so the units can name `agent`.
  const runcmd: unknown[] = [
    ["sh", "-c", ENSURE_PACKAGES_SCRIPT, "agentlab-packages", ...packages],
    ["sh", "-c", GUEST_AGENT_START_SCRIPT],
    ["sh", "-c", WORKSPACE_FIRST_BOOT_SCRIPT],
  ];
  const config: Record<string, unknown> = {
    hostname: input.hostname,
    manage_etc_hosts: true,
    users: ["default", user],
    write_files: writeFiles,
    runcmd,
  };
  if (input.bootstrap) {
    const { token, controllerUrl } = input.bootstrap;
    const bootstrapJson: Record<string, unknown> = { token, controller: controllerUrl, vmid: input.vmid };
    if (input.job) bootstrapJson.job_token = input.job.token;
    writeFiles.push(
      {
        path: BOOTSTRAP_JSON_PATH,
        content: `${JSON.stringify(bootstrapJson)}\n`,
        owner: "agent:agent",
        permissions: "0600",
        // write_files runs before the users module; deferred, it runs after `agent` exists.
        defer: true,
      },
      { path: REPORT_READY_PATH, content: REPORT_READY_SCRIPT, owner: "root:root", permissions: "0755" },
    );
    // Values travel as arguments, never through shell parsing. nohup + & so that a daemon that is
    // down does not hold up the end of cloud-init for the minutes of retries.
    runcmd.push([
      "sh",
      "-c",
      `nohup ${REPORT_READY_PATH} "$1" "$2" >/dev/null 2>&1 &`,
      "agentlab-report-ready",
      readyReportUrl(controllerUrl),
      JSON.stringify({ vmid: input.vmid, token }),
    ]);
  }
  if (input.job) {
    writeFiles.push({
      path: AGENT_RUNNER_PATH,
      content: input.job.runnerScript,
      owner: "root:root",
      permissions: "0755",
    });
    // A transient unit as the agent user: it outlives cloud-init, its output is in the journal
    // (journalctl -u agentlab-runner), and it starts after the package and workspace steps above.
    runcmd.push([
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
