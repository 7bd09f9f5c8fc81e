/**
 * A worker call must answer with a task id. pvesh proxying to another node hands back the remote
 * output as one string (pve-manager PVE/CLI/pvesh.pm:132-141): the UPID is taken from its end, and an
 * answer without one is a failure rather than a silent success.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import { workerUpid } from "../../src/daemon/proxmox/tasks.js";
import type { ApiPath, HttpMethod, Params, PveTransport } from "../../src/daemon/proxmox/transport.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const UPID = "UPID:pve2:0035D677:03AB00C3:66DC5987:qmstart:101:root@pam:";

/** Answers each call from a table; records what was asked. */
function fakeTransport(
  answer: (method: HttpMethod, path: string) => unknown,
): PveTransport & { seen: string[] } {
  const seen: string[] = [];
  return {
    kind: "shell",
    calls: { count: 0 },
    seen,
    async request(method: HttpMethod, apiPath: ApiPath, _params?: Params) {
      const path = String(apiPath);
      seen.push(`${method} ${path}`);
      return answer(method, path);
    },
  };
}

function backendOver(transport: PveTransport): PveBackend {
  return new PveBackend({
    transport,
    log: pino({ level: "silent" }),
    timeoutMs: 10_000,
    sleep: async () => {},
  });
}

describe("workerUpid", () => {
  test("a bare UPID, or one that ends pvesh's proxied concatenation", () => {
    assert.equal(workerUpid(UPID), UPID);
    assert.equal(workerUpid(`generating cloud-init ISO"${UPID}"`), UPID);
    assert.equal(workerUpid(`line onestarted"${UPID}"\n`), UPID);
  });

  test("nothing else counts: no UPID, one in the middle, a malformed one, a non-string", () => {
    assert.equal(workerUpid("generating cloud-init ISO"), undefined);
    assert.equal(workerUpid(`"${UPID}" and more`), undefined);
    assert.equal(workerUpid('log"UPID:pve2:zz:"'), undefined);
    assert.equal(workerUpid(null), undefined);
    assert.equal(workerUpid({ upid: UPID }), undefined);
  });
});

describe("PveBackend: the answer of a worker call", () => {
  test("the UPID at the end of a proxied answer is waited for, and its failure reported", async () => {
    const transport = fakeTransport((method, path) =>
      method === "POST"
        ? `generating cloud-init ISO"${UPID}"`
        : path.endsWith("/status")
          ? { status: "stopped", exitstatus: "start failed: QEMU exited with code 1" }
          : null,
    );
    await assert.rejects(backendOver(transport).start({ vmid: 101, node: "pve2" }), (error: unknown) => {
      assert.ok(error instanceof AgentlabError);
      assert.equal(error.code, "PROXMOX_TASK_FAILED");
      assert.match(error.message, /start failed: QEMU exited with code 1/);
      return true;
    });
    assert.equal(transport.seen.length, 2, transport.seen.join("\n"));
    assert.equal(transport.seen[0], "POST /nodes/pve2/qemu/101/status/start");
    assert.match(transport.seen[1]!, /^GET \/nodes\/pve2\/tasks\/\S+\/status$/);
  });

  test("a worker answer without a UPID is a failure, never a success", async () => {
    const transport = fakeTransport(() => "generating cloud-init ISO");
    await assert.rejects(backendOver(transport).start({ vmid: 101, node: "pve2" }), (error: unknown) => {
      assert.ok(error instanceof AgentlabError);
      assert.match(error.message, /answered without a task id \(UPID\), so its outcome is unknown/);
      return true;
    });
    assert.equal(transport.seen.length, 1);
  });

  test("the synchronous PUT config answers nothing, and that is fine", async () => {
    const transport = fakeTransport(() => null);
    await backendOver(transport).setConfig({ vmid: 101, node: "pve2" }, { cores: 2 });
    assert.deepEqual(transport.seen, ["PUT /nodes/pve2/qemu/101/config"]);
  });
});
