/**
 * Users, API tokens, ACLs and roles: enough of pve-access-control to get authentication failures,
 * privilege separation and `Permission check failed (<path>, <priv>)` right.
 */
import { randomUUID } from "node:crypto";
import { permissionDenied } from "./errors.js";
import type { SimState } from "./types.js";

/**
 * The privilege groups of pve-access-control (src/PVE/AccessControl.pm:1057-1168, `$privgroups`), from
 * which `create_roles` (:1175-1205) builds the built-in roles. `VM.Monitor` existed until PVE 9.0
 * (commit 0706945, "privileges: drop VM.Monitor"); the `VM.GuestAgent.*` privileges came with PVE 9.0
 * (commit 922f710). The groups hold both, and `validPrivs` picks the ones the running version knows.
 */
const PRIV_GROUPS: Record<string, { root: string[]; admin: string[]; user: string[]; audit: string[] }> = {
  VM: {
    root: [],
    admin: [
      "VM.Config.Disk",
      "VM.Config.CPU",
      "VM.Config.Memory",
      "VM.Config.Network",
      "VM.Config.HWType",
      "VM.Config.Options",
      "VM.Allocate",
      "VM.Clone",
      "VM.GuestAgent.Unrestricted",
      "VM.Migrate",
      "VM.Monitor",
      "VM.Replicate",
      "VM.Snapshot",
      "VM.Snapshot.Rollback",
    ],
    user: [
      "VM.Config.CDROM",
      "VM.Config.Cloudinit",
      "VM.Console",
      "VM.Backup",
      "VM.GuestAgent.FileRead",
      "VM.GuestAgent.FileSystemMgmt",
      "VM.GuestAgent.FileWrite",
      "VM.PowerMgmt",
    ],
    audit: ["VM.Audit", "VM.GuestAgent.Audit"],
  },
  Sys: {
    root: ["Sys.PowerMgmt", "Sys.Modify", "Sys.Incoming", "Sys.AccessNetwork"],
    admin: ["Sys.Console", "Sys.Syslog"],
    user: [],
    audit: ["Sys.Audit"],
  },
  Datastore: {
    root: [],
    admin: ["Datastore.Allocate", "Datastore.AllocateTemplate"],
    user: ["Datastore.AllocateSpace"],
    audit: ["Datastore.Audit"],
  },
  SDN: { root: [], admin: ["SDN.Allocate", "SDN.Audit"], user: ["SDN.Use"], audit: ["SDN.Audit"] },
  User: {
    root: ["Realm.Allocate"],
    admin: ["User.Modify", "Group.Allocate", "Realm.AllocateUser"],
    user: [],
    audit: [],
  },
  Pool: { root: [], admin: ["Pool.Allocate"], user: ["Pool.Audit"], audit: ["Pool.Audit"] },
  Mapping: { root: [], admin: ["Mapping.Modify"], user: ["Mapping.Use"], audit: ["Mapping.Audit"] },
};

const PVE8_ONLY = new Set(["VM.Monitor"]);
const PVE9_ONLY = new Set([
  "VM.GuestAgent.Audit",
  "VM.GuestAgent.FileRead",
  "VM.GuestAgent.FileSystemMgmt",
  "VM.GuestAgent.FileWrite",
  "VM.GuestAgent.Unrestricted",
]);

const ALL_PRIVS = [
  ...new Set(Object.values(PRIV_GROUPS).flatMap((g) => [...g.root, ...g.admin, ...g.user, ...g.audit])),
  "Permissions.Modify",
];

/** The privilege names a PVE version accepts (`verify_privname`, AccessControl.pm:1374-1384). */
export function validPrivs(pveVersion: string): Set<string> {
  const nine = pveVersionAtLeast(pveVersion, [9, 0, 0]);
  return new Set(ALL_PRIVS.filter((p) => !(nine ? PVE8_ONLY : PVE9_ONLY).has(p)));
}

/** The built-in roles as `create_roles` makes them (AccessControl.pm:1175-1205). */
function builtinRoles(): Record<string, string[]> {
  const roles: Record<string, Set<string>> = { NoAccess: new Set(), Administrator: new Set(ALL_PRIVS) };
  const add = (role: string, privs: string[]): void => {
    roles[role] ??= new Set();
    for (const p of privs) roles[role].add(p);
  };
  for (const [cat, g] of Object.entries(PRIV_GROUPS)) {
    add(`PVE${cat}Admin`, [...g.admin, ...g.user, ...g.audit]);
    add("PVEAdmin", [...g.admin, ...g.user, ...g.audit]);
    if (g.user.length > 0) add(`PVE${cat}User`, [...g.user, ...g.audit]);
    add("PVEAuditor", g.audit);
  }
  // Only Administrator, root@pam and PVEMappingAdmin may modify mappings.
  roles["PVEAdmin"]!.delete("Mapping.Modify");
  roles["PVETemplateUser"] = new Set(["VM.Clone", "VM.Audit"]);
  return Object.fromEntries(Object.entries(roles).map(([name, privs]) => [name, [...privs]]));
}

/** Built-in roles; a PVE 8 host has `VM.Monitor` and no `VM.GuestAgent.*` in them (see validPrivs). */
export const ROLES: Record<string, string[]> = builtinRoles();

