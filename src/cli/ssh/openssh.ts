/**
 * `agentlab ssh --print`: the OpenSSH command line that does what agentlab ssh would, with the sandbox's
 * recorded host keys in a known_hosts file of their own and StrictHostKeyChecking=yes, so the printed
 * line is as strict as agentlab ssh itself.
 */
import { chmodSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { type HostKey, keyLine } from "./host-keys.js";
import { knownHostsName } from "./known-hosts.js";

/** $XDG_CACHE_HOME/agentlab/ssh (else ~/.cache/agentlab/ssh): where the printed lines' files live. */
export function sshCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const base =
    env.XDG_CACHE_HOME && env.XDG_CACHE_HOME !== "" ? env.XDG_CACHE_HOME : join(homedir(), ".cache");
  return join(base, "agentlab", "ssh");
}

/** Writes (atomically, 0600) the known_hosts file holding a sandbox's recorded keys; returns its path. */
export function writeSandboxKnownHosts(
  vmid: number,
  host: string,
  keys: HostKey[],
  dir: string = sshCacheDir(),
): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `known_hosts-${vmid}`);
  const tmp = `${path}.tmp-${process.pid}`;
  const name = knownHostsName(host, 22);
  writeFileSync(tmp, keys.map((key) => `${name} ${keyLine(key)}\n`).join(""), { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

export interface PrintPlan {
  user: string;
  host: string;
  knownHostsFile: string;
  /** A key file ssh would not find by itself (--identity, /etc/agentlab/keys); ~/.ssh/id_* and the agent's keys need no flag. */
  identityFile?: string | undefined;
  jump?: { user: string; host: string; port: number } | undefined;
  command?: string[] | undefined;
}

/** POSIX shell quoting for one word, only when it needs it. */
export function shellQuote(word: string): string {
  if (word !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * The argv of the equivalent ssh command. A jump host is -J, unless there is a key file ssh would not
 * use by itself: ssh passes neither -i nor -o options to the jump's connection (ssh.c builds it as
 * `ssh -l user -p port -W [%h]:%p host`), so then the jump is a ProxyCommand carrying -i as well, as
 * agentlab ssh offers the same keys to both.
 */
export function opensshArgv(plan: PrintPlan): string[] {
  const argv = ["ssh"];
  if (plan.identityFile) argv.push("-i", plan.identityFile);
  argv.push("-o", `UserKnownHostsFile=${plan.knownHostsFile}`, "-o", "StrictHostKeyChecking=yes");
  if (plan.jump) {
    const { user, host, port } = plan.jump;
    if (plan.identityFile) {
      const inner = [
        "ssh",
        "-i",
        plan.identityFile,
        "-l",
        user,
        ...(port !== 22 ? ["-p", String(port)] : []),
      ];
      inner.push("-W", "[%h]:%p", host);
      argv.push("-o", `ProxyCommand=${inner.map(shellQuote).join(" ")}`);
    } else {
      argv.push("-J", `${user}@${host.includes(":") ? `[${host}]` : host}${port !== 22 ? `:${port}` : ""}`);
    }
  }
  argv.push(`${plan.user}@${plan.host}`);
  if (plan.command && plan.command.length > 0) argv.push("--", ...plan.command);
  return argv;
}
