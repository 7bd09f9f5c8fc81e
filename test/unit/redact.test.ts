import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { REDACTED, redact, redactString } from "../../src/daemon/redact.js";
import { redact as bundleRedact } from "../../src/daemon/services/doctor.js";
import { splitRepoCredentials } from "../../src/daemon/services/jobs/repo-url.js";

describe("repository credentials are split off at job run", () => {
  test("user:password and a lone token leave an http(s) URL; percent-escapes are decoded", () => {
    assert.deepEqual(splitRepoCredentials("https://alice:p%40ss:w@git.example.com/org/repo.git"), {
      url: "https://git.example.com/org/repo.git",
      credentials: { username: "alice", password: "p@ss:w" },
    });
    assert.deepEqual(splitRepoCredentials("https://ghp_token123@github.com/o/r"), {
      url: "https://github.com/o/r",
      credentials: { username: "ghp_token123", password: "" },
    });
    // A raw "@" in the password: the last "@" before the path ends the userinfo.
    assert.deepEqual(splitRepoCredentials("http://u:a@b@host:8080/r"), {
      url: "http://host:8080/r",
      credentials: { username: "u", password: "a@b" },
    });
  });

  test("ssh account names stay; only an ssh password is split off; plain URLs are untouched", () => {
    assert.deepEqual(splitRepoCredentials("ssh://git@host/r.git"), { url: "ssh://git@host/r.git" });
    assert.deepEqual(splitRepoCredentials("git@github.com:o/r.git"), { url: "git@github.com:o/r.git" });
    assert.deepEqual(splitRepoCredentials("https://github.com/o/r"), { url: "https://github.com/o/r" });
    assert.deepEqual(splitRepoCredentials("ssh://git:hunter22@host/r.git"), {
      url: "ssh://git@host/r.git",
      credentials: { username: "git", password: "hunter22" },
    });
  });
});

describe("the redactor", () => {
  test("known secret shapes are replaced wherever they appear; prose stays readable", () => {
    const cases: Array<[string, string]> = [
      [`GITHUB_TOKEN=ghp_${"x1".repeat(18)}`, `GITHUB_TOKEN=${REDACTED}`],
      [`pat github_pat_11${"A0".repeat(20)} end`, `pat ${REDACTED} end`],
      [`key sk-ant-${"k9".repeat(15)}`, `key ${REDACTED}`],
      ["id AKIAIOSFODNN7EXAMPLE.", `id ${REDACTED}.`],
      ["Authorization: Bearer abc.DEF.123456", `Authorization: Bearer ${REDACTED}`],
      ["clone https://bob:s3cr3t@h/r.git failed", `clone https://${REDACTED}@h/r.git failed`],
      ["clone https://TOKEN12345@h/r.git", `clone https://${REDACTED}@h/r.git`],
      [
        "ssh://git@host/r.git and sk-learn and Basic authentication",
        "ssh://git@host/r.git and sk-learn and Basic authentication",
      ],
      ['{"password": "x y"}', `{"password": "${REDACTED}"}`],
    ];
    for (const [input, expected] of cases) assert.equal(redactString(input), expected, input);
  });

  test("exact values (6+ characters) are replaced; redacting twice changes nothing more", () => {
    const once = redact({ msg: "pw is Zq81xV, short abc", nested: ["Zq81xV"] }, ["Zq81xV", "abc"]);
    assert.deepEqual(once, { msg: `pw is ${REDACTED}, short abc`, nested: [REDACTED] });
    assert.deepEqual(redact(once, ["Zq81xV"]), once);
  });

  test("doctor bundles use the same redactor (stable import for other callers)", () => {
    assert.equal(bundleRedact, redact);
  });
});
