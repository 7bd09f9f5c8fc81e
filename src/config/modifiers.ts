/**
 * `agentlab sandbox new +yolo +ephemeral`: picking a profile by the words of its name.
 *
 * Upstream sorted the modifiers alphabetically and joined them with "-", so `+yolo +ephemeral` looked for
 * "ephemeral-yolo" and the shipped "yolo-ephemeral" could never be reached. Here the modifiers are a set:
 * a profile matches when the set of its name's hyphen-separated words equals the set given, in any order.
 */
import { AgentlabError } from "../protocol/errors.js";
import { closest } from "./suggest.js";

/** The words of a profile name or of a modifier: lower-cased, split on "-", without repeats. */
function words(text: string): Set<string> {
  return new Set(
    text
      .toLowerCase()
      .split("-")
      .map((word) => word.trim())
      .filter((word) => word !== ""),
  );
}

const plus = (tokens: Iterable<string>) => [...tokens].map((token) => `+${token}`);

/**
 * The one profile whose name's words are exactly `mods` (with or without their leading "+", any case, any
 * order, repeats ignored). Throws PROFILE_NOT_FOUND for an unknown word or no match, and USAGE when the
 * words fit several profiles (e.g. "a-b" and "b-a"), since only --profile can then say which.
 */
export function resolveModifiers(mods: readonly string[], profileNames: readonly string[]): string {
  const wanted = new Set<string>();
  for (const mod of mods) {
    for (const word of words(mod.replace(/^\++/, ""))) wanted.add(word);
  }
  if (wanted.size === 0) {
    throw new AgentlabError("USAGE", "expected at least one +modifier, such as +yolo", {
      details: { modifiers: [...mods] },
    });
  }

  const valid = new Set(profileNames.flatMap((profile) => [...words(profile)]));
  const unknown = [...wanted].filter((word) => !valid.has(word));
  if (unknown.length > 0) {
    const suggestions = unknown
      .map((word) => closest(word, valid))
      .filter((word): word is string => word !== undefined);
    const didYouMean = suggestions.length > 0 ? ` (did you mean ${plus(suggestions).join(", ")}?)` : "";
    const validList = valid.size > 0 ? plus([...valid].sort()).join(", ") : "none (no profiles are loaded)";
    throw new AgentlabError(
      "PROFILE_NOT_FOUND",
      `unknown modifier(s) ${plus(unknown).join(", ")}${didYouMean}. Valid modifiers: ${validList}`,
      { details: { modifiers: plus(wanted), unknown: plus(unknown), suggestions: plus(suggestions) } },
    );
  }

  const contains = (profile: string) => [...wanted].every((word) => words(profile).has(word));
  const matches = profileNames.filter((profile) => contains(profile) && words(profile).size === wanted.size);
  if (matches.length === 1) return matches[0]!;

  const asked = plus(wanted).join(" ");
  if (matches.length > 1) {
    throw new AgentlabError(
      "USAGE",
      `modifiers ${asked} match more than one profile: ${matches.join(", ")}; choose one with --profile`,
      { details: { modifiers: plus(wanted), matches }, hint: `agentlab sandbox new --profile ${matches[0]}` },
    );
  }
  const wider = profileNames.filter(contains);
  const suggestion = wider.length > 0 ? `. Profiles that have all of them: ${wider.join(", ")}` : "";
  throw new AgentlabError("PROFILE_NOT_FOUND", `no profile matches modifiers ${asked}${suggestion}`, {
    details: { modifiers: plus(wanted), suggestions: wider },
  });
}
