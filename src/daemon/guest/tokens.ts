/**
 * Bootstrap tokens (spec §7.2): 16 random bytes, hex; the database keeps only their SHA-256; they live
 * 10 minutes and the ready report uses one up.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Clock } from "../clock.js";
import type { BootstrapTokenPurpose, BootstrapTokenRepo } from "../store/bootstrap-tokens.js";

export const BOOTSTRAP_TOKEN_TTL_MS = 10 * 60_000;

const TOKEN = /^[0-9a-f]{32}$/;

export function hashBootstrapToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

export interface IssuedToken {
  token: string;
  tokenHash: string;
  expiresAt: Date;
}

export class BootstrapTokens {
  constructor(
    private readonly repo: BootstrapTokenRepo,
    private readonly clock: Clock,
    readonly ttlMs: number = BOOTSTRAP_TOKEN_TTL_MS,
  ) {}

  /**
   * A fresh token for `vmid`. Tokens of an earlier provisioning of the same VMID that were never used are
   * dropped (only the newest guest may report), and so is every expired token, so the table stays small.
   */
  issue(vmid: number, purpose: BootstrapTokenPurpose = "ready"): IssuedToken {
    const now = this.clock.now();
    const token = randomBytes(16).toString("hex");
    const tokenHash = hashBootstrapToken(token);
    const expiresAt = new Date(now.getTime() + this.ttlMs);
    this.repo.deleteExpired(now);
    this.repo.deleteUnconsumed(vmid, purpose);
    this.repo.insert({ token_hash: tokenHash, vmid, purpose, expires_at: expiresAt, created_at: now });
    return { token, tokenHash, expiresAt };
  }

  /**
   * Use the token up if it was issued for `vmid`, is unused and unexpired. False in every other case,
   * without saying which: a guest that guesses learns nothing from the answer.
   */
  consume(vmid: number, token: string, purpose: BootstrapTokenPurpose = "ready"): boolean {
    if (!TOKEN.test(token)) return false;
    return this.repo.consume(hashBootstrapToken(token), vmid, this.clock.now(), purpose);
  }

  /**
   * Whether `token` is an unspent, unexpired `purpose` token of `vmid`, without spending it: lets an
   * endpoint check the caller before it says anything about what the caller asks for.
   */
  valid(vmid: number, token: string, purpose: BootstrapTokenPurpose = "ready"): boolean {
    if (!TOKEN.test(token)) return false;
    const row = this.repo.get(hashBootstrapToken(token));
    return (
      row !== undefined &&
      row.vmid === vmid &&
      row.purpose === purpose &&
      row.consumed_at === null &&
      row.expires_at.getTime() > this.clock.now().getTime()
    );
  }

  /** Forget the unused `purpose` tokens of `vmid`: that wait ended, so a late request must be refused. */
  revoke(vmid: number, purpose: BootstrapTokenPurpose = "ready"): void {
    this.repo.deleteUnconsumed(vmid, purpose);
  }
}
