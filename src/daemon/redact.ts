/**
 * The one redactor: doctor bundles, agent output (the runner's reports), job and event output and the
 * daemon's log lines all pass through it, so a secret hidden in one place is hidden in all of them.
 *
 * Three nets (upstream §6 has the first two):
 * - secret-named keys, as object keys or inside text (`key=value`, `"key": "value"`, `key: value`);
 * - exact values the caller knows are secret (a job's repository credentials);
 * - well-known secret shapes wherever they appear: GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_,
 *   github_pat_), OpenAI/Anthropic style keys (sk-...), AWS access key ids (AKIA/ASIA...), the value of
 *   an `Authorization: Bearer` / `Basic` header, and the userinfo of a URL (`https://user:pass@host`,
 *   `https://TOKEN@host`).
 * Redacting twice is the same as once, so layers may each redact without coordinating.
 */

export const REDACTED = "[REDACTED]";

/**
 * Keys whose values are secrets wherever they appear (spec §6), plus the Proxmox config keys that carry
 * credentials (cloud-init password and SSH keys) and the usual cloud credential names. Matched
 * case-insensitively.
 */
const SECRET_KEYS = [
  "token",
  "access_token",
  "refresh_token",
  "bootstrap_token",
  "artifact_token",
  "report_token",
  "report_token_hash",
  "token_hash",
  "openai_api_key",
  "anthropic_api_key",
  "claude_api_key",
  "github_token",
  "gh_token",
  "gitlab_token",
  "bitbucket_token",
  "gitea_token",
  "git_token",
  "ssh_private_key",
  "private_key",
  "password",
  "cipassword",
  "sshkeys",
  "aws_secret_access_key",
  "aws_session_token",
  "repo_credentials",
];
const SECRET_KEY_SET = new Set(SECRET_KEYS);
/**
 * The same keys inside free text (a failure reason quoting a command line, a VM description, agent
 * output): `"key": "value"`, `key="value"`, `key='value'`, `key=value`, `key: value`.
 */
const SECRET_IN_TEXT = new RegExp(
  `(["']?)\\b(${SECRET_KEYS.join("|")})\\1(\\s*[:=]\\s*)("[^"]*"|'[^']*'|[^\\s,;"']+)`,
  "gi",
);

/**
 * Secret shapes, each replaced whole. Lengths follow the issuers' formats loosely (at least the
 * shortest real token) so ordinary words like "sk-learn" or "ghp_" alone stay readable.
 */
const SECRET_SHAPES: readonly RegExp[] = [
  // GitHub: personal (classic), OAuth, user-to-server, server-to-server, refresh; fine-grained PATs.
  /\bgh[pousr]_[A-Za-z0-9]{20,}\b/g,
  /\bgithub_pat_[A-Za-z0-9_]{20,}\b/g,
  // OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-...) API keys.
  /\bsk-[A-Za-z0-9_-]{20,}/g,
  // AWS access key ids (long-term AKIA, temporary ASIA).
  /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/g,
];
/**
 * `Bearer <token>` / `Basic <base64>` (an Authorization header, a curl -H line): the scheme stays. The
 * credential must look like one (a digit, `+/=`, or a capital after a small letter), so prose such as
 * "Basic authentication" is left alone.
 */
const AUTH_SCHEME =
  /\b(Bearer|bearer|BEARER|Basic|basic|BASIC)(\s+)(?=[A-Za-z0-9._~+/=-]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9._~+/=-]{8,}/g;
/**
 * The userinfo of a URL: `scheme://user:pass@` for any scheme, and a lone `https://TOKEN@` (http(s) has
 * no account names, so a lone user there is a token). `ssh://git@host` keeps its account name. Scheme and
 * host stay readable.
 */
const URL_USERINFO: readonly RegExp[] = [
  /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/@:"'<>]+:[^\s/@"'<>]*@/gi,
  /\b(https?:\/\/)[^\s/@:"'<>]+@/gi,
];

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Exact values shorter than this are not replaced: "git" or "x" would shred ordinary text. */
export const MIN_SECRET_LENGTH = 6;

function redactText(text: string, values: readonly string[]): string {
  let out = text;
  for (const value of values) {
    if (value.length >= MIN_SECRET_LENGTH) out = out.replace(new RegExp(escapeRegExp(value), "g"), REDACTED);
  }
  out = out.replace(SECRET_IN_TEXT, (_m, q: string, key: string, sep: string, value: string) => {
    const quote = value.startsWith('"') || value.startsWith("'") ? value[0] : "";
    return `${q}${key}${q}${sep}${quote}${REDACTED}${quote}`;
  });
  for (const shape of SECRET_SHAPES) out = out.replace(shape, REDACTED);
  out = out.replace(AUTH_SCHEME, (_m, scheme: string, space: string) => `${scheme}${space}${REDACTED}`);
  for (const userinfo of URL_USERINFO) {
    out = out.replace(userinfo, (_m, scheme: string) => `${scheme}${REDACTED}@`);
  }
  return out;
}

/**
 * A deep copy with secret-keyed values, secret shapes and the given exact `values` replaced by
 * [REDACTED]. Values shorter than MIN_SECRET_LENGTH are ignored.
 */
export function redact(value: unknown, values: readonly string[] = []): unknown {
  if (typeof value === "string") return redactText(value, values);
  if (Array.isArray(value)) return value.map((inner) => redact(inner, values));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [key, inner] of Object.entries(value)) {
      out[key] = SECRET_KEY_SET.has(key.toLowerCase()) ? REDACTED : redact(inner, values);
    }
    return out;
  }
  return value;
}

/** One string through the redactor. */
export function redactString(text: string, values: readonly string[] = []): string {
  return redactText(text, values);
}

/** `redact` keeping the static type: for outputs whose shape must not change. */
export function redacted<T>(value: T, values: readonly string[] = []): T {
  return redact(value, values) as T;
}
