import { AgentlabError } from "../../protocol/errors.js";
import { AGENTLAB_ROLE, roleAddCommand } from "./privileges.js";
import { PveRequestError } from "./transport.js";

/**
 * Proxmox failures turned into agentlab errors by what Proxmox said, so the rest of the daemon can
 * react to kinds (missing VM, lock, permission) instead of strings. Each explanation says what to do.
 */

const LOCK_PATTERNS = [
  /VM is locked \(([^)]+)\)/,
  /can't lock file '([^']+)' - got timeout/,
  /got lock request timeout/,
];

/** Locks and lock-file timeouts clear by themselves; they are the only failures worth retrying. */
export function isLockError(error: unknown): boolean {
  return error instanceof AgentlabError && error.code === "PROXMOX_LOCKED";
}

const TLS_FIXES: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    "the server's certificate is signed by a CA this host does not trust: set proxmox_tls_ca_path: /etc/pve/pve-root-ca.pem",
  DEPTH_ZERO_SELF_SIGNED_CERT:
    "the server presents a self-signed certificate: set proxmox_tls_ca_path to that certificate (or /etc/pve/pve-root-ca.pem)",
  SELF_SIGNED_CERT_IN_CHAIN:
    "the certificate chain ends in a self-signed CA this host does not trust: set proxmox_tls_ca_path: /etc/pve/pve-root-ca.pem",
  CERT_HAS_EXPIRED:
    "the Proxmox certificate has expired: renew it with pvecm updatecerts --force (then systemctl restart pveproxy)",
  ERR_TLS_CERT_ALTNAME_INVALID:
    "the certificate does not name the host in proxmox_api_url: use the node's name as in the certificate, or reissue it with pvecm updatecerts --force",
};

const CONNECTION_FIXES: Record<string, string> = {
  ECONNREFUSED: "nothing listens at proxmox_api_url: check the port (8006) and systemctl status pveproxy",
  ENOTFOUND: "the host name in proxmox_api_url does not resolve: use an IP address or fix DNS / /etc/hosts",
  EHOSTUNREACH: "no route to the Proxmox host: check proxmox_api_url and the network",
  ECONNRESET: "the connection was reset: check that proxmox_api_url uses https:// and port 8006",
  ETIMEDOUT: "the Proxmox host did not answer: check proxmox_api_url and the firewall",
};

/** Walk an error's cause chain for a Node/undici error code. */
export function findCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 8 && current; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && (code in TLS_FIXES || code in CONNECTION_FIXES)) return code;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The whole chain of messages, outermost first, for logs and details. */
export function errorChain(error: unknown): string[] {
  const chain: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < 8 && current; depth++) {
    const message = current instanceof Error ? current.message : String(current);
    const code = (current as { code?: unknown }).code;
    chain.push(typeof code === "string" && !message.includes(code) ? `${message} (${code})` : message);
    current = (current as { cause?: unknown }).cause;
  }
  return chain;
}

/**
 * The fix for a 403: the privilege and path Proxmox named (`Permission check failed (/storage/x,
 * Datastore.AllocateSpace)`), granted through the AgentLab role to both the user and the token, since a
 * privilege-separated token only gets what both have. Per-VM paths are granted on /vms: agentlabd
 * keeps making new VMIDs, and they inherit from there.
 */
export function permissionHint(reason: string, tokenId?: string): string {
  const [user, token] = (tokenId ?? "USER@REALM!TOKEN").split("!");
  const tokenFull = `${user}!${token ?? "TOKEN"}`;
  const m = /Permission check failed \(([^,]+), ([^)]+)\)/.exec(reason);
  const path = m?.[1]?.trim();
  const privs = m?.[2]?.trim().split("|") ?? [];
  const grantPath = path && /^\/vms\/\d+$/.test(path) ? "/vms" : (path ?? "/");
  const missing =
    privs.length > 1 ? `one of ${privs.join(", ")}` : (privs[0] ?? "a privilege agentlabd needs");
  return [
    `the token ${tokenFull} lacks ${missing}${path ? ` on ${path}` : ""}. Grant the AgentLab role to both the user and the token`,
    "(a privilege-separated token gets only the INTERSECTION of the two):",
    `  pveum acl modify ${grantPath} --users ${user} --roles ${AGENTLAB_ROLE}`,
    `  pveum acl modify ${grantPath} --tokens '${tokenFull}' --roles ${AGENTLAB_ROLE}`,
    `The role: ${roleAddCommand(9)} (on PVE 8: ${roleAddCommand(8)}).`,
    'docs/runbook.md "API backend install" lists every privilege and path; agentlab init names each one missing.',
  ].join("\n");
}

