import assert from "node:assert/strict";
import { AgentlabError } from "../../src/protocol/errors.js";

/** Run `fn`, which must throw an AgentlabError, and return that error for the test to look at. */
export function catchAgentlab(fn: () => unknown): AgentlabError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof AgentlabError, `expected an AgentlabError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected an error");
}
