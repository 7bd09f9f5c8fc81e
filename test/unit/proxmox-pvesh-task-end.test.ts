/**
 * pvesh runs a worker in the foreground and exits 0 whatever the task's outcome; only its stderr tells:
 * nothing for TASK OK, the error text for TASK ERROR, a warning count for TASK WARNINGS (pve-common
 * RESTEnvironment.pm:489-513). The shell backend skips the task-status read exactly when that proves
 * TASK OK, and reads it in every other case.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import { PveBackend } from "../../src/daemon/proxmox/backend.js";
import {
  type ApiPath,
  type HttpMethod,
  type PveTransport,
  TaskEndedOk,
} from "../../src/daemon/proxmox/transport.js";
import { endedOk } from "../../src/daemon/proxmox/transport-shell.js";
import { AgentlabError } from "../../src/protocol/errors.js";

const UPID = "UPID:pve:0035D677:03AB00C3:66DC5987:qmclone:9000:root@pam:";
const PATH = "/nodes/pve/qemu/9000/clone";
/** What pvesh prints on stdout for a worker: the task's log, then the UPID as JSON. */
const STDOUT = `create linked clone of drive scsi0 (local-zfs:base-9000-disk-0)\n"${UPID}"\n`;

describe("endedOk: what pvesh's output proves", () => {
  test("an empty stderr and the UPID last: the task ended OK", () => {
    const ok = endedOk("POST", PATH, STDOUT, "");
    assert.ok(ok instanceof TaskEndedOk);
    assert.equal(ok.upid, UPID);
  });

  test("anything on stderr leaves it to the status read: an error, a warning count, an empty line, a locale warning", () => {
    for (const stderr of [
      "clone failed: storage 'local-zfs' does not exist\n",
      "Task finished with 2 warning(s)!\n",
      "\n",
      "perl: warning: Setting locale failed.\n",
    ])
      assert.equal(endedOk("POST", PATH, STDOUT, stderr), undefined, JSON.stringify(stderr));
  });

  test("no bare UPID last (a proxied run's concatenated output, a synchronous answer, nothing): not proven", () => {
    assert.equal(endedOk("POST", PATH, `"create linked clone\\"${UPID}\\""\n`, ""), undefined);
    assert.equal(endedOk("PUT", PATH, "update VM 1000: -cores 2\n", ""), undefined);
    assert.equal(endedOk("POST", PATH, "", ""), undefined);
    assert.equal(endedOk("POST", PATH, '"UPID:pve:zz:"\n', ""), undefined);
  });
});

/** A transport whose worker calls answer `answer`, and whose task-status reads answer `status`. */
function transport(answer: unknown, status: unknown): PveTransport & { seen: string[] } {
  const seen: string[] = [];
  return {
    kind: "shell",
    calls: { count: 0 },
    seen,
    async request(method: HttpMethod, path: ApiPath) {
      seen.push(`${method} ${path.template()}`);
      return method === "GET" ? status : answer;
    },
  };
}

const backendOver = (t: PveTransport) =>
  new PveBackend({ transport: t, log: pino({ level: "silent" }), timeoutMs: 10_000, sleep: async () => {} });

describe("PveBackend: a task pvesh proved ended OK", () => {
  test("is not read again", async () => {
    const t = transport(new TaskEndedOk(UPID), { status: "stopped", exitstatus: "clone failed" });
    await backendOver(t).clone({ vmid: 9000, node: "pve" }, 1000, { name: "a", full: false });
    assert.deepEqual(t.seen, ["POST /nodes/{node}/qemu/{vmid}/clone"]);
  });

  test("a bare UPID (pvesh said something on stderr) is read, and a failure there is reported", async () => {
    const t = transport(UPID, { status: "stopped", exitstatus: "clone failed: disk full" });
    await assert.rejects(
      backendOver(t).clone({ vmid: 9000, node: "pve" }, 1000, { name: "a", full: false }),
      (error: unknown) => error instanceof AgentlabError && /clone failed: disk full/.test(error.message),
    );
    assert.deepEqual(t.seen, [
      "POST /nodes/{node}/qemu/{vmid}/clone",
      "GET /nodes/{node}/tasks/{upid}/status",
    ]);
  });
});
