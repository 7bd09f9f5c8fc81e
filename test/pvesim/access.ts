/**
 * Users, API tokens, ACLs and roles: enough of pve-access-control to get authentication failures,
 * privilege separation and `Permission check failed (<path>, <priv>)` right.
 */
import { randomUUID } from "node:crypto";
import { permissionDenied } from "./errors.js";
import type { SimState } from "./types.js";

const VM_PRIVS = [
  "VM.Allocate",
  "VM.Audit",
  "VM.Backup",
  "VM.Clone",
  "VM.Config.CDROM",
  "VM.Config.CPU",
  "VM.Config.Cloudinit",
  "VM.Config.Disk",
  "VM.Config.HWType",
  "VM.Config.Memory",
  "VM.Config.Network",
  "VM.Config.Options",
  "VM.Console",
  "VM.Migrate",
  "VM.PowerMgmt",
  "VM.Snapshot",
  "VM.Snapshot.Rollback",
  "VM.GuestAgent.Audit",
  "VM.GuestAgent.Unrestricted",
];
const DATASTORE_PRIVS = [
  "Datastore.Allocate",
  "Datastore.AllocateSpace",
  "Datastore.AllocateTemplate",
  "Datastore.Audit",
];
const SYS_PRIVS = ["Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog"];
const OTHER_PRIVS = [
  "SDN.Allocate",
  "SDN.Audit",
  "SDN.Use",
  "Pool.Allocate",
  "Pool.Audit",
  "Permissions.Modify",
  "User.Modify",
];
const ALL_PRIVS = [...VM_PRIVS, ...DATASTORE_PRIVS, ...SYS_PRIVS, ...OTHER_PRIVS];

/** Built-in roles (PVE 9 privilege names). */
export const ROLES: Record<string, string[]> = {
  Administrator: ALL_PRIVS,
  NoAccess: [],
  PVEAdmin: ALL_PRIVS.filter((p) => !["Sys.Modify", "Sys.PowerMgmt", "Permissions.Modify"].includes(p)),
  PVEAuditor: ALL_PRIVS.filter((p) => p.endsWith(".Audit")),
  PVEVMAdmin: VM_PRIVS,
  PVEVMUser: [
    "VM.Audit",
    "VM.Backup",
    "VM.Config.CDROM",
    "VM.Config.Cloudinit",
    "VM.Console",
    "VM.PowerMgmt",
    "VM.GuestAgent.Audit",
  ],
  PVETemplateUser: ["VM.Audit", "VM.Clone"],
  PVEDatastoreAdmin: DATASTORE_PRIVS,
  PVEDatastoreUser: ["Datastore.AllocateSpace", "Datastore.Audit"],
  PVESDNUser: ["SDN.Audit", "SDN.Use"],
};

export interface AuthId {
  /** `user@realm`. */
  user: string;
  tokenid?: string;
}

export function authIdString(a: AuthId): string {
  return a.tokenid ? `${a.user}!${a.tokenid}` : a.user;
}

export const ROOT: AuthId = { user: "root@pam" };

function versionAtLeast(version: string, want: [number, number, number]): boolean {
  const parts = version.split(".").map((n) => Number.parseInt(n, 10) || 0);
  for (let i = 0; i < 3; i++) {
    const have = parts[i] ?? 0;
    if (have !== want[i]) return have > want[i]!;
  }
  return true;
}

export type AuthResult = { ok: true; auth: AuthId } | { ok: false; reason: string };

