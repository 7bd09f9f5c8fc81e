import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { apiPath } from "../../src/daemon/proxmox/transport.js";
import { pveshArgs } from "../../src/daemon/proxmox/transport-shell.js";

describe("Proxmox API paths are raw segments; each transport renders them", () => {
  const upid = "UPID:pve:0000AB12:00C0FFEE:6750A1B2:qmclone:9000:agentlab@pve!daemon:";

  test("an interpolated value is one segment, even with ':' '@' '!' or '/'", () => {
    const vm = apiPath`/nodes/${"pve"}/qemu/${1000}`;
    assert.deepEqual(apiPath`${vm}/status/start`.segments, [
      "nodes",
      "pve",
      "qemu",
      "1000",
      "status",
      "start",
    ]);
    const volid = "local:1000/vm-1000-disk-0.qcow2";
    const content = apiPath`/nodes/${"pve"}/storage/${"local"}/content/${volid}`;
    assert.deepEqual(content.segments, ["nodes", "pve", "storage", "local", "content", volid]);
    assert.equal(String(content), `/nodes/pve/storage/local/content/${volid}`);
    assert.deepEqual(apiPath`/nodes/${"pve"}/tasks/${upid}/status`.segments.at(3), upid);
  });

  test("pvesh gets the path unescaped: it never unescapes (pvesh.pm:403-414)", () => {
    const args = pveshArgs("GET", apiPath`/nodes/${"pve"}/tasks/${upid}/status`);
    assert.equal(args[1], `/nodes/pve/tasks/${upid}/status`);
    assert.doesNotMatch(args[1]!, /%/);
    const volume = pveshArgs(
      "DELETE",
      apiPath`/nodes/${"pve"}/storage/${"local-zfs"}/content/${"local-zfs:vm-1000-disk-0"}`,
    );
    assert.equal(volume[1], "/nodes/pve/storage/local-zfs/content/local-zfs:vm-1000-disk-0");
  });

  test("an empty segment is a programming error, not a different path", () => {
    assert.throws(() => apiPath`/nodes/${""}/qemu`, /empty path segment/);
  });
});
