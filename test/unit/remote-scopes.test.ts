import assert from "node:assert/strict";
import { describe, test } from "node:test";
import pino from "pino";
import { z } from "zod";
import { remoteGate } from "../../src/daemon/remote/gate.js";
import { REMOTE_METHODS } from "../../src/daemon/remote/scopes.js";
import type { TokenService, VerifiedToken } from "../../src/daemon/remote/tokens.js";
import type { ApiTokenRepo } from "../../src/daemon/store/api-tokens.js";
import type { Store } from "../../src/daemon/store/db.js";
import {
  AgentlabError,
  defineMethod,
  METHODS,
  sandboxDestroy,
  sandboxList,
  sessionStop,
  tokenList,
  wire,
} from "../../src/protocol/index.js";

/** A gate over fakes: every target is owned by `owner`, the token always re-checks fine. */
function gate(token: VerifiedToken, owner: string | null = "tok_other") {
  const recorded: string[] = [];
  const owned: Array<[string, string | number]> = [];
  const deps = {
    tokens: { recheck: () => {} } as unknown as TokenService,
    owners: {
      ownerOf: () => owner,
      setOwner: (kind: string, key: string | number) => owned.push([kind, key]),
    } as unknown as ApiTokenRepo,
    store: {
      workspaces: { resolve: (ref: string) => ({ id: ref }) },
      events: { append: (e: { msg: string }) => recorded.push(e.msg) },
    } as unknown as Store,
    log: pino({ level: "silent" }),
  };
  return { gate: remoteGate(deps, token, "192.0.2.7"), recorded, owned };
}

function refusal(fn: () => void): AgentlabError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof AgentlabError);
    return error;
  }
  assert.fail("expected a refusal");
}

const token = (scope: VerifiedToken["scope"], all = false): VerifiedToken => ({
  id: "tok_me",
  name: "me",
  scope,
  all,
});

describe("remote scopes: the one table", () => {
  test("every protocol method has a decided scope, and the table names nothing else", () => {
    const inTable = new Set([...REMOTE_METHODS.keys()].map((m) => m.method));
    const protocol = new Set(METHODS.map((m) => m.method));
    assert.deepEqual(
      [...protocol].filter((m) => !inTable.has(m)),
      [],
    );
    assert.deepEqual(
      [...inTable].filter((m) => !protocol.has(m)),
      [],
    );
  });

  test("a method missing from the table is refused remotely, even to an admin token (deny by default)", () => {
    const unknown = defineMethod(wire("sandbox.brand_new", { progress: false, errors: [] }), {
      summary: "x",
      params: z.object({}),
      result: z.object({}),
    });
    const error = refusal(() => gate(token("admin")).gate.authorize(unknown, {}));
    assert.equal(error.code, "REMOTE_NOT_ALLOWED");
    assert.equal(error.message, "sandbox.brand_new is not available over the remote listener");
  });

  test("scopes nest: read < operate < admin, and the refusal names the scope needed", () => {
    assert.doesNotThrow(() => gate(token("read")).gate.authorize(sandboxList, {}));
    const error = refusal(() => gate(token("read")).gate.authorize(sandboxDestroy, { vmid: 101 }));
    assert.equal(error.code, "SCOPE_REQUIRED");
    assert.deepEqual(error.details, {
      method: "sandbox.destroy",
      needed: "operate",
      scope: "read",
      token: "me",
    });
    assert.equal(
      refusal(() => gate(token("operate", true)).gate.authorize(tokenList, {})).details.needed,
      "admin",
    );
    assert.doesNotThrow(() => gate(token("admin")).gate.authorize(tokenList, {}));
  });

  test("an operate token is held to its own targets; --all and admin are not; sessions need --all", () => {
    assert.equal(
      refusal(() => gate(token("operate")).gate.authorize(sandboxDestroy, { vmid: 101 })).code,
      "NOT_OWNER",
    );
    assert.doesNotThrow(() => gate(token("operate"), "tok_me").gate.authorize(sandboxDestroy, { vmid: 101 }));
    assert.doesNotThrow(() => gate(token("operate", true)).gate.authorize(sandboxDestroy, { vmid: 101 }));
    assert.doesNotThrow(() => gate(token("admin")).gate.authorize(sandboxDestroy, { vmid: 101 }));
    assert.equal(
      refusal(() => gate(token("operate"), "tok_me").gate.authorize(sessionStop, { session: "s" })).code,
      "NOT_OWNER",
    );
    assert.doesNotThrow(() => gate(token("operate", true)).gate.authorize(sessionStop, { session: "s" }));
  });

  test("what a create made becomes the token's; a refusal naming someone else's vmid never does", () => {
    const { gate: g, owned } = gate(token("operate"));
    g.finished("sandbox.create", {}, { result: { vmid: 120 } });
    g.finished(
      "sandbox.create",
      {},
      { error: new AgentlabError("CANCELLED", "x", { details: { vmid: 121 } }) },
    );
    g.finished(
      "sandbox.create",
      { vmid: 7 },
      {
        error: new AgentlabError("NOT_OWNER", "x", { details: { vmid: 7 } }),
      },
    );
    g.finished("sandbox.destroy", { vmid: 8 }, { result: {} });
    assert.deepEqual(owned, [
      ["sandbox", 120],
      ["sandbox", 121],
    ]);
  });

  test("each call is recorded with the token's name and outcome", () => {
    const { gate: g, recorded } = gate(token("read"));
    g.finished("sandbox.list", {}, { result: { sandboxes: [] } });
    g.finished("sandbox.destroy", { vmid: 5 }, { error: new AgentlabError("SCOPE_REQUIRED", "x") });
    assert.deepEqual(recorded, [
      'sandbox.list by token "me" from 192.0.2.7: ok',
      'sandbox.destroy by token "me" from 192.0.2.7: SCOPE_REQUIRED',
    ]);
  });
});