/** Checks an Authorization header the way pveproxy does for API tokens. */
export function authenticate(
  state: SimState,
  header: string | undefined,
  pveVersion: string,
  now: number,
): AuthResult {
  if (!header) return { ok: false, reason: "No ticket" };
  const unified = versionAtLeast(pveVersion, [9, 1, 5]);
  const deny = (detail: string): AuthResult => ({
    ok: false,
    reason: unified ? "Authentication failed!" : detail,
  });
  const m = /^PVEAPIToken[= ](.*)$/s.exec(header.trim());
  if (!m) return deny("invalid PVE ticket");
  let value: string;
  try {
    value = decodeURIComponent(m[1]!);
  } catch {
    value = m[1]!;
  }
  const tm = /^(\S+?@[^!\s]+)!([^=\s]+)=(\S+)$/.exec(value);
  if (!tm) {
    if (/^\S+@[^!\s]+=/.test(value)) return deny("no tokenid specified");
    return deny("invalid token value!");
  }
  const [, user, tokenid, secret] = tm as unknown as [string, string, string, string];
  const userRec = state.users[user];
  const token = userRec?.tokens[tokenid];
  if (!userRec || !token) return deny(`no such token '${tokenid}' for user '${user}'`);
  if (!userRec.enabled) return deny(`user '${user}' is disabled`);
  if (token.expire > 0 && token.expire < now / 1000) return deny(`token '${tokenid}' access expired`);
  if (token.secret !== secret) return deny("invalid token value!");
  return { ok: true, auth: { user, tokenid } };
}

/** Privileges of one subject (user or token id) on a path, ACLs inherited down and overridden below. */
function subjectPrivs(state: SimState, subject: string, path: string): Set<string> {
  const parts = path.split("/").filter(Boolean);
  const levels = ["/", ...parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`)];
  let privs = new Set<string>();
  levels.forEach((level, i) => {
    const last = i === levels.length - 1;
    const entries = state.acl.filter(
      (e) => e.subject === subject && e.path === level && (last || e.propagate),
    );
    if (entries.length === 0) return;
    privs = new Set(entries.flatMap((e) => ROLES[e.role] ?? []));
  });
  return privs;
}

export function effectivePrivs(state: SimState, auth: AuthId, path: string): Set<string> {
  const userPrivs = auth.user === "root@pam" ? new Set(ALL_PRIVS) : subjectPrivs(state, auth.user, path);
  if (!auth.tokenid) return userPrivs;
  const token = state.users[auth.user]?.tokens[auth.tokenid];
  if (!token?.privsep) return userPrivs;
  // A separated token may only use what both it and its user have.
  const tokenPrivs = subjectPrivs(state, authIdString(auth), path);
  return new Set([...tokenPrivs].filter((p) => userPrivs.has(p)));
}

export function hasPriv(state: SimState, auth: AuthId, path: string, privs: string[], any = false): boolean {
  const have = effectivePrivs(state, auth, path);
  return any ? privs.some((p) => have.has(p)) : privs.every((p) => have.has(p));
}

export function checkPriv(state: SimState, auth: AuthId, path: string, privs: string[], any = false): void {
  if (!hasPriv(state, auth, path, privs, any)) throw permissionDenied(path, privs);
}

/** Adds (or replaces) a token and returns its secret. */
export function addToken(state: SimState, tokenId: string, privsep: boolean, secret = randomUUID()): string {
  const m = /^(\S+?@[^!\s]+)!([A-Za-z][A-Za-z0-9.\-_]+)$/.exec(tokenId);
  if (!m) throw new Error(`token id must look like USER@REALM!TOKENID, got '${tokenId}'`);
  const user = state.users[m[1]!] ?? { enabled: true, tokens: {} };
  state.users[m[1]!] = user;
  user.tokens[m[2]!] = { secret, privsep, expire: 0 };
  return secret;
}

export function addAcl(state: SimState, path: string, role: string, subject: string, propagate = true): void {
  if (!(role in ROLES)) throw new Error(`unknown role '${role}' (known: ${Object.keys(ROLES).join(", ")})`);
  if (!path.startsWith("/")) throw new Error(`ACL path must start with '/', got '${path}'`);
  const user = subject.split("!")[0]!;
  if (!/^\S+@\S+$/.test(user))
    throw new Error(`ACL subject must be USER@REALM or USER@REALM!TOKENID, got '${subject}'`);
  state.users[user] ??= { enabled: true, tokens: {} };
  state.acl = state.acl.filter((e) => !(e.path === path && e.subject === subject && e.role === role));
  state.acl.push({ path, subject, role, propagate });
}
