/**
 * Remote control tokens: create (the secret is returned once), verify a presented secret, list, revoke.
 * A secret is `alt_` + 43 base64url characters (256 random bits); the database keeps its SHA-256 only,
 * which is enough because the secret itself has full entropy (no slow hash needed, unlike passwords).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { AgentlabError } from "../../protocol/errors.js";
import { type ApiToken, TOKEN_PREFIX, type TokenScope } from "../../protocol/token.js";
import type { Clock } from "../clock.js";
import type { ApiTokenRepo, ApiTokenRow } from "../store/api-tokens.js";

/** What the remote listener knows about the caller once its token checked out. */
export interface VerifiedToken {
  id: string;
  name: string;
  scope: TokenScope;
  all: boolean;
}

const SECRET_SHAPE = new RegExp(`^${TOKEN_PREFIX}[A-Za-z0-9_-]{43}$`);

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

export function tokenStatus(row: ApiTokenRow, now: Date): ApiToken["status"] {
  if (row.revoked_at !== null) return "revoked";
  if (row.expires_at !== null && row.expires_at.getTime() <= now.getTime()) return "expired";
  return "active";
}

export function toApiToken(row: ApiTokenRow, now: Date): ApiToken {
  return {
    id: row.id,
    name: row.name,
    scope: row.scope,
    all: row.all,
    status: tokenStatus(row, now),
    hint: row.hint,
    created_at: row.created_at.toISOString(),
    ...(row.expires_at ? { expires_at: row.expires_at.toISOString() } : {}),
    ...(row.revoked_at ? { revoked_at: row.revoked_at.toISOString() } : {}),
    ...(row.last_used_at ? { last_used_at: row.last_used_at.toISOString() } : {}),
  };
}

export class TokenService {
  private madeRepo: ApiTokenRepo | undefined;

  /** `repo` is made at first use, so registering the handlers touches no database. */
  constructor(
    private readonly makeRepo: () => ApiTokenRepo,
    private readonly clock: Clock,
  ) {}

  private get repo(): ApiTokenRepo {
    this.madeRepo ??= this.makeRepo();
    return this.madeRepo;
  }

  create(params: {
    name: string;
    scope: TokenScope;
    all?: boolean | undefined;
    ttl_minutes?: number | undefined;
  }): ApiToken & {
    secret: string;
  } {
    if (this.repo.byName(params.name)) {
      throw new AgentlabError("CONFLICT", `a token named "${params.name}" already exists`, {
        hint: `pick another name, or revoke the old one first: agentlab token revoke ${params.name}`,
        details: { name: params.name },
      });
    }
    const secret = `${TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
    const now = this.clock.now();
    const row = this.repo.insert({
      id: `tok_${randomBytes(8).toString("hex")}`,
      name: params.name,
      secret_hash: hashSecret(secret),
      hint: secret.slice(0, TOKEN_PREFIX.length + 4),
      scope: params.scope,
      all: params.all === true,
      expires_at:
        params.ttl_minutes === undefined ? null : new Date(now.getTime() + params.ttl_minutes * 60_000),
    });
    return { ...toApiToken(row, now), secret };
  }

  list(): ApiToken[] {
    const now = this.clock.now();
    return this.repo.list().map((row) => toApiToken(row, now));
  }

  revoke(nameOrId: string): ApiToken {
    const row = this.repo.byId(nameOrId) ?? this.repo.byName(nameOrId);
    if (!row) {
      throw new AgentlabError("NOT_FOUND", `no token named "${nameOrId}"`, {
        hint: "list the tokens with agentlab token list",
        details: { token: nameOrId },
      });
    }
    const now = this.clock.now();
    return toApiToken(this.repo.revoke(row.id, now) ?? row, now);
  }

  /** Check a presented secret; throws TOKEN_INVALID, TOKEN_EXPIRED or TOKEN_REVOKED. */
  verify(secret: string): VerifiedToken {
    if (!SECRET_SHAPE.test(secret)) {
      throw new AgentlabError(
        "TOKEN_INVALID",
        `the token is not an agentlab token (they start with ${TOKEN_PREFIX} and have ${TOKEN_PREFIX.length + 43} characters)`,
      );
    }
    const hash = hashSecret(secret);
    const row = this.repo.bySecretHash(hash);
    // The lookup is by hash of a full-entropy secret; the compare is constant-time all the same.
    if (!row || !timingSafeEqual(Buffer.from(row.secret_hash, "hex"), Buffer.from(hash, "hex"))) {
      throw new AgentlabError("TOKEN_INVALID", "the token is not known to this agentlabd");
    }
    this.check(row);
    this.repo.touch(row.id, this.clock.now());
    return { id: row.id, name: row.name, scope: row.scope, all: row.all };
  }

  /** Re-check a token by id before each call, so a revoke or an expiry applies to open connections too. */
  recheck(id: string): void {
    const row = this.repo.byId(id);
    if (!row) throw new AgentlabError("TOKEN_INVALID", "the token is not known to this agentlabd");
    this.check(row);
  }

  private check(row: ApiTokenRow): void {
    const now = this.clock.now();
    const status = tokenStatus(row, now);
    if (status === "revoked") {
      throw new AgentlabError(
        "TOKEN_REVOKED",
        `token "${row.name}" was revoked at ${row.revoked_at?.toISOString()}`,
        { details: { token: row.name } },
      );
    }
    if (status === "expired") {
      throw new AgentlabError(
        "TOKEN_EXPIRED",
        `token "${row.name}" expired at ${row.expires_at?.toISOString()}`,
        { details: { token: row.name, expired_at: row.expires_at?.toISOString() } },
      );
    }
  }
}
