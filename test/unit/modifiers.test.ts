import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { resolveModifiers } from "../../src/config/modifiers.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const SHIPPED = ["yolo-ephemeral", "yolo-workspace", "interactive-dev"];

function thrown(fn: () => unknown): AgentlabError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof AgentlabError, `expected an AgentlabError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected an error");
}

describe("modifiers: resolveModifiers", () => {
  it("matches the set of words in either order (upstream only found alphabetical names)", () => {
    assert.equal(resolveModifiers(["+yolo", "+ephemeral"], SHIPPED), "yolo-ephemeral");
    assert.equal(resolveModifiers(["+ephemeral", "+yolo"], SHIPPED), "yolo-ephemeral");
    assert.equal(resolveModifiers(["+dev", "+interactive"], SHIPPED), "interactive-dev");
    assert.equal(resolveModifiers(["+workspace", "+yolo"], SHIPPED), "yolo-workspace");
  });

  it("ignores case, repeats and a missing +, and splits hyphenated modifiers", () => {
    assert.equal(resolveModifiers(["+YOLO", "Ephemeral", "+yolo"], SHIPPED), "yolo-ephemeral");
    assert.equal(resolveModifiers(["+ephemeral-yolo"], SHIPPED), "yolo-ephemeral");
  });

  it("returns the profile name as loaded, not lower-cased", () => {
    assert.equal(resolveModifiers(["+big", "+gpu"], ["GPU-Big", "small"]), "GPU-Big");
  });

  it("an unknown modifier is PROFILE_NOT_FOUND with a suggestion and the valid list", () => {
    const error = thrown(() => resolveModifiers(["+yolp", "+ephemeral"], SHIPPED));
    assert.equal(error.code, "PROFILE_NOT_FOUND");
    assert.equal(
      error.message,
      "unknown modifier(s) +yolp (did you mean +yolo?). Valid modifiers: +dev, +ephemeral, +interactive, +workspace, +yolo",
    );
  });

  it("lists every unknown modifier, and suggests only close ones", () => {
    const error = thrown(() => resolveModifiers(["+gpu", "+workspce", "+yolo"], SHIPPED));
    assert.equal(error.code, "PROFILE_NOT_FOUND");
    assert.match(
      error.message,
      /^unknown modifier\(s\) \+gpu, \+workspce \(did you mean \+workspace\?\)\. Valid/,
    );
    assert.deepEqual(error.details["unknown"], ["+gpu", "+workspce"]);
  });

  it("no match is PROFILE_NOT_FOUND, suggesting the profiles that have all the words", () => {
    const error = thrown(() => resolveModifiers(["+yolo"], SHIPPED));
    assert.equal(error.code, "PROFILE_NOT_FOUND");
    assert.equal(
      error.message,
      "no profile matches modifiers +yolo. Profiles that have all of them: yolo-ephemeral, yolo-workspace",
    );
    const none = thrown(() => resolveModifiers(["+ephemeral", "+workspace"], SHIPPED));
    assert.equal(none.code, "PROFILE_NOT_FOUND");
    assert.equal(none.message, "no profile matches modifiers +ephemeral +workspace");
  });

  it("several matches is an error listing them", () => {
    const error = thrown(() => resolveModifiers(["+a", "+b"], ["a-b", "b-a", "a-b-c"]));
    assert.equal(error.code, "USAGE");
    assert.equal(
      error.message,
      "modifiers +a +b match more than one profile: a-b, b-a; choose one with --profile",
    );
    assert.deepEqual(error.details["matches"], ["a-b", "b-a"]);
  });

  it("needs at least one modifier", () => {
    assert.equal(thrown(() => resolveModifiers([], SHIPPED)).code, "USAGE");
    assert.equal(thrown(() => resolveModifiers(["+"], SHIPPED)).code, "USAGE");
  });

  it("with no profiles loaded, says so", () => {
    const error = thrown(() => resolveModifiers(["+yolo"], []));
    assert.equal(error.code, "PROFILE_NOT_FOUND");
    assert.match(error.message, /Valid modifiers: none \(no profiles are loaded\)$/);
  });
});
