/**
 * ~/.config/agentlab/client.json ($XDG_CONFIG_HOME respected), written by `agentlab connect`: the
 * endpoint, its token, the pinned certificate, and the jump host/user that `agentlab ssh` will use.
 * It holds a secret: the directory is 0700 and the file 0600, written atomically.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { z } from "zod";
import { AgentlabError } from "../../protocol/errors.js";

export const SavedConnection = z.object({
  endpoint: z.string(),
  token: z.string(),
  /** SHA-256 fingerprint of the certificate seen at connect, "AB:CD:...". */
  fingerprint: z.string(),
  /**
   * pin: trust exactly this certificate (self-signed ones, or any given with --fingerprint); ca: the
   * system's CAs vouched for it and the host name, so it is checked that way again and may be renewed
   * (Let's Encrypt certificates of `tailscale serve` change every few weeks).
   */
  trust: z.enum(["pin", "ca"]),
  /** The pinned certificate (PEM), so a self-signed one can be trusted exactly and nothing else. */
  certificate: z.string(),
  jump_host: z.string().optional(),
  jump_user: z.string().optional(),
  saved_at: z.string(),
});
export type SavedConnection = z.infer<typeof SavedConnection>;

export function clientConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const base =
    env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME !== "" ? env.XDG_CONFIG_HOME : join(homedir(), ".config");
  return join(base, "agentlab", "client.json");
}

export function loadSaved(path: string = clientConfigPath()): SavedConnection | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new AgentlabError("USAGE", `cannot read ${path}: ${(error as Error).message}`, {
      hint: `fix its permissions, or remove it with agentlab disconnect`,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const checked = SavedConnection.safeParse(parsed);
  if (!checked.success) {
    throw new AgentlabError("USAGE", `${path} is not a connection saved by agentlab connect`, {
      hint: "remove it (agentlab disconnect) and connect again: agentlab connect --endpoint <url> --token <token>",
      details: { file: path },
    });
  }
  return checked.data;
}

export function saveConnection(saved: SavedConnection, path: string = clientConfigPath()): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(saved, null, 2)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

/** Returns whether there was a file to remove. */
export function removeSaved(path: string = clientConfigPath()): boolean {
  try {
    rmSync(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}
