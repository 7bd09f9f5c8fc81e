/**
 * A remote token's scopes, which nest: read < operate < admin (docs/remote.md). Apart from token.ts
 * (the methods' schemas) so the CLI offers them as choices without loading zod.
 */

export const TOKEN_SCOPES = ["read", "operate", "admin"] as const;
export type TokenScope = (typeof TOKEN_SCOPES)[number];

/** Whether `held` includes what `needed` requires. */
export function scopeCovers(held: TokenScope, needed: TokenScope): boolean {
  return TOKEN_SCOPES.indexOf(held) >= TOKEN_SCOPES.indexOf(needed);
}
