import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { dump } from "js-yaml";

export interface UserDataInput {
  vmid: number;
  hostname: string;
  sshPublicKey?: string;
}

/**
 * The cloud-init user-data a sandbox boots with: the `agent` user (with the configured SSH key), the
 * guest agent the daemon asks for the address, and nothing else. Rendered as YAML from an object, so
 * a key or name can never break the document.
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
  const config = {
    hostname: input.hostname,
    manage_etc_hosts: true,
    users: ["default", user],
    package_update: false,
    packages: ["qemu-guest-agent"],
    runcmd: [["systemctl", "enable", "--now", "qemu-guest-agent"]],
  };
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