export interface ClassifyContext {
  /** What the daemon was doing, e.g. "clone 9000 -> 101"; leads the message. */
  action: string;
  vmid?: number;
  tokenId?: string;
}

/** Classify any failure of a Proxmox call. AgentlabErrors pass through unchanged. */
export function classifyProxmoxError(error: unknown, ctx: ClassifyContext): AgentlabError {
  if (error instanceof AgentlabError) return error;
  const chain = errorChain(error);
  const details: Record<string, unknown> = { action: ctx.action, chain };
  if (ctx.vmid !== undefined) details.vmid = ctx.vmid;
  const cause = error;

  const code = findCode(error);
  if (code && code in TLS_FIXES) {
    return new AgentlabError(
      "PROXMOX_TLS",
      `${ctx.action}: TLS verification of the Proxmox API failed (${code})`,
      {
        hint: TLS_FIXES[code]!,
        details: { ...details, tls_code: code },
        cause,
      },
    );
  }
  if (code && code in CONNECTION_FIXES) {
    return new AgentlabError("PROXMOX_UNREACHABLE", `${ctx.action}: cannot reach the Proxmox API (${code})`, {
      hint: CONNECTION_FIXES[code]!,
      details: { ...details, net_code: code },
      cause,
    });
  }
  if (!(error instanceof PveRequestError)) {
    return new AgentlabError("PROXMOX_ERROR", `${ctx.action}: ${chain[0] ?? "unknown error"}`, {
      details,
      cause,
    });
  }
  const reason = error.reason.trim();
  if (error.status !== undefined) details.status = error.status;
  if (error.errors) details.errors = error.errors;

  if (error.status === 401 || /^authentication fail|no ticket|invalid token|no such token/i.test(reason)) {
    return new AgentlabError("PROXMOX_AUTH", `${ctx.action}: Proxmox refused the API token (${reason})`, {
      details,
      cause,
    });
  }
  if (error.status === 403 || /^Permission check failed/.test(reason)) {
    return new AgentlabError("PROXMOX_PERMISSION", `${ctx.action}: ${reason}`, {
      hint: permissionHint(reason, ctx.tokenId),
      details,
      cause,
    });
  }
  if (
    /Configuration file '[^']*qemu-server\/\d+\.conf' does not exist/.test(reason) ||
    /^VM \d+ does not exist/.test(reason)
  ) {
    const what = ctx.vmid !== undefined ? `VM ${ctx.vmid} does not exist in Proxmox` : reason;
    return new AgentlabError("PROXMOX_VM_NOT_FOUND", `${ctx.action}: ${what}`, {
      details: { ...details, reason },
      cause,
    });
  }
  if (LOCK_PATTERNS.some((pattern) => pattern.test(reason))) {
    return new AgentlabError("PROXMOX_LOCKED", `${ctx.action}: ${reason}`, { details, cause });
  }
  if (
    /QEMU guest agent is not running|No QEMU guest agent configured|qmp command .* failed - got timeout|guest-ping/.test(
      reason,
    )
  ) {
    return new AgentlabError("GUEST_AGENT_NOT_READY", `${ctx.action}: ${reason}`, { details, cause });
  }
  if (error.status === 400 || error.errors) {
    const fields = Object.entries(error.errors ?? {}).map(([key, text]) => `${key}: ${text}`);
    return new AgentlabError(
      "PROXMOX_INVALID",
      `${ctx.action}: ${reason}${fields.length ? ` (${fields.join("; ")})` : ""}`,
      {
        details,
        cause,
      },
    );
  }
  if (
    error.status === 501 ||
    error.status === 595 ||
    (error.status !== undefined && error.status >= 502 && error.status <= 504)
  ) {
    return new AgentlabError("PROXMOX_UNREACHABLE", `${ctx.action}: ${error.status} ${reason}`, {
      details,
      cause,
    });
  }
  return new AgentlabError("PROXMOX_ERROR", `${ctx.action}: ${reason}`, { details, cause });
}
