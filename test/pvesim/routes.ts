/**
 * The API: one table of (method, path, parameter schema, handler) that both faces use — the HTTPS
 * server under /api2/json and `pvesh` — so the two can never disagree.
 */
import type { AuthId } from "./access.js";
import { checkPriv, pveVersionAtLeast } from "./access.js";
import { accessPermissions, USERID_OR_TOKEN } from "./access-api.js";
import { cloneVm } from "./clone.js";
import {
  clusterResources,
  clusterStatus,
  listNodes,
  listQemu,
  nodeStatus,
  version,
  vmStatusCurrent,
} from "./cluster-api.js";
import { getConfig, getPending, postConfig, putConfig, resizeDisk, unlinkDisks } from "./config-ops.js";
import { optionSpec } from "./config-schema.js";
import type { Ctx } from "./context.js";
import { createVm } from "./create.js";
import { networkInterfaces, requireAgent } from "./guest.js";
import { destroyVm, templateVm } from "./lifecycle.js";
import { rebootVm, resetVm, resumeVm, shutdownVm, startVm, stopVm, suspendVm } from "./power.js";
import { realAgentCall } from "./qemu-agent.js";
import { isReal } from "./qemu-power.js";
import { BOOL_OPT, NODE, type ParamSpec, type Params, type Schema, STORAGE_ID, str, VMID } from "./schema.js";
import {
  createSnapshot,
  deleteSnapshot,
  listSnapshots,
  rollbackSnapshot,
  SNAPNAME_FORMAT,
  snapshotConfig,
  updateSnapshotConfig,
} from "./snapshots.js";
import {
  allocContent,
  deleteContent,
  getStorageStatus,
  listContent,
  listStorageConfig,
  listStorages,
  readStorageConfig,
  volumeAttributes,
} from "./storage-api.js";
import { listTasks, stopTaskApi, taskLog, taskStatus } from "./task-api.js";
import type { TaskRec } from "./types.js";
import { DRIVE_KEY } from "./vmconfig.js";
import { getVm, nextId } from "./vms.js";

export interface RouteCall {
  ctx: Ctx;
  auth: AuthId;
  params: Params;
  /** The node that "is" the server (pvesh's host, the API's local node). */
  localNode: string;
}

export interface RouteResult {
  data: unknown;
  /** Extra envelope members (`total`). */
  extra?: Record<string, unknown>;
  /** The worker task started, for CLIs that wait in the foreground. */
  task?: TaskRec;
  /** What a CLI prints on stdout for a synchronous call (e.g. `update VM 101: -cores 2`). */
  messages?: string[];
  /** Warnings a CLI prints on stderr. */
  warnings?: string[];
  /**
   * Work that waits on something outside the model (a real guest agent's socket): run after the state
   * lock is released; its result replaces this one.
   */
  deferred?: () => Promise<RouteResult>;
}

export type Method = "GET" | "POST" | "PUT" | "DELETE";

export interface Route {
  method: Method;
  path: string;
  params: Record<string, ParamSpec>;
  additional?: Schema["additional"];
  handler: (call: RouteCall) => RouteResult;
}

const node = (c: RouteCall): string => String(c.params["node"]);
const vmid = (c: RouteCall): number => Number(c.params["vmid"]);
const storage = (c: RouteCall): string => String(c.params["storage"]);
const data = (value: unknown): RouteResult => ({ data: value });
const task = (t: TaskRec): RouteResult => ({ data: t.upid, task: t });
const index = (field: string, names: string[]): RouteResult => ({ data: names.map((n) => ({ [field]: n })) });

