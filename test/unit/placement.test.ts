/** Which node agentlabd runs on, and the refusal of a template on another node. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { DaemonContext } from "../../src/daemon/context.js";
import { daemonNode, nodeNameOfHost, templateNodeRefusal } from "../../src/daemon/services/placement.js";
import { AgentlabError } from "../../src/protocol/errors.js";

function ctxWith(nodes: string[], proxmoxNode = ""): DaemonContext {
  return {
    config: { proxmox_node: proxmoxNode, snippets_dir: "/var/lib/vz/snippets" },
    configPath: "/etc/agentlab/config.yaml",
    backend: { listNodes: async () => nodes.map((node) => ({ node, online: true })) },
  } as unknown as DaemonContext;
}

describe("daemonNode", () => {
  test("the host name up to the first dot, as PVE names its node", () => {
    assert.equal(nodeNameOfHost("pve1.example.com"), "pve1");
    assert.equal(nodeNameOfHost("pve1"), "pve1");
  });

  test("proxmox_node wins; else this host's node when it is one; else the only node", async () => {
    assert.equal(await daemonNode(ctxWith(["a", "b"], "b"), "a.lan"), "b");
    assert.equal(await daemonNode(ctxWith(["a", "b"]), "b.lan"), "b");
    assert.equal(await daemonNode(ctxWith(["a"]), "elsewhere"), "a");
  });

  test("the node list is asked once per daemon; doctor's check asks afresh", async () => {
    let asked = 0;
    const nodes = ["a", "b"];
    const ctx = ctxWith(nodes);
    (ctx.backend as { listNodes: () => Promise<unknown> }).listNodes = async () => {
      asked++;
      return nodes.map((node) => ({ node, online: true }));
    };
    assert.equal(await daemonNode(ctx, "b.lan"), "b");
    assert.equal(await daemonNode(ctx, "b.lan"), "b");
    assert.equal(asked, 1, "the second create must not list the nodes again");
    assert.equal(await daemonNode(ctx, "b.lan", { fresh: true }), "b");
    assert.equal(asked, 2, "doctor's check asks Proxmox afresh");
    const solo = ["solo"];
    const offHost = ctxWith(solo);
    (offHost.backend as { listNodes: () => Promise<unknown> }).listNodes = async () => {
      asked++;
      return solo.map((node) => ({ node, online: true }));
    };
    assert.equal(await daemonNode(offHost, "elsewhere"), "solo");
    solo.push("zzz");
    assert.equal(await daemonNode(offHost, "elsewhere"), "solo", "the daemon stays on the node it found");
    assert.equal(asked, 3);
    await assert.rejects(daemonNode(offHost, "elsewhere", { fresh: true }), /cannot tell which node/);
  });

  test("a cluster of several nodes that does not list this host: CONFIG_INVALID naming proxmox_node", async () => {
    await assert.rejects(daemonNode(ctxWith(["b", "a"]), "ci-runner.lan"), (error: unknown) => {
      assert.ok(error instanceof AgentlabError);
      assert.equal(error.code, "CONFIG_INVALID");
      assert.equal(
        error.message,
        "agentlabd cannot tell which node of the cluster it runs on: this host is ci-runner, the nodes are a, b",
      );
      assert.equal(
        error.hint,
        "set proxmox_node in /etc/agentlab/config.yaml to the node whose snippets directory is /var/lib/vz/snippets (the node agentlabd runs on), then restart agentlabd",
      );
      return true;
    });
  });
});

describe("templateNodeRefusal", () => {
  test("none for a template on the daemon's node; PROVISIONING_FAILED naming both nodes otherwise", async () => {
    const ctx = ctxWith(["pve1", "pve2"], "pve1");
    assert.equal(await templateNodeRefusal(ctx, { vmid: 9000, node: "pve1" }, "p"), undefined);
    const refusal = await templateNodeRefusal(ctx, { vmid: 9000, node: "pve2" }, "p");
    assert.equal(refusal?.code, "PROVISIONING_FAILED");
    assert.match(
      refusal?.message ?? "",
      /^template 9000 of profile "p" is on node pve2, but agentlabd runs on node pve1: /,
    );
    assert.deepEqual(refusal?.details, {
      profile: "p",
      template_vmid: 9000,
      template_node: "pve2",
      daemon_node: "pve1",
    });
  });
});
