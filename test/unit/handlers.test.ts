import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import type { DaemonContext } from "../../src/daemon/context.js";
import { registerHandlers } from "../../src/daemon/rpc/handlers.js";
import { RpcServer } from "../../src/daemon/rpc/server.js";
import { METHODS } from "../../src/protocol/index.js";

test("every method the protocol (and so docs/rpc.md) promises has a handler, and nothing else is served", () => {
  const server = new RpcServer({ log: pino({ level: "silent" }) });
  // Registration only stores the context; no handler runs here.
  registerHandlers(server, { log: pino({ level: "silent" }) } as unknown as DaemonContext);
  assert.deepEqual([...server.registeredMethods].sort(), METHODS.map((m) => m.method).sort());
});
