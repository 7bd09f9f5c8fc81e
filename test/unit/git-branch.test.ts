import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { gitBranchNameError } from "../../src/protocol/git-branch.js";
import { JobRequest } from "../../src/protocol/job.js";

/** What git itself says: `git check-ref-format --branch NAME` exits 0 for a name it would create. */
function gitAccepts(name: string): boolean {
  return spawnSync("git", ["check-ref-format", "--branch", name], { stdio: "ignore" }).status === 0;
}

const NAMES = [
  "main",
  "feature/login",
  "Feature/Add-Login_2",
  "fix-123",
  "a/b/c",
  "v1.2",
  "user@host",
  "",
  "-dash",
  "HEAD",
  "a..b",
  "a b",
  "a~1",
  "a^",
  "a:b",
  "a?",
  "a*",
  "a[b",
  "a\\b",
  "a@{1}",
  "/lead",
  "trail/",
  "a//b",
  "dot.",
  ".hidden",
  "a/.hidden",
  "x.lock",
  "a/x.lock/b",
  "tab\there",
  "del\x7f",
];

describe("git branch names (job run --branch)", () => {
  it("agrees with git check-ref-format --branch on every name", () => {
    for (const name of NAMES) {
      const ours = gitBranchNameError(name);
      assert.equal(
        ours === undefined,
        gitAccepts(name),
        `${JSON.stringify(name)}: ours says ${ours ?? "valid"}`,
      );
    }
  });

  it("refuses @ too, which git takes but reads as HEAD wherever a revision goes (git checkout @)", () => {
    assert.equal(gitBranchNameError("@"), "it is the single character @, which git reads as HEAD");
  });

  it("job requests with a bad branch are refused with the reason", () => {
    const base = { repo_url: "https://git.example.com/a.git", task: "t", profile: "p" };
    const bad = JobRequest.safeParse({ ...base, branch: "a..b" });
    assert.equal(bad.success, false);
    assert.equal(
      bad.error?.issues[0]?.message,
      'branch "a..b" is not a valid git branch name: it contains ".."',
    );
    assert.equal(JobRequest.safeParse({ ...base, branch: "feature/login" }).success, true);
  });
});
