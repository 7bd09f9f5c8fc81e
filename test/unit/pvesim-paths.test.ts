/**
 * Path escaping on the simulator's two faces. pvesh hands its argv path to the handler lookup
 * unchanged (pve-manager PVE/CLI/pvesh.pm:403-414; RESTHandler.pm:437 only splits on '/'), so a
 * percent-encoded UPID or volid reaches the handler as text it cannot parse. pve-http-server
 * unescapes the whole path first (AnyEvent.pm:1452), so the HTTPS face takes both spellings.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Agent, fetch as undiciFetch } from "undici";
import { createSim, runTool, type Sim, type SimApi, startApi } from "../pvesim/harness.js";

const FAST = { clone_ms: 40, full_clone_ms: 60, task_ms: 20 };

async function pveshJson(sim: Sim, args: string[]): Promise<unknown> {
  const r = await runTool(sim, "pvesh", [...args, "--output-format", "json"]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!);
}

describe("pvesim: raw paths on pvesh, unescaped paths on HTTPS", () => {
  let sim: Sim;
  let api: SimApi;
  let dispatcher: Agent;
  let upid: string;
  /** A dir-storage volume: its volid contains '/'. */
  let dirVolid: string;

  async function https(method: string, path: string): Promise<{ status: number; body: unknown }> {
    const res = await undiciFetch(`${api.url}${path}`, {
      method,
      headers: { Authorization: `PVEAPIToken=${api.token}` },
      dispatcher,
    });
    const text = await res.text();
    return { status: res.status, body: text === "" ? null : (JSON.parse(text) as { data: unknown }).data };
  }

  before(async () => {
    sim = createSim({ knobs: FAST });
    api = await startApi(sim);
    dispatcher = new Agent({ connect: { ca: api.ca } });
    upid = String(
      await pveshJson(sim, ["create", "/nodes/pve/qemu/9000/clone", "--newid", "101", "--name", "paths"]),
    );
    assert.match(upid, /^UPID:pve:/);
    dirVolid = String(
      await pveshJson(sim, [
        "create",
        "/nodes/pve/storage/local/content",
        "--vmid",
        "102",
        "--filename",
        "vm-102-disk-0.qcow2",
        "--size",
        "1G",
      ]),
    );
    assert.equal(dirVolid, "local:102/vm-102-disk-0.qcow2");
  });
  after(async () => {
    await dispatcher.close();
    await api.stop();
    sim.cleanup();
  });

  it("pvesh takes a raw UPID and refuses a percent-encoded one as Tasks.pm does", async () => {
    const ok = (await pveshJson(sim, ["get", `/nodes/pve/tasks/${upid}/status`])) as Record<string, unknown>;
    assert.equal(ok.status, "stopped");
    assert.equal(ok.exitstatus, "OK");

    // Tasks.pm:515-516: upid_decode fails -> raise_param_exc({ upid => "unable to parse worker upid" }).
    const encoded = await runTool(sim, "pvesh", [
      "get",
      `/nodes/pve/tasks/${encodeURIComponent(upid)}/status`,
      "--output-format",
      "json",
    ]);
    assert.equal(encoded.code, 255);
    assert.equal(encoded.stdout, "");
    assert.match(encoded.stderr, /^400 Parameter verification failed\.\nupid: unable to parse worker upid\n/);
  });

  it("pvesh takes a raw volid (with '/' on dir storage) and refuses a percent-encoded one", async () => {
    const zfs = (await pveshJson(sim, [
      "get",
      "/nodes/pve/storage/local-zfs/content/local-zfs:base-9000-disk-0",
    ])) as Record<string, unknown>;
    assert.equal(zfs.format, "raw");
    // The content subclass takes the rest of the path as the volume (Status.pm:33-38).
    const dir = (await pveshJson(sim, ["get", `/nodes/pve/storage/local/content/${dirVolid}`])) as Record<
      string,
      unknown
    >;
    assert.equal(dir.format, "qcow2");

    // Content.pm real_volume_id: no ':' in the text, so it becomes "local-zfs:<text>", which the
    // zfs plugin's parse_volname refuses (check_volume_access -> parse_volname).
    const encoded = await runTool(sim, "pvesh", [
      "get",
      `/nodes/pve/storage/local-zfs/content/${encodeURIComponent("local-zfs:base-9000-disk-0")}`,
      "--output-format",
      "json",
    ]);
    assert.equal(encoded.code, 255);
    assert.equal(encoded.stderr, "unable to parse zfs volume name 'local-zfs%3Abase-9000-disk-0'\n");
    const encodedDir = await runTool(sim, "pvesh", [
      "get",
      `/nodes/pve/storage/local/content/${encodeURIComponent(dirVolid)}`,
      "--output-format",
      "json",
    ]);
    assert.equal(encodedDir.code, 255);
    assert.match(
      encodedDir.stderr,
      /unable to parse directory volume name 'local%3A102%2Fvm-102-disk-0\.qcow2'/,
    );
  });

  it("HTTPS unescapes the whole path: encoded and raw UPIDs and volids both resolve", async () => {
    for (const path of [
      `/nodes/pve/tasks/${encodeURIComponent(upid)}/status`,
      `/nodes/pve/tasks/${upid}/status`,
    ]) {
      const r = await https("GET", path);
      assert.equal(r.status, 200, path);
      assert.equal((r.body as Record<string, unknown>).exitstatus, "OK");
    }
    for (const path of [
      `/nodes/pve/storage/local/content/${encodeURIComponent(dirVolid)}`,
      `/nodes/pve/storage/local/content/${dirVolid}`,
    ]) {
      const r = await https("GET", path);
      assert.equal(r.status, 200, path);
      assert.equal((r.body as Record<string, unknown>).format, "qcow2");
    }
  });
});
