/** /access/permissions: a user's or token's effective privileges, as pve-access-control answers them. */
import { type AuthId, authIdString, checkPriv, parseAuthId, permissionMap, validPrivs } from "./access.js";
import type { Ctx } from "./context.js";
import { paramError } from "./errors.js";
import type { ParamSpec, Params } from "./schema.js";
import { str } from "./schema.js";

/** `$userid_or_token_regex` (AccessControl.pm:286-287; user and realm from Auth/Plugin.pm:34-35). */
export const USERID_OR_TOKEN: ParamSpec = {
  type: "string",
  optional: true,
  pattern: /^[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+(?:![A-Za-z][A-Za-z0-9.\-_]+)?$/,
};

/** The paths listed without `path` (RPCEnvironment.pm:241-286): the top levels plus every ACL path. */
const DEFAULT_PATHS = ["/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"];

type PrivMap = Record<string, 0 | 1>;

/**
 * `GET /access/permissions` (API2/AccessControl.pm:509-571). Anyone may ask about themselves, and a
 * user about their own tokens; anything else needs Sys.Audit on /access. With `path` the answer is
 * that one path (present even when empty); without it, every default or ACL path the subject has
 * something on. Each privilege maps to its propagate flag.
 */
export function accessPermissions(ctx: Ctx, auth: AuthId, p: Params): Record<string, PrivMap> {
  const self = authIdString(auth);
  const userid = str(p, "userid") ?? self;
  const subject = parseAuthId(userid);
  if (!subject) throw paramError({ userid: "value does not match the regex pattern" });
  const ownedToken = subject.tokenid !== undefined && subject.user === self;
  if (userid !== self && !ownedToken) checkPriv(ctx.state, auth, "/access", ["Sys.Audit"]);
  const valid = validPrivs(ctx.control.pve_version);
  const privsOn = (path: string): PrivMap => {
    const out: PrivMap = {};
    for (const [priv, propagate] of [...permissionMap(ctx.state, subject, path)].sort()) {
      if (valid.has(priv)) out[priv] = propagate ? 1 : 0;
    }
    return out;
  };
  const path = str(p, "path");
  if (path) return { [path]: privsOn(path) };
  const paths = new Set([...DEFAULT_PATHS, ...ctx.state.acl.map((e) => e.path)]);
  const res: Record<string, PrivMap> = {};
  for (const each of paths) {
    const privs = privsOn(each);
    if (Object.keys(privs).length > 0) res[each] = privs;
  }
  return res;
}
