import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseCopyEnd } from "../../src/cli/sandbox-copy.js";
import type { AgentlabError } from "../../src/protocol/errors.js";

describe("sandbox cp's SRC and DST", () => {
  it("<vmid>:<path> is a guest path; an empty path is the user's home", () => {
    assert.deepEqual(parseCopyEnd("1012:/work/task.md"), {
      kind: "guest",
      vmid: 1012,
      path: "/work/task.md",
    });
    assert.deepEqual(parseCopyEnd("1012:out/report.json"), {
      kind: "guest",
      vmid: 1012,
      path: "out/report.json",
    });
    assert.deepEqual(parseCopyEnd("1012:"), { kind: "guest", vmid: 1012, path: "." });
  });

  it("anything else is local, including a name with a colon written as ./", () => {
    assert.deepEqual(parseCopyEnd("./task.md"), { kind: "local", path: "./task.md" });
    assert.deepEqual(parseCopyEnd("./1012:x"), { kind: "local", path: "./1012:x" });
    assert.deepEqual(parseCopyEnd("notes:v2.txt"), { kind: "local", path: "notes:v2.txt" });
  });

  it("a number that is no VMID is a usage error that says how to name a local file", () => {
    assert.throws(
      () => parseCopyEnd("42:/tmp/x"),
      (error: AgentlabError) => {
        assert.equal(error.code, "USAGE");
        assert.match(error.message, /42 is not a VMID/);
        assert.match(error.hint ?? "", /\.\/NAME/);
        return true;
      },
    );
  });
});
