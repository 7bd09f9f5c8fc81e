import assert from "node:assert/strict";
import { test } from "node:test";
import { fromResponseError } from "../../src/cli/client.js";
import { toRpcError } from "../../src/daemon/rpc/to-rpc-error.js";
import { AgentlabError, codeFromRpc, ERROR_CODES, type ErrorCode } from "../../src/protocol/errors.js";

const codes = Object.keys(ERROR_CODES) as ErrorCode[];

test("every error code has its own wire number, outside JSON-RPC's reserved range unless it is a standard one", () => {
  const numbers = codes.map((code) => ERROR_CODES[code].rpc);
  assert.equal(new Set(numbers).size, numbers.length, "wire numbers are unique");
  for (const code of codes) {
    const n = ERROR_CODES[code].rpc;
    if (code === "INVALID_PARAMS" || code === "METHOD_NOT_FOUND") continue;
    assert.ok(n < -32768 || n > -32000, `${code} (${n}) is outside the reserved range`);
    assert.ok(ERROR_CODES[code].hint.length > 0, `${code} has a default hint`);
  }
});

for (const code of codes) {
  test(`${code} crosses the socket intact: code, message, hint, details, exit status`, () => {
    const original = new AgentlabError(code, `something about ${code}`, { details: { vmid: 1000 } });
    const wire = toRpcError(original, "test.method", "r1");
    assert.equal(codeFromRpc(wire.code), code);
    const rebuilt = fromResponseError(wire, "test.method");
    assert.equal(rebuilt.code, code);
    assert.equal(rebuilt.message, original.message);
    assert.equal(rebuilt.hint, original.hint);
    assert.deepEqual(rebuilt.details, { vmid: 1000 });
    assert.equal(rebuilt.exitCode, ERROR_CODES[code].exit);
  });
}

test("a plain Error becomes INTERNAL naming the method and the request id", () => {
  const wire = toRpcError(new TypeError("x is undefined"), "sandbox.create", "r42");
  const rebuilt = fromResponseError(wire, "sandbox.create");
  assert.equal(rebuilt.code, "INTERNAL");
  assert.match(rebuilt.message, /sandbox\.create: x is undefined/);
  assert.equal(rebuilt.details.request_id, "r42");
});

test("workspace and session codes fail with exit 1, and their default hints name what to run", () => {
  const expected: Record<string, [number, RegExp]> = {
    WORKSPACE_NOT_FOUND: [1600, /agentlab workspace list/],
    WORKSPACE_ATTACHED: [1601, /agentlab workspace detach .*agentlab session stop/],
    WORKSPACE_LEASE_HELD: [1602, /agentlab workspace lease clear/],
    WORKSPACE_BUSY: [1603, /agentlab workspace show/],
    SNAPSHOT_NOT_LATEST: [1604, /^nothing was changed\. .*agentlab workspace fork .*--from-snapshot/],
    HOST_TOOLS_UNAVAILABLE: [1605, /host_tools/],
    SESSION_NOT_FOUND: [1700, /agentlab session list/],
  };
  for (const [code, [rpc, hint]] of Object.entries(expected)) {
    const spec = ERROR_CODES[code as ErrorCode];
    assert.ok(spec, `${code} exists`);
    assert.equal(spec.rpc, rpc, code);
    assert.equal(spec.exit, 1, code);
    assert.match(spec.hint, hint, code);
  }
  // The design reuses these instead of adding workspace twins.
  for (const code of ["STORAGE_UNSUPPORTED", "SNAPSHOT_NOT_FOUND", "CONFLICT", "CONFIRMATION_REQUIRED"]) {
    assert.ok(Object.hasOwn(ERROR_CODES, code), code);
  }
});
