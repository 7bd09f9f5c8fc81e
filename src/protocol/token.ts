import { z } from "zod";
import { boundedString, LIMITS } from "./limits.js";
import { defineMethod } from "./method.js";
import { TtlMinutes } from "./sandbox.js";
import { TOKEN_SCOPES } from "./token-scopes.js";
import * as wire from "./wire.js";

export { scopeCovers, TOKEN_SCOPES, type TokenScope } from "./token-scopes.js";

/**
 * Tokens for the remote control listener (docs/remote.md). A token's secret is shown once, at create;
 * the daemon keeps only its SHA-256. Scopes nest: read < operate < admin.
 */

/** Every secret starts with this, so a leaked one is recognisable (secret scanners, logs, shell history). */
export const TOKEN_PREFIX = "alt_";

export const TokenName = boundedString(LIMITS.NAME).regex(
  /^[a-z0-9][a-z0-9._-]{0,62}$/,
  "token names use lower-case letters, digits, . _ and -, at most 63",
);

export const ApiToken = z.object({
  id: z.string(),
  name: z.string(),
  scope: z.enum(TOKEN_SCOPES),
  all: z
    .boolean()
    .describe(
      "operate scope only: true lets the token act on every sandbox, job and workspace, not only those it created",
    ),
  status: z.enum(["active", "expired", "revoked"]),
  /** The first characters of the secret, to tell tokens apart without revealing them. */
  hint: z.string().describe("the secret's first characters, e.g. alt_3kQ9"),
  created_at: z.string(),
  expires_at: z.string().optional(),
  revoked_at: z.string().optional(),
  last_used_at: z.string().optional(),
});
export type ApiToken = z.infer<typeof ApiToken>;

export const tokenCreate = defineMethod(wire.tokenCreate, {
  summary:
    "Create a token for the remote control listener. The secret is in this answer only; the daemon keeps its hash.",
  params: z
    .object({
      name: TokenName,
      scope: z.enum(TOKEN_SCOPES).default("read"),
      all: z
        .boolean()
        .optional()
        .describe("operate scope: act on every sandbox, job and workspace, not only the token's own"),
      ttl_minutes: TtlMinutes.optional(),
    })
    .strict()
    .refine((p) => p.all !== true || p.scope === "operate", {
      message: "all applies to operate tokens only (read tokens read everything, admin tokens do everything)",
      path: ["all"],
    }),
  result: ApiToken.extend({ secret: z.string().describe("the bearer token; shown once") }),
});

export const tokenList = defineMethod(wire.tokenList, {
  summary: "List the remote control tokens (never their secrets), revoked and expired ones included.",
  params: z.object({}).strict(),
  result: z.object({ tokens: z.array(ApiToken) }),
});

export const tokenRevoke = defineMethod(wire.tokenRevoke, {
  summary: "Revoke a token by name or id: every later call with it is refused, open connections included.",
  params: z.object({ token: boundedString(LIMITS.REF).min(1).describe("token name or id") }).strict(),
  result: ApiToken,
});
