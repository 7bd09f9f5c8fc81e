import assert from "node:assert/strict";
import { test } from "node:test";
import { fields } from "../../src/cli/render.js";

test("fields: values line up after the longest key, and a value's later lines start under it", () => {
  const text = fields([
    ["privileges", "fail: token lacks Datastore.Allocate\nfix: pveum acl modify ..."],
    ["last maintenance", "never"],
  ]);
  assert.equal(
    text,
    [
      "privileges:       fail: token lacks Datastore.Allocate",
      "                  fix: pveum acl modify ...",
      "last maintenance: never",
      "",
    ].join("\n"),
  );
});
