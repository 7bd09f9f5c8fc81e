/**
 * Git's rules for a branch name (`git check-ref-format --branch`, git's refs.c check_refname_format plus
 * the branch-only refusals of strbuf_check_branch_ref): `job run --branch` checks them before anything is
 * recorded, and the runner asks git itself again before it creates the branch. One stricter rule: `@`,
 * which git takes as a branch name but reads as HEAD wherever a revision goes (the runner's checkout).
 */

/** Why `name` is not a branch name git would create, or undefined when it is one. */
export function gitBranchNameError(name: string): string | undefined {
  if (name === "") return "it is empty";
  if (name.length > 200) return "it is longer than 200 characters";
  if (name.startsWith("-")) return "it starts with -";
  if (name === "HEAD") return "HEAD is not a branch name";
  if (name === "@") return "it is the single character @, which git reads as HEAD";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what git refuses
  const bad = /[\x00-\x20\x7f~^:?*[\\]/.exec(name);
  if (bad) {
    const c = bad[0];
    return `it contains ${c === " " ? "a space" : c < " " || c === "\x7f" ? "a control character" : `"${c}"`}`;
  }
  if (name.includes("..")) return 'it contains ".."';
  if (name.includes("@{")) return 'it contains "@{"';
  if (name.startsWith("/") || name.endsWith("/")) return "it starts or ends with /";
  if (name.includes("//")) return 'it contains "//"';
  if (name.endsWith(".")) return "it ends with .";
  for (const part of name.split("/")) {
    if (part.startsWith(".")) return `its component "${part}" starts with .`;
    if (part.endsWith(".lock")) return `its component "${part}" ends with .lock`;
  }
  return undefined;
}
