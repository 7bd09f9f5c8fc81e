/**
 * Splitting the credentials off a repository URL at `job run`, so the stored and shown URL never holds
 * them (issue 14): `https://user:pass@host/repo` becomes `https://host/repo` plus {user, pass};
 * `https://TOKEN@host/repo` becomes `https://host/repo` plus {TOKEN, ""} (git sends a lone token as the
 * user name, which is how GitHub and GitLab take one).
 *
 * For http(s) any userinfo is a credential. For ssh:// and git:// the user name is an account ("git"),
 * not a secret, and stays; only a password is split off. scp-like `user@host:path` has no password.
 */
import type { RepoCredentials } from "../../store/job-secrets.js";

export interface SplitRepoUrl {
  url: string;
  credentials?: RepoCredentials;
}

const WITH_USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)@/i;

function decode(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    // A malformed escape is kept as typed: git would send it that way too.
    return part;
  }
}

export function splitRepoCredentials(repoUrl: string): SplitRepoUrl {
  const match = WITH_USERINFO.exec(repoUrl);
  if (!match) return { url: repoUrl };
  const scheme = match[1]!;
  // The last "@" of the authority ends the userinfo (a password may contain a raw "@").
  const userinfo = match[2]!;
  const rest = repoUrl.slice(match[0].length);
  const colon = userinfo.indexOf(":");
  const username = decode(colon < 0 ? userinfo : userinfo.slice(0, colon));
  const password = colon < 0 ? "" : decode(userinfo.slice(colon + 1));
  if (/^https?:\/\/$/i.test(scheme)) {
    if (username === "" && password === "") return { url: `${scheme}${rest}` };
    return { url: `${scheme}${rest}`, credentials: { username, password } };
  }
  if (password === "") return { url: repoUrl };
  const user = colon < 0 ? userinfo : userinfo.slice(0, colon);
  return { url: `${scheme}${user}@${rest}`, credentials: { username, password } };
}