const OPT_STR: ParamSpec = { type: "string", optional: true };
const OPT_INT: ParamSpec = { type: "integer", optional: true };
const SNAPNAME: ParamSpec = { type: "string", format: SNAPNAME_FORMAT };
const VM_PATH = { node: NODE, vmid: VMID };
const DNS_NAME: ParamSpec = {
  type: "string",
  optional: true,
  pattern:
    /^(?=.{1,253}$)[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*$/,
};

const CONFIG_UPDATE_PARAMS: Record<string, ParamSpec> = {
  ...VM_PATH,
  delete: OPT_STR,
  revert: OPT_STR,
  digest: { type: "string", optional: true, maxLength: 64 },
  skiplock: BOOL_OPT,
  force: BOOL_OPT,
};

/**
 * PVE 9 guards the read-only agent commands with VM.GuestAgent.Audit or .Unrestricted
 * (qemu-server API2/Qemu/Agent.pm:65-67, 183-184; commit b92a40ce); before that every agent command
 * needed VM.Monitor (the same file at b92a40ce^, :147).
 */
function agentCall(c: RouteCall, command: string, result: () => unknown): RouteResult {
  const privs = pveVersionAtLeast(c.ctx.control.pve_version, [9, 0, 0])
    ? ["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"]
    : ["VM.Monitor"];
  checkPriv(c.ctx.state, c.auth, `/vms/${vmid(c)}`, privs, true);
  const vm = getVm(c.ctx, node(c), vmid(c));
  if (isReal(vm)) return realAgentCall(c.ctx, vm, command);
  requireAgent(c.ctx, vm);
  return data({ result: result() });
}

export const ROUTES: Route[] = [
  {
    method: "GET",
    path: "/",
    params: {},
    handler: () => index("subdir", ["version", "cluster", "nodes", "storage", "access", "pools"]),
  },
  { method: "GET", path: "/version", params: {}, handler: (c) => data(version(c.ctx)) },
  {
    method: "GET",
    path: "/access/permissions",
    params: { userid: USERID_OR_TOKEN, path: OPT_STR },
    handler: (c) => data(accessPermissions(c.ctx, c.auth, c.params)),
  },
  {
    method: "GET",
    path: "/cluster",
    params: {},
    handler: () => index("name", ["nextid", "resources", "status", "tasks", "options"]),
  },
  {
    method: "GET",
    path: "/cluster/nextid",
    params: { vmid: { ...VMID, optional: true } },
    handler: (c) => {
      const wanted = c.params["vmid"];
      return data(nextId(c.ctx, wanted === undefined ? undefined : Number(wanted)));
    },
  },
  {
    method: "GET",
    path: "/cluster/resources",
    params: { type: { type: "string", optional: true, enum: ["vm", "storage", "node", "sdn"] } },
    handler: (c) => data(clusterResources(c.ctx, c.auth, c.params)),
  },
  {
    method: "GET",
    path: "/cluster/status",
    params: {},
    handler: (c) => data(clusterStatus(c.ctx, c.localNode)),
  },
  {
    method: "GET",
    path: "/storage",
    params: { type: { type: "string", optional: true, enum: ["dir", "lvm", "lvmthin", "zfspool"] } },
    handler: (c) => data(listStorageConfig(c.ctx, c.auth, c.params)),
  },
  {
    method: "GET",
    path: "/storage/{storage}",
    params: { storage: STORAGE_ID },
    handler: (c) => data(readStorageConfig(c.ctx, c.auth, storage(c))),
  },
  { method: "GET", path: "/nodes", params: {}, handler: (c) => data(listNodes(c.ctx, c.auth)) },
  {
    method: "GET",
    path: "/nodes/{node}",
    params: { node: NODE },
    handler: () => index("name", ["qemu", "storage", "tasks", "status", "version"]),
  },
  {
    method: "GET",
    path: "/nodes/{node}/status",
    params: { node: NODE },
    handler: (c) => data(nodeStatus(c.ctx, c.auth, node(c))),
  },
  {
    method: "GET",
    path: "/nodes/{node}/version",
    params: { node: NODE },
    handler: (c) => data(version(c.ctx)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu",
    params: { node: NODE, full: BOOL_OPT },
    handler: (c) => data(listQemu(c.ctx, c.auth, node(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu",
    params: {
      node: NODE,
      vmid: VMID,
      pool: OPT_STR,
      start: BOOL_OPT,
      storage: { ...STORAGE_ID, optional: true },
    },
    additional: optionSpec,
    handler: (c) => task(createVm(c.ctx, c.auth, node(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}",
    params: VM_PATH,
    handler: (c) => {
      checkPriv(c.ctx.state, c.auth, `/vms/${vmid(c)}`, ["VM.Audit"]);
      getVm(c.ctx, node(c), vmid(c));
      return index("subdir", [
        "config",
        "pending",
        "status",
        "unlink",
        "vncproxy",
        "snapshot",
        "agent",
        "clone",
        "resize",
        "template",
      ]);
    },
  },
  {
    method: "DELETE",
    path: "/nodes/{node}/qemu/{vmid}",
    params: { ...VM_PATH, purge: BOOL_OPT, "destroy-unreferenced-disks": BOOL_OPT, skiplock: BOOL_OPT },
    handler: (c) => task(destroyVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/clone",
    params: {
      ...VM_PATH,
      newid: VMID,
      name: DNS_NAME,
      description: OPT_STR,
      pool: OPT_STR,
      snapname: { ...SNAPNAME, optional: true },
      storage: { ...STORAGE_ID, optional: true },
      format: { type: "string", optional: true, enum: ["raw", "qcow2", "vmdk"] },
      full: BOOL_OPT,
      target: { ...NODE, optional: true },
      bwlimit: { type: "integer", optional: true, minimum: 0 },
    },
    handler: (c) => task(cloneVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/config",
    params: { ...VM_PATH, current: BOOL_OPT, snapshot: { ...SNAPNAME, optional: true } },
    handler: (c) => data(getConfig(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "PUT",
    path: "/nodes/{node}/qemu/{vmid}/config",
    params: CONFIG_UPDATE_PARAMS,
    additional: optionSpec,
    handler: (c) => {
      const r = putConfig(c.ctx, c.auth, node(c), vmid(c), c.params);
      return { data: null, messages: [r.summary], warnings: r.warnings };
    },
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/config",
    params: {
      ...CONFIG_UPDATE_PARAMS,
      background_delay: { type: "integer", optional: true, minimum: 1, maximum: 30 },
    },
    additional: optionSpec,
    handler: (c) => task(postConfig(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/pending",
    params: VM_PATH,
    handler: (c) => data(getPending(c.ctx, c.auth, node(c), vmid(c))),
  },
  {
    method: "PUT",
    path: "/nodes/{node}/qemu/{vmid}/unlink",
    params: { ...VM_PATH, idlist: { type: "string" }, force: BOOL_OPT },
    handler: (c) => {
      const r = unlinkDisks(c.ctx, c.auth, node(c), vmid(c), c.params);
      return { data: null, warnings: r.warnings };
    },
  },
  {
    method: "PUT",
    path: "/nodes/{node}/qemu/{vmid}/resize",
    params: {
      ...VM_PATH,
      disk: { type: "string", pattern: DRIVE_KEY },
      size: { type: "string", pattern: /^\+?\d+(\.\d+)?[KMGT]?$/ },
      digest: OPT_STR,
      skiplock: BOOL_OPT,
    },
    handler: (c) => task(resizeDisk(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/template",
    params: { ...VM_PATH, disk: { type: "string", optional: true, pattern: DRIVE_KEY } },
    handler: (c) => task(templateVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/status",
    params: VM_PATH,
    handler: (c) => {
      getVm(c.ctx, node(c), vmid(c));
      return index("subdir", [
        "current",
        "start",
        "stop",
        "reset",
        "shutdown",
        "suspend",
        "reboot",
        "resume",
      ]);
    },
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/status/current",
    params: VM_PATH,
    handler: (c) => data(vmStatusCurrent(c.ctx, c.auth, node(c), vmid(c))),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/start",
    params: { ...VM_PATH, skiplock: BOOL_OPT, timeout: OPT_INT, machine: OPT_STR, "force-cpu": OPT_STR },
    handler: (c) => task(startVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/stop",
    params: {
      ...VM_PATH,
      skiplock: BOOL_OPT,
      timeout: OPT_INT,
      keepActive: BOOL_OPT,
      "overrule-shutdown": BOOL_OPT,
    },
    handler: (c) => task(stopVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/shutdown",
    params: { ...VM_PATH, skiplock: BOOL_OPT, timeout: OPT_INT, forceStop: BOOL_OPT, keepActive: BOOL_OPT },
    handler: (c) => task(shutdownVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/reboot",
    params: { ...VM_PATH, timeout: OPT_INT },
    handler: (c) => task(rebootVm(c.ctx, c.auth, node(c), vmid(c))),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/reset",
    params: { ...VM_PATH, skiplock: BOOL_OPT },
    handler: (c) => task(resetVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/suspend",
    params: {
      ...VM_PATH,
      skiplock: BOOL_OPT,
      todisk: BOOL_OPT,
      statestorage: { ...STORAGE_ID, optional: true },
    },
    handler: (c) => task(suspendVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/status/resume",
    params: { ...VM_PATH, skiplock: BOOL_OPT, nocheck: BOOL_OPT },
    handler: (c) => task(resumeVm(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/agent",
    params: VM_PATH,
    handler: () => index("name", ["get-osinfo", "info", "network-get-interfaces", "ping"]),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
    params: VM_PATH,
    handler: (c) =>
      agentCall(c, "network-get-interfaces", () => networkInterfaces(c.ctx, getVm(c.ctx, node(c), vmid(c)))),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/agent/ping",
    params: VM_PATH,
    handler: (c) => agentCall(c, "ping", () => ({})),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/agent/info",
    params: VM_PATH,
    handler: (c) =>
      agentCall(c, "info", () => ({
        version: "8.2.2",
        supported_commands: [
          "guest-ping",
          "guest-info",
          "guest-network-get-interfaces",
          "guest-get-osinfo",
          "guest-shutdown",
        ].map((name) => ({ name, enabled: true, "success-response": true })),
      })),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/agent/get-osinfo",
    params: VM_PATH,
    handler: (c) =>
      agentCall(c, "get-osinfo", () => ({
        id: "ubuntu",
        name: "Ubuntu",
        "pretty-name": "Ubuntu 24.04.2 LTS",
        version: "24.04.2 LTS (Noble Numbat)",
        "version-id": "24.04",
        "kernel-release": "6.8.0-60-generic",
        machine: "x86_64",
      })),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/agent",
    params: {
      ...VM_PATH,
      command: { type: "string", enum: ["ping", "info", "network-get-interfaces", "get-osinfo"] },
    },
    handler: (c) => {
      const command = str(c.params, "command");
      if (command === "network-get-interfaces") {
        return agentCall(c, command, () => networkInterfaces(c.ctx, getVm(c.ctx, node(c), vmid(c))));
      }
      return agentCall(c, command ?? "ping", () => ({}));
    },
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/snapshot",
    params: VM_PATH,
    handler: (c) => data(listSnapshots(c.ctx, c.auth, node(c), vmid(c))),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/snapshot",
    params: { ...VM_PATH, snapname: SNAPNAME, description: OPT_STR, vmstate: BOOL_OPT },
    handler: (c) => task(createSnapshot(c.ctx, c.auth, node(c), vmid(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
    params: { ...VM_PATH, snapname: SNAPNAME },
    handler: (c) => {
      snapshotConfig(c.ctx, c.auth, node(c), vmid(c), String(c.params["snapname"]));
      return index("rel", ["config", "rollback"]);
    },
  },
  {
    method: "DELETE",
    path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
    params: { ...VM_PATH, snapname: SNAPNAME, force: BOOL_OPT },
    handler: (c) =>
      task(deleteSnapshot(c.ctx, c.auth, node(c), vmid(c), String(c.params["snapname"]), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
    params: { ...VM_PATH, snapname: SNAPNAME },
    handler: (c) => data(snapshotConfig(c.ctx, c.auth, node(c), vmid(c), String(c.params["snapname"]))),
  },
  {
    method: "PUT",
    path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
    params: { ...VM_PATH, snapname: SNAPNAME, description: OPT_STR },
    handler: (c) =>
      data(updateSnapshotConfig(c.ctx, c.auth, node(c), vmid(c), String(c.params["snapname"]), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
    params: { ...VM_PATH, snapname: SNAPNAME, start: BOOL_OPT },
    handler: (c) =>
      task(rollbackSnapshot(c.ctx, c.auth, node(c), vmid(c), String(c.params["snapname"]), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/storage",
    params: {
      node: NODE,
      storage: { ...STORAGE_ID, optional: true },
      content: OPT_STR,
      enabled: BOOL_OPT,
      format: BOOL_OPT,
    },
    handler: (c) => data(listStorages(c.ctx, c.auth, node(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/storage/{storage}",
    params: { node: NODE, storage: STORAGE_ID },
    handler: () => index("subdir", ["content", "status"]),
  },
  {
    method: "GET",
    path: "/nodes/{node}/storage/{storage}/status",
    params: { node: NODE, storage: STORAGE_ID },
    handler: (c) => data(getStorageStatus(c.ctx, c.auth, node(c), storage(c))),
  },
  {
    method: "GET",
    path: "/nodes/{node}/storage/{storage}/content",
    params: { node: NODE, storage: STORAGE_ID, content: OPT_STR, vmid: { ...VMID, optional: true } },
    handler: (c) => data(listContent(c.ctx, c.auth, node(c), storage(c), c.params)),
  },
  {
    method: "POST",
    path: "/nodes/{node}/storage/{storage}/content",
    params: {
      node: NODE,
      storage: STORAGE_ID,
      vmid: VMID,
      filename: { type: "string" },
      size: { type: "string", pattern: /^\d+[MG]?$/ },
      format: { type: "string", optional: true, enum: ["raw", "qcow2", "subvol", "vmdk"] },
    },
    handler: (c) => data(allocContent(c.ctx, c.auth, node(c), storage(c), c.params)),
  },
  {
    method: "GET",
    path: "/nodes/{node}/storage/{storage}/content/{volume}",
    params: { node: NODE, storage: STORAGE_ID, volume: { type: "string" } },
    handler: (c) => data(volumeAttributes(c.ctx, c.auth, node(c), storage(c), String(c.params["volume"]))),
  },
  {
    method: "DELETE",
    path: "/nodes/{node}/storage/{storage}/content/{volume}",
    params: { node: NODE, storage: STORAGE_ID, volume: { type: "string" }, delay: OPT_INT },
    handler: (c) => task(deleteContent(c.ctx, c.auth, node(c), storage(c), String(c.params["volume"]))),
  },
  {
    method: "GET",
    path: "/nodes/{node}/tasks",
    params: {
      node: NODE,
      start: { type: "integer", optional: true, minimum: 0 },
      limit: { type: "integer", optional: true, minimum: 0 },
      vmid: { ...VMID, optional: true },
      typefilter: OPT_STR,
      userfilter: OPT_STR,
      errors: BOOL_OPT,
      source: { type: "string", optional: true, enum: ["archive", "active", "all"] },
      since: OPT_INT,
      until: OPT_INT,
      statusfilter: OPT_STR,
    },
    handler: (c) => {
      const r = listTasks(c.ctx, c.auth, node(c), c.params);
      return { data: r.data, extra: { total: r.total } };
    },
  },
  {
    method: "GET",
    path: "/nodes/{node}/tasks/{upid}",
    params: { node: NODE, upid: { type: "string" } },
    handler: (c) => {
      taskStatus(c.ctx, c.auth, node(c), String(c.params["upid"]));
      return index("name", ["log", "status"]);
    },
  },
  {
    method: "DELETE",
    path: "/nodes/{node}/tasks/{upid}",
    params: { node: NODE, upid: { type: "string" } },
    handler: (c) => data(stopTaskApi(c.ctx, c.auth, node(c), String(c.params["upid"]))),
  },
  {
    method: "GET",
    path: "/nodes/{node}/tasks/{upid}/status",
    params: { node: NODE, upid: { type: "string" } },
    handler: (c) => data(taskStatus(c.ctx, c.auth, node(c), String(c.params["upid"]))),
  },
  {
    method: "GET",
    path: "/nodes/{node}/tasks/{upid}/log",
    params: {
      node: NODE,
      upid: { type: "string" },
      start: { type: "integer", optional: true, minimum: 0 },
      limit: { type: "integer", optional: true, minimum: 0 },
      download: BOOL_OPT,
    },
    handler: (c) => {
      const r = taskLog(c.ctx, c.auth, node(c), String(c.params["upid"]), c.params);
      return { data: r.data, extra: { total: r.total } };
    },
  },
];

export interface Match {
  route: Route;
  pathParams: Record<string, string>;
}

function segments(path: string): string[] {
  return path.split("/").filter((s) => s !== "");
}

/**
 * Routes whose last parameter takes the rest of the path, '/' included: the storage content
 * subclass is mounted with `fragmentDelimiter => ''` because volids may contain '/'
 * (pve-storage src/PVE/API2/Storage/Status.pm:33-38, applied in pve-common RESTHandler.pm:413-424).
 */
const WHOLE_REST = new Set(["/nodes/{node}/storage/{storage}/content/{volume}"]);

/**
 * The route for a method and a raw path (PVE answers 501 alike for unknown paths and unknown
 * methods). Segments are taken as they are, never unescaped: that is what RESTHandler does
 * (`find_handler` splits on '/', RESTHandler.pm:437), and pvesh hands it its argv path unchanged
 * (pvesh.pm:403-414). Only the HTTPS face unescapes, before it gets here (server.ts, as
 * pve-http-server AnyEvent.pm:1452 does).
 */
export function matchRoute(method: string, path: string): Match | undefined {
  const parts = segments(path);
  for (const route of ROUTES) {
    if (route.method !== method) continue;
    const pattern = segments(route.path);
    const rest = WHOLE_REST.has(route.path);
    if (rest ? parts.length < pattern.length : pattern.length !== parts.length) continue;
    const pathParams: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < pattern.length; i++) {
      const want = pattern[i]!;
      const have = rest && i === pattern.length - 1 ? parts.slice(i).join("/") : parts[i]!;
      if (want.startsWith("{")) {
        pathParams[want.slice(1, -1)] = have;
      } else if (want !== have) {
        ok = false;
        break;
      }
    }
    if (ok) return { route, pathParams };
  }
  return undefined;
}
