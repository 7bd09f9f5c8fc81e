import assert from "node:assert/strict";
import { request } from "node:https";
import { after, before, describe, it } from "node:test";
import proxmoxApi from "proxmox-api";
import { Agent, fetch as undiciFetch } from "undici";
import { addAcl, addToken } from "../pvesim/access.js";
import {
  clearFaults,
  createSim,
  inspect,
  type Sim,
  type SimApi,
  setControl,
  startApi,
  startApiProcess,
} from "../pvesim/harness.js";

const FAST = {
  clone_ms: 60,
  full_clone_ms: 80,
  start_ms: 30,
  stop_ms: 20,
  shutdown_ms: 20,
  task_ms: 20,
  agent_ready_ms: 80,
};

interface Reply {
  status: number;
  reason: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

interface ReqOpts {
  token?: string | null;
  body?: string;
  contentType?: string;
  /** CA to trust; `false` = the system store only (what a client without the PVE CA has). */
  ca?: string | false;
  host?: string;
  timeoutMs?: number;
}

function call(api: SimApi, method: string, path: string, opts: ReqOpts = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    const token = opts.token === undefined ? api.token : opts.token;
    if (token !== null) headers["Authorization"] = `PVEAPIToken=${token}`;
    if (opts.body !== undefined)
      headers["Content-Type"] = opts.contentType ?? "application/x-www-form-urlencoded";
    const req = request(
      {
        host: opts.host ?? "127.0.0.1",
        port: api.port,
        method,
        path: `/api2/json${path}`,
        headers,
        ...(opts.ca === false ? {} : { ca: opts.ca ?? api.ca }),
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        let body = "";
        res.on("data", (c: Buffer) => (body += c.toString()));
        res.on("end", () =>
          resolve({
            status: res.statusCode ?? 0,
            reason: res.statusMessage ?? "",
            headers: res.headers,
            body,
          }),
        );
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    if (opts.body !== undefined) req.write(opts.body);
    req.end();
  });
}

async function json(api: SimApi, method: string, path: string, opts: ReqOpts = {}): Promise<unknown> {
  const r = await call(api, method, path, opts);
  assert.equal(r.status, 200, `${r.status} ${r.reason} ${r.body}`);
  return (JSON.parse(r.body) as { data: unknown }).data;
}

async function waitUpid(api: SimApi, upid: string, token?: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 200; i++) {
    const st = (await json(
      api,
      "GET",
      `/nodes/pve/tasks/${encodeURIComponent(upid)}/status`,
      token ? { token } : {},
    )) as Record<string, unknown>;
    if (st["status"] === "stopped") return st;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("task did not stop");
}

describe("pvesim HTTPS: TLS, authentication, envelope and error shapes", () => {
  let sim: Sim;
  let api: SimApi;
  before(async () => {
    sim = createSim({ knobs: FAST });
    api = await startApi(sim);
  });
  after(async () => {
    await api.stop();
    sim.cleanup();
  });

  it("needs the simulator's CA: verification fails without it and works with it for 127.0.0.1 and localhost", async () => {
    await assert.rejects(call(api, "GET", "/version", { ca: false }), (err: NodeJS.ErrnoException) => {
      assert.match(
        String(err.code),
        /SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY/,
      );
      return true;
    });
    assert.equal((await call(api, "GET", "/version")).status, 200);
    assert.equal((await call(api, "GET", "/version", { host: "localhost" })).status, 200);
  });

  it("has a CA of its own: another simulator's CA does not verify its server (the RSA keys are shared)", async () => {
    const other = createSim({ knobs: FAST });
    const otherApi = await startApi(other);
    try {
      assert.notEqual(otherApi.ca, api.ca);
      await assert.rejects(
        call(api, "GET", "/version", { ca: otherApi.ca }),
        (err: NodeJS.ErrnoException) => {
          assert.match(
            String(err.code),
            /UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|CERT_SIGNATURE_FAILURE/,
          );
          return true;
        },
      );
      assert.equal((await call(otherApi, "GET", "/version")).status, 200);
    } finally {
      await otherApi.stop();
      other.cleanup();
    }
  });

  it("wraps data in the envelope with PVE's exact content type", async () => {
    const r = await call(api, "GET", "/cluster/nextid");
    assert.equal(r.status, 200);
    assert.equal(r.headers["content-type"], "application/json;charset=UTF-8");
    assert.equal(r.headers["server"], "pve-api-daemon/3.0");
    assert.deepEqual(JSON.parse(r.body), { data: "100" });
  });

  it("401 without a token and with a bad one: empty body, no content type", async () => {
    const none = await call(api, "GET", "/version", { token: null });
    assert.equal(none.status, 401);
    assert.equal(none.reason, "No ticket");
    assert.equal(none.body, "");
    assert.equal(none.headers["content-type"], undefined);
    const bad = await call(api, "GET", "/version", {
      token: `${api.tokenId}=00000000-0000-0000-0000-000000000000`,
    });
    assert.equal(bad.status, 401);
    assert.equal(bad.reason, "Authentication failed!");
    assert.equal(bad.body, "");
    await setControl(sim.dir, { pve_version: "9.1.4", auth_fail_delay_ms: 100 });
    const started = Date.now();
    const old = await call(api, "GET", "/version", {
      token: "nobody@pve!x=00000000-0000-0000-0000-000000000000",
    });
    assert.ok(Date.now() - started >= 100, "401s are delayed");
    assert.equal(old.reason, "no such token 'x' for user 'nobody@pve'");
    await setControl(sim.dir, { pve_version: "9.1.7", auth_fail_delay_ms: 0 });
  });

  it("501 for unknown paths, 400 with per-parameter errors, 500 with the message as reason phrase", async () => {
    const unknown = await call(api, "GET", "/nodes/pve/nothing");
    assert.equal(unknown.status, 501);
    assert.equal(unknown.reason, "Method 'GET /nodes/pve/nothing' not implemented");
    const bad = await call(api, "GET", "/cluster/nextid?vmid=abc");
    assert.equal(bad.status, 400);
    assert.equal(bad.reason, "Parameter verification failed.");
    assert.deepEqual(JSON.parse(bad.body), {
      data: null,
      message: "Parameter verification failed.\n",
      errors: { vmid: "type check ('integer') failed - got 'abc'" },
    });
    const missing = await call(api, "GET", "/nodes/pve/qemu/999/status/current");
    assert.equal(missing.status, 500);
    assert.equal(missing.reason, "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist");
    assert.deepEqual(JSON.parse(missing.body), {
      data: null,
      message: "Configuration file 'nodes/pve/qemu-server/999.conf' does not exist\n",
    });
    const conflict = await call(api, "POST", "/nodes/pve/qemu/9000/clone", { body: "newid=101&vmid=9001" });
    assert.equal(conflict.status, 400);
  });

  it("accepts form and JSON bodies; worker errors only show in the task", async () => {
    const upid = (await json(api, "POST", "/nodes/pve/qemu/9000/clone", {
      body: "newid=101&name=sbx-101&full=0",
    })) as string;
    assert.match(upid, /^UPID:pve:.*:qmclone:9000:root@pam!agentlab:$/);
    const st = await waitUpid(api, upid);
    assert.equal(st["exitstatus"], "OK");
    assert.equal(st["user"], "root@pam");
    assert.equal(st["tokenid"], "agentlab");
    const bad = (await json(api, "POST", "/nodes/pve/qemu/101/clone", {
      body: JSON.stringify({ newid: 102, full: false }),
      contentType: "application/json",
    })) as string;
    const failed = await waitUpid(api, bad);
    assert.match(String(failed["exitstatus"]), /^Linked clone feature is not supported/);
    const log = JSON.parse(
      (await call(api, "GET", `/nodes/pve/tasks/${encodeURIComponent(bad)}/log`)).body,
    ) as {
      data: Array<{ n: number; t: string }>;
      total: number;
    };
    assert.equal(log.data.at(-1)?.t, `TASK ERROR: ${failed["exitstatus"]}`);
    assert.equal(log.total, log.data.length);
  });

  it("a privilege-separated token without ACLs of its own gets 403 and empty lists", async () => {
    const secret = await inspect(sim.dir, (ctx) => {
      addAcl(ctx.state, "/", "PVEAdmin", "sandbox@pve");
      return addToken(ctx.state, "sandbox@pve!orch", true);
    });
    const token = `sandbox@pve!orch=${secret}`;
    assert.deepEqual(await json(api, "GET", "/nodes/pve/qemu", { token }), []);
    const denied = await call(api, "DELETE", "/nodes/pve/qemu/101", { token });
    assert.equal(denied.status, 403);
    assert.equal(denied.reason, "Permission check failed (/vms/101, VM.Allocate)");
    assert.deepEqual(JSON.parse(denied.body), {
      data: null,
      message: "Permission check failed (/vms/101, VM.Allocate)\n",
    });
    assert.equal(await json(api, "GET", "/cluster/nextid", { token }), "100");

    await inspect(sim.dir, (ctx) => addAcl(ctx.state, "/vms", "PVEVMAdmin", "sandbox@pve!orch"));
    assert.equal(((await json(api, "GET", "/nodes/pve/qemu", { token })) as unknown[]).length, 2);
    const storage = await call(api, "POST", "/nodes/pve/qemu/9000/clone", { token, body: "newid=130" });
    assert.equal(storage.reason, "Permission check failed (/storage/local-zfs, Datastore.AllocateSpace)");
    await inspect(sim.dir, (ctx) => {
      addAcl(ctx.state, "/storage", "PVEDatastoreUser", "sandbox@pve!orch");
      addAcl(ctx.state, "/sdn", "PVESDNUser", "sandbox@pve!orch");
    });
    const upid = (await json(api, "POST", "/nodes/pve/qemu/9000/clone", {
      token,
      body: "newid=130",
    })) as string;
    assert.match(upid, /:qmclone:9000:sandbox@pve!orch:$/);
    assert.equal((await waitUpid(api, upid, token))["exitstatus"], "OK");
  });

  it("faults: HTTP 500 on a path once, then an API that refuses connections or hangs", async () => {
    await setControl(sim.dir, {}, [
      "http500=path=/status/current,times=1,message=got timeout waiting for pvestatd",
    ]);
    const broken = await call(api, "GET", "/nodes/pve/qemu/101/status/current");
    assert.equal(broken.status, 500);
    assert.equal(broken.reason, "got timeout waiting for pvestatd");
    assert.equal((await call(api, "GET", "/nodes/pve/qemu/101/status/current")).status, 200);

    await setControl(sim.dir, {}, ["api_down"]);
    await assert.rejects(call(api, "GET", "/version"), /ECONNRESET|socket hang up|disconnected/);
    await clearFaults(sim.dir);
    await setControl(sim.dir, {}, ["api_down=hang"]);
    await assert.rejects(call(api, "GET", "/version", { timeoutMs: 200 }), /timeout/);
    await clearFaults(sim.dir);
    assert.equal((await call(api, "GET", "/version")).status, 200);
  });
});

describe("pvesim HTTPS: a separate server process and the proxmox-api client", () => {
  let sim: Sim;
  let api: SimApi;
  before(async () => {
    sim = createSim({ knobs: FAST });
    api = await startApiProcess(sim);
  });
  after(async () => {
    await api.stop();
    sim.cleanup();
  });

  it("works with proxmox-api 1.1.1 given a fetch that trusts the simulator's CA", async () => {
    const dispatcher = new Agent({ connect: { ca: api.ca } });
    const px = proxmoxApi({
      host: "127.0.0.1",
      port: api.port,
      tokenID: api.tokenId,
      tokenSecret: api.tokenSecret,
      fetch: (url, init) => undiciFetch(url, { ...init, dispatcher }),
    });
    try {
      assert.equal(await px.cluster.nextid.$get(), "100");
      const upid = await px.nodes
        .$("pve")
        .qemu.$(9000)
        .clone.$post({ newid: 140, name: "sbx-140", full: false });
      let status: { status: string; exitstatus?: string } = { status: "running" };
      for (let i = 0; i < 100 && status.status !== "stopped"; i++) {
        status = (await px.nodes.$("pve").tasks.$(upid).status.$get()) as {
          status: string;
          exitstatus?: string;
        };
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(status.exitstatus, "OK");
      const config = await px.nodes.$("pve").qemu.$(140).config.$get();
      assert.equal(config.name, "sbx-140");
      await assert.rejects(px.nodes.$("pve").qemu.$(999).status.current.$get(), (err: Error) => {
        assert.match(
          err.message,
          /return Error 500 Configuration file 'nodes\/pve\/qemu-server\/999\.conf' does not exist/,
        );
        return true;
      });
    } finally {
      await dispatcher.close();
    }
  });
});
