/** Cluster-wide and node endpoints: version, nodes, cluster status/resources, nextid. */
import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type AuthId, checkPriv, hasPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { tlsDir } from "./paths.js";
import { num, type Params, str } from "./schema.js";
import { storageStatus } from "./storage.js";
import type { NodeRec } from "./types.js";
import { checkNode, getVm, qemuListEntry, resourceEntry, statusCurrent } from "./vms.js";

const NODE_MAXMEM = 64 * 1024 ** 3;
const NODE_MAXDISK = 100 * 1024 ** 3;

export function version(ctx: Ctx): Record<string, string> {
  const v = ctx.control.pve_version;
  return { version: v, release: v.split(".").slice(0, 2).join("."), repoid: "5a2d5e0b1c7f3e94" };
}

function fingerprint(dir: string): string | undefined {
  const path = join(tlsDir(dir), "server.pem");
  if (!existsSync(path)) return undefined;
  return new X509Certificate(readFileSync(path)).fingerprint256;
}

function nodeStats(ctx: Ctx, n: NodeRec): Record<string, unknown> {
  const running = Object.values(ctx.state.vms).filter(
    (v) => v.node === n.name && v.runtime.status === "running",
  );
  return {
    cpu: Math.min(1, 0.01 + running.length * 0.02),
    maxcpu: 16,
    mem: 4 * 1024 ** 3 + running.length * 512 * 1024 ** 2,
    maxmem: NODE_MAXMEM,
    disk: 12 * 1024 ** 3,
    maxdisk: NODE_MAXDISK,
    uptime: Math.floor((ctx.now - n.bootMs) / 1000),
  };
}

export function listNodes(ctx: Ctx, auth: AuthId): Array<Record<string, unknown>> {
  const fp = fingerprint(ctx.dir);
  return ctx.state.nodes.map((n) => {
    const entry: Record<string, unknown> = {
      node: n.name,
      status: n.online ? "online" : "offline",
      id: `node/${n.name}`,
      type: "node",
      level: "",
    };
    if (fp) entry["ssl_fingerprint"] = fp;
    if (n.online && hasPriv(ctx.state, auth, `/nodes/${n.name}`, ["Sys.Audit"]))
      Object.assign(entry, nodeStats(ctx, n));
    return entry;
  });
}

export function clusterStatus(ctx: Ctx, localNode: string): Array<Record<string, unknown>> {
  return [
    {
      type: "cluster",
      id: "cluster",
      name: ctx.state.cluster,
      nodes: ctx.state.nodes.length,
      quorate: 1,
      version: 1,
    },
    ...ctx.state.nodes.map((n, i) => ({
      type: "node",
      id: `node/${n.name}`,
      name: n.name,
      nodeid: n.nodeid,
      online: n.online ? 1 : 0,
      local: n.name === localNode ? 1 : 0,
      ip: `192.0.2.${10 + i}`,
      level: "",
    })),
  ];
}

export function clusterResources(ctx: Ctx, auth: AuthId, p: Params): Array<Record<string, unknown>> {
  const type = str(p, "type");
  const out: Array<Record<string, unknown>> = [];
  if (!type || type === "vm") {
    const vms = Object.values(ctx.state.vms).sort((a, b) => a.vmid - b.vmid);
    for (const vm of vms) {
      if (hasPriv(ctx.state, auth, `/vms/${vm.vmid}`, ["VM.Audit"])) out.push(resourceEntry(ctx, vm));
    }
  }
  if (!type || type === "node") {
    for (const n of ctx.state.nodes) {
      if (!hasPriv(ctx.state, auth, `/nodes/${n.name}`, ["Sys.Audit"])) continue;
      out.push({
        id: `node/${n.name}`,
        type: "node",
        node: n.name,
        status: n.online ? "online" : "offline",
        level: "",
        ...nodeStats(ctx, n),
      });
    }
  }
  if (!type || type === "storage") {
    for (const n of ctx.state.nodes) {
      for (const s of ctx.state.storages) {
        if (
          !hasPriv(ctx.state, auth, `/storage/${s.id}`, ["Datastore.Audit", "Datastore.AllocateSpace"], true)
        )
          continue;
        const st = storageStatus(ctx, n.name, s);
        out.push({
          id: `storage/${n.name}/${s.id}`,
          type: "storage",
          storage: s.id,
          node: n.name,
          status: s.active ? "available" : "unknown",
          plugintype: s.type,
          content: st.content,
          disk: st.used,
          maxdisk: st.total,
          shared: st.shared,
        });
      }
    }
  }
  return out;
}

export function listQemu(ctx: Ctx, auth: AuthId, node: string, p: Params): Array<Record<string, unknown>> {
  checkNode(ctx, node);
  const full = Boolean(num(p, "full"));
  return Object.values(ctx.state.vms)
    .filter((vm) => vm.node === node && hasPriv(ctx.state, auth, `/vms/${vm.vmid}`, ["VM.Audit"]))
    .sort((a, b) => a.vmid - b.vmid)
    .map((vm) => qemuListEntry(ctx, vm, full));
}

export function vmStatusCurrent(ctx: Ctx, auth: AuthId, node: string, vmid: number): Record<string, unknown> {
  checkPriv(ctx.state, auth, `/vms/${vmid}`, ["VM.Audit"]);
  return statusCurrent(ctx, getVm(ctx, node, vmid));
}

export function nodeStatus(ctx: Ctx, auth: AuthId, node: string): Record<string, unknown> {
  checkNode(ctx, node);
  checkPriv(ctx.state, auth, `/nodes/${node}`, ["Sys.Audit"]);
  const n = ctx.state.nodes.find((x) => x.name === node)!;
  const s = nodeStats(ctx, n);
  return {
    uptime: s["uptime"],
    cpu: s["cpu"],
    memory: { total: s["maxmem"], used: s["mem"], free: Number(s["maxmem"]) - Number(s["mem"]) },
    rootfs: { total: s["maxdisk"], used: s["disk"], avail: Number(s["maxdisk"]) - Number(s["disk"]) },
    cpuinfo: { cpus: s["maxcpu"], sockets: 1, cores: s["maxcpu"], model: "Simulated CPU" },
    pveversion: `pve-manager/${ctx.control.pve_version}/5a2d5e0b1c7f3e94`,
    kversion: "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC",
  };
}
