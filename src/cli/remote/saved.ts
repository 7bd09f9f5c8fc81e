/**
 * ~/.config/agentlab/client.json ($XDG_CONFIG_HOME respected), written by `agentlab connect`: the
 * endpoint, its token, the pinned certificate, and the jump host/user that `agentlab ssh` will use.
 * It holds a secret: the directory is 0700 and the file 0600, written atomically.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { AgentlabError } from "../../protocol/errors.js";

export interface SavedConnection {
  endpoint: string;
  token: string;
  /** SHA-256 fingerprint of the certificate seen at connect, "AB:CD:...". */
  fingerprint: string;
  /**
   * pin: trust exactly this certificate (self-signed ones, or any given with --fingerprint); ca: the
   * system's CAs vouched for it and the host name, so it is checked that way again and may be renewed
   * (Let's Encrypt certificates of `tailscale serve` change every few weeks).
   */
  trust: "pin" | "ca";
  /** The pinned certificate (PEM), so a self-signed one can be trusted exactly and nothing else. */
  certificate: string;
  jump_host?: string;
  jump_user?: string;
  saved_at: string;
}

const REQUIRED = ["endpoint", "token", "fingerprint", "certificate", "saved_at"] as const;
const OPTIONAL = ["jump_host", "jump_user"] as const;

/**
 * The file's fields when it is a saved connection (other keys are dropped). Checked by hand, not with
 * zod: every command that talks to a daemon reads this file, and loading zod was a large part of the
 * CLI's start-up (docs/performance.md).
 */
function asSaved(value: unknown): SavedConnection | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const record = value as Record<string, unknown>;
  if (!REQUIRED.every((key) => typeof record[key] === "string")) return undefined;
  if (!OPTIONAL.every((key) => record[key] === undefined || typeof record[key] === "string"))
    return undefined;
  if (record.trust !== "pin" && record.trust !== "ca") return undefined;
  const saved: Record<string, unknown> = { trust: record.trust };
  for (const key of [...REQUIRED, ...OPTIONAL]) if (record[key] !== undefined) saved[key] = record[key];
  return saved as unknown as SavedConnection;
}

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
  const saved = asSaved(parsed);
  if (!saved) {
    throw new AgentlabError("USAGE", `${path} is not a connection saved by agentlab connect`, {
      hint: "remove it (agentlab disconnect) and connect again: agentlab connect --endpoint <url> --token <token>",
      details: { file: path },
    });
  }
  return saved;
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