/** A role's privileges: built-in, or one made with `pveum role add` (pvesim control --add-role). */
function rolePrivs(state: SimState, role: string): string[] {
  return ROLES[role] ?? state.roles?.[role] ?? [];
}

export interface AuthId {
  /** `user@realm`. */
  user: string;
  tokenid?: string;
}

export function authIdString(a: AuthId): string {
  return a.tokenid ? `${a.user}!${a.tokenid}` : a.user;
}

export const ROOT: AuthId = { user: "root@pam" };

export function pveVersionAtLeast(version: string, want: [number, number, number]): boolean {
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
  const unified = pveVersionAtLeast(pveVersion, [9, 1, 5]);
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

/**
 * Privileges of one subject (user or token id) on a path, each with its propagate flag: ACLs inherit
 * down when propagated and the deepest level with an entry replaces what came from above
 * (AccessControl.pm `roles`; a privilege propagates when any role granting it does, RPCEnvironment.pm
 * `compile_acl_path`).
 */
function subjectPrivs(state: SimState, subject: string, path: string): Map<string, boolean> {
  const parts = path.split("/").filter(Boolean);
  const levels = ["/", ...parts.map((_, i) => `/${parts.slice(0, i + 1).join("/")}`)];
  let roles = new Map<string, boolean>();
  levels.forEach((level, i) => {
    const last = i === levels.length - 1;
    const entries = state.acl.filter(
      (e) => e.subject === subject && e.path === level && (last || e.propagate),
    );
    if (entries.length === 0) return;
    roles = new Map(entries.map((e) => [e.role, e.propagate]));
  });
  // NoAccess wins over every other role set on the same level.
  if (roles.has("NoAccess")) return new Map();
  const privs = new Map<string, boolean>();
  for (const [role, propagate] of roles) {
    for (const p of rolePrivs(state, role)) privs.set(p, (privs.get(p) ?? false) || propagate);
  }
  return privs;
}

/**
 * What `$rpcenv->permissions($authid, $path)` returns (RPCEnvironment.pm:136-176): root@pam has
 * everything; a token without privilege separation has its user's privileges; a separated one only
 * what both it and its user have (root's own tokens are not intersected), propagating only when both do.
 */
export function permissionMap(state: SimState, auth: AuthId, path: string): Map<string, boolean> {
  const userPrivs =
    auth.user === "root@pam"
      ? new Map(ALL_PRIVS.map((p) => [p, true] as const))
      : subjectPrivs(state, auth.user, path);
  if (!auth.tokenid) return userPrivs;
  const token = state.users[auth.user]?.tokens[auth.tokenid];
  if (!token) return new Map();
  if (!token.privsep) return userPrivs;
  const tokenPrivs = subjectPrivs(state, authIdString(auth), path);
  if (auth.user === "root@pam") return tokenPrivs;
  const both = new Map<string, boolean>();
  for (const [p, propagate] of tokenPrivs) {
    const user = userPrivs.get(p);
    if (user !== undefined) both.set(p, user && propagate);
  }
  return both;
}

export function effectivePrivs(state: SimState, auth: AuthId, path: string): Set<string> {
  return new Set(permissionMap(state, auth, path).keys());
}

/** `USER@REALM` or `USER@REALM!TOKENID` as an AuthId, undefined when it is neither. */
export function parseAuthId(text: string): AuthId | undefined {
  const m = /^(\S+?@[^!\s]+)(?:!([A-Za-z][A-Za-z0-9.\-_]+))?$/.exec(text);
  if (!m) return undefined;
  return m[2] ? { user: m[1]!, tokenid: m[2] } : { user: m[1]! };
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
  if (!(role in ROLES) && !(role in (state.roles ?? {})))
    throw new Error(
      `unknown role '${role}' (known: ${[...Object.keys(ROLES), ...Object.keys(state.roles ?? {})].join(", ")})`,
    );
  if (!path.startsWith("/")) throw new Error(`ACL path must start with '/', got '${path}'`);
  const user = subject.split("!")[0]!;
  if (!/^\S+@\S+$/.test(user))
    throw new Error(`ACL subject must be USER@REALM or USER@REALM!TOKENID, got '${subject}'`);
  state.users[user] ??= { enabled: true, tokens: {} };
  state.acl = state.acl.filter((e) => !(e.path === path && e.subject === subject && e.role === role));
  state.acl.push({ path, subject, role, propagate });
}

/**
 * `pveum role add NAME -privs "A,B"`: refuses the PVE namespace, taken names and privileges the version
 * does not know, with pveum's texts (API2/Role.pm:96-107; AccessControl.pm:1338-1384).
 */
export function addRole(state: SimState, name: string, privs: string[], pveVersion: string): void {
  if (!/^[A-Za-z0-9.\-_]+$/.test(name)) throw new Error(`role name '${name}' contains invalid characters`);
  if (/^PVE/i.test(name))
    throw new Error("roleid: cannot use role ID starting with the (case-insensitive) 'PVE' namespace");
  if (name in ROLES || state.roles?.[name]) throw new Error(`role '${name}' already exists`);
  const valid = validPrivs(pveVersion);
  for (const p of privs) if (!valid.has(p)) throw new Error(`invalid privilege '${p}'`);
  state.roles = { ...(state.roles ?? {}), [name]: [...new Set(privs)] };
}
