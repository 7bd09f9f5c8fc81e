import type { Profile } from "../../config/profiles.js";
import { closest } from "../../config/suggest.js";
import { AgentlabError } from "../../protocol/errors.js";
import {
  CLEAN_SNAPSHOT_NAME,
  type PlanIssue,
  type SandboxDetail,
  type SandboxEvent,
  type Sandbox as SandboxJson,
  SandboxName,
  type SandboxPlan,
  type SandboxSnapshot,
  SandboxTag,
} from "../../protocol/sandbox.js";
import type { DaemonContext } from "../context.js";
import { removeSnippet, renderUserData, writeSnippet } from "../guest/cloud-init.js";
import { KeyedMutex } from "../locks.js";
import { pickGuestIp } from "../network/guest-ip.js";
import { abortableSleep } from "../proxmox/tasks.js";
import type { ClusterVm, SnapshotInfo, VmConfig, VmRef } from "../proxmox/types.js";
import { canTransition, transitionSandbox } from "../state/sandbox.js";
import type { EventRecord } from "../store/events.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import { finalizeJobs } from "./maintenance-steps.js";
import type { Operation } from "./operation.js";

/** Auto-allocated VMIDs start here and grow; they are never reused (DESTROYED rows keep theirs). */
export const FIRST_VMID = 1000;

/** Tag put on every VM agentlab creates, so inventory can tell ours from everything else. */
export const MANAGED_TAG = "agentlab";

/** Name of the snapshot `sandbox revert` goes back to. */
export const CLEAN_SNAPSHOT = CLEAN_SNAPSHOT_NAME;

/** States `sandbox revert` names as valid (upstream's wording); SUSPENDED is accepted too and stopped first. */
const REVERT_STATES: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "STOPPED",
  "COMPLETED",
  "FAILED",
  "TIMEOUT",
];

/** States whose VM agentlab has finished setting up: everything but provisioning and DESTROYED. */
const SETTLED_STATES: readonly SandboxState[] = [
  "READY",
  "RUNNING",
  "SUSPENDED",
  "STOPPED",
  "COMPLETED",
  "FAILED",
  "TIMEOUT",
];

/** How long a snapshot restore that leaves the VM running waits for the guest to report its address. */
const RESTORE_IP_BUDGET_MS = 2000;

/** Sandboxes stopped at the same time by stop --all. */
const STOP_ALL_CONCURRENCY = 4;

export interface UpdateParams {
  vmid: number;
  cores?: number | undefined;
  memory_mb?: number | undefined;
  tags?: string[] | undefined;
}

export interface UpdateResult {
  sandbox: SandboxJson;
  cores?: number;
  memory_mb?: number;
  pending: Array<"cores" | "memory_mb">;
}

export interface RevertResult {
  sandbox: SandboxJson;
  snapshot: string;
  was_running: boolean;
  restarted: boolean;
}

export interface StopAllResult {
  total: number;
  stopped: number;
  skipped: number;
  failed: number;
  results: Array<{
    vmid: number;
    name: string;
    result: "stopped" | "skipped" | "failed";
    state: SandboxState;
    reason?: string;
  }>;
}

export interface ValidateParams {
  profile: string;
  name?: string | undefined;
  ttl_minutes?: number | undefined;
  keepalive?: boolean | undefined;
  vmid?: number | undefined;
  tags?: string[] | undefined;
}

export interface ValidateResult {
  ok: boolean;
  errors: PlanIssue[];
  warnings: PlanIssue[];
  plan: SandboxPlan;
}

/** sandbox.create takes the same request as sandbox.validate. */
export type CreateParams = ValidateParams;

/** The wire form of a row: optional fields left out rather than null, times as RFC 3339. */
export function sandboxJson(row: Sandbox): SandboxJson {
  const json: SandboxJson = {
    vmid: row.vmid,
    name: row.name,
    profile: row.profile,
    state: row.state,
    keepalive: row.keepalive,
    tags: row.tags,
    created_at: row.created_at.toISOString(),
    updated_at: row.updated_at.toISOString(),
  };
  if (row.node) json.node = row.node;
  if (row.ip) json.ip = row.ip;
  if (row.workspace_id) json.workspace_id = row.workspace_id;
  if (row.lease_expires_at) json.lease_expires_at = row.lease_expires_at.toISOString();
  if (row.failure_reason) json.failure_reason = row.failure_reason;
  if (row.last_used_at) json.last_used_at = row.last_used_at.toISOString();
  return json;
}

function eventJson(event: EventRecord): SandboxEvent {
  const json: SandboxEvent = { id: event.id, ts: event.ts.toISOString(), kind: event.kind };
  if (event.msg) json.msg = event.msg;
  if (event.payload !== undefined && event.payload !== null) json.payload = event.payload;
  return json;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The disk the VM boots from: bootdisk, else the first disk of `boot: order=`, else scsi0/virtio0/... */
export function rootDisk(config: VmConfig): string | undefined {
  const disks = ["scsi0", "virtio0", "sata0", "ide0"];
  const bootdisk = config.bootdisk;
  if (typeof bootdisk === "string" && config[bootdisk] !== undefined) return bootdisk;
  const order = typeof config.boot === "string" ? /order=([^,]+)/.exec(config.boot)?.[1] : undefined;
  for (const device of order?.split(";") ?? [])
    if (config[device] !== undefined && /^(scsi|virtio|sata|ide)\d+$/.test(device)) return device;
  return disks.find((disk) => config[disk] !== undefined);
}

/** `size=20G` of a disk property string, in GiB. */
export function diskSizeGb(value: string | number | undefined): number | undefined {
  const match = typeof value === "string" ? /(?:^|,)size=(\d+(?:\.\d+)?)([KMGT])?/.exec(value) : null;
  if (!match) return undefined;
  const factor: Record<string, number> = { K: 1 / 1024 / 1024, M: 1 / 1024, G: 1, T: 1024 };
  return Number(match[1]) * (factor[match[2] ?? "G"] ?? 1);
}

/**
 * Disks of a VM other than its root disk (cd-roms and the cloud-init drive aside): data volumes such
 * as a future /work workspace. A Proxmox snapshot rollback covers every disk in the snapshot, so
 * revert refuses while any is attached rather than roll one back.
 */
export function nonRootDisks(config: VmConfig): string[] {
  const root = rootDisk(config);
  return Object.keys(config)
    .filter((key) => /^(scsi|virtio|sata|ide)\d+$/.test(key) && key !== root)
    .filter((key) => {
      const value = String(config[key]);
      return !/(^|,)media=cdrom(,|$)/.test(value) && !/cloudinit/.test(value);
    })
    .sort();
}

/** Whether a config's `agent` property turns the guest agent on (`1`, `enabled=1`, `1,fstrim_...`). */
export function agentEnabled(value: string | number | undefined): boolean {
  if (value === undefined) return false;
  for (const part of String(value).split(",")) {
    const flag = /^(?:enabled=)?([01])$/.exec(part.trim());
    if (flag) return flag[1] === "1";
  }
  return false;
}

/** The Proxmox tags of a sandbox's VM: the managed tag first, then the sandbox's own. */
export function vmTags(tags: readonly string[]): string {
  return [...new Set([MANAGED_TAG, ...tags])].join(";");
}

function snapshotJson(snapshot: SnapshotInfo): SandboxSnapshot {
  const json: SandboxSnapshot = { name: snapshot.name, vmstate: snapshot.vmstate };
  if (snapshot.snaptime !== undefined) json.created_at = new Date(snapshot.snaptime * 1000).toISOString();
  if (snapshot.description) json.description = snapshot.description;
  if (snapshot.parent) json.parent = snapshot.parent;
  return json;
}

/** Whether a failed rollback says that its snapshot does not exist (upstream's detection, any backend). */
function isSnapshotMissing(error: unknown): boolean {
  if (error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND") return false;
  const text = [
    describe(error),
    ...(error instanceof AgentlabError && Array.isArray(error.details.chain) ? error.details.chain : []),
    error instanceof AgentlabError ? String(error.details.exitstatus ?? error.details.reason ?? "") : "",
  ].join(" ");
  return (
    /snapshot/i.test(text) &&
    /not found|does not exist|no such snapshot|cannot find snapshot|can't find snapshot/i.test(text)
  );
}

/** `cause` set: the rollback itself said so, after the VM had been stopped. */
function cleanSnapshotMissing(vmid: number, cause?: unknown): AgentlabError {
  return new AgentlabError(
    "SNAPSHOT_NOT_FOUND",
    `snapshot "${CLEAN_SNAPSHOT}" not found; reprovision the sandbox or create it via Proxmox (qm snapshot ${vmid} ${CLEAN_SNAPSHOT})`,
    {
      hint: `${cause === undefined ? "nothing was changed" : "the VM was stopped, its disk was not rolled back"}; to reprovision: agentlab sandbox destroy ${vmid}, then agentlab sandbox new`,
      details: { vmid, snapshot: CLEAN_SNAPSHOT },
      ...(cause !== undefined ? { cause } : {}),
    },
  );
}

function snapshotMissing(vmid: number, name: string, cause?: unknown): AgentlabError {
  return new AgentlabError("SNAPSHOT_NOT_FOUND", `snapshot "${name}" not found`, {
    hint: `list the sandbox's snapshots: agentlab sandbox snapshot list ${vmid}`,
    details: { vmid, snapshot: name },
    ...(cause !== undefined ? { cause } : {}),
  });
}

/** Run `work` for each item with at most `limit` running at once; results keep the items' order. */
async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** The MAC Proxmox gave net0 on clone, kept when the daemon rewrites net0. */
export function netMac(value: string | number | undefined): string | undefined {
  return typeof value === "string"
    ? /(?:^|,)[a-z0-9]+=([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})/.exec(value)?.[1]
    : undefined;
}

/**
 * The sandbox lifecycle. Every state change goes through transitionSandbox; every Proxmox call
 * through the backend; one operation per VMID at a time.
 */
export class SandboxService {
  private readonly vmLocks = new KeyedMutex();

  constructor(private readonly ctx: DaemonContext) {}

  private now(): Date {
    return this.ctx.clock.now();
  }

  private profile(name: string): Profile {
    const profile = this.ctx.profiles.find((p) => p.name === name);
    if (!profile) {
      const names = this.ctx.profiles.map((p) => p.name).sort();
      throw new AgentlabError("PROFILE_NOT_FOUND", `unknown profile "${name}"`, {
        hint:
          names.length > 0
            ? `loaded profiles: ${names.join(", ")}`
            : "no profiles are loaded: add YAML files to profiles_dir",
        details: { profile: name, profiles: names },
      });
    }
    return profile;
  }

  get(vmid: number): Sandbox {
    const row = this.ctx.store.sandboxes.get(vmid);
    if (!row) {
      throw new AgentlabError("SANDBOX_NOT_FOUND", `sandbox not found: ${vmid}`, {
        hint: "list sandboxes with agentlab sandbox list --all",
        details: { vmid },
      });
    }
    return row;
  }

  private vmRef(row: Sandbox): VmRef {
    return { vmid: row.vmid, node: row.node ?? this.ctx.config.proxmox_node };
  }

  private event(vmid: number, kind: string, msg: string, payload?: Record<string, unknown>): void {
    this.ctx.store.events.append({ kind, sandbox_vmid: vmid, msg, ...(payload ? { payload } : {}) });
  }

  private step(op: Operation, vmid: number, step: string, message: string): void {
    op.step(step, message);
    op.log.info({ vmid, step }, message);
  }

  /**
   * Choose the VMID under one lock, so parallel creates never pick the same one: an explicit VMID
   * must be free in the database and the cluster; otherwise the next number above every VMID agentlab
   * ever used that no VM of the cluster has, confirmed with Proxmox's own nextid check.
   */
  private async reserveVmid(
    requested: number | undefined,
    cluster: ClusterVm[],
    insert: (vmid: number) => Sandbox,
  ): Promise<Sandbox> {
    return this.vmLocks.run("vmid-allocator", async () => {
      const taken = new Set(cluster.map((vm) => vm.vmid));
      if (requested !== undefined) {
        if (this.ctx.store.sandboxes.get(requested)) {
          throw new AgentlabError("CONFLICT", `sandbox vmid already exists: ${requested}`, {
            details: { vmid: requested },
          });
        }
        if (taken.has(requested) || !(await this.ctx.backend.isVmidFree(requested))) {
          throw new AgentlabError("CONFLICT", "vmid already exists in proxmox inventory", {
            hint: "leave out --vmid to let agentlab choose a free one",
            details: { vmid: requested },
          });
        }
        return insert(requested);
      }
      return insert(await this.nextFreeVmid(taken));
    });
  }

  /**
   * The next number above every VMID agentlab ever used that no VM of the cluster has, confirmed with
   * Proxmox's own nextid check. Only reserveVmid's lock makes the answer stick; validate just reports it.
   */
  private async nextFreeVmid(taken: ReadonlySet<number>): Promise<number> {
    let candidate = Math.max(FIRST_VMID, (this.ctx.store.sandboxes.maxVmid() ?? 0) + 1);
    for (let tries = 0; tries < 50; tries++, candidate++) {
      if (taken.has(candidate) || this.ctx.store.sandboxes.get(candidate)) continue;
      if (!(await this.ctx.backend.isVmidFree(candidate))) continue;
      return candidate;
    }
    throw new AgentlabError("CONFLICT", "vmid allocation failed: no free VMID found after 50 tries", {
      details: { last_tried: candidate },
    });
  }

  async create(params: CreateParams, op: Operation): Promise<SandboxJson> {
    const profile = this.profile(params.profile);
    const cluster = await this.ctx.backend.listVms();
    const template = cluster.find((vm) => vm.vmid === profile.template_vmid);
    if (!template) {
      throw new AgentlabError("PROVISIONING_FAILED", `template VM ${profile.template_vmid} does not exist`, {
        hint: `check the template named by profile "${profile.name}": qm list | grep ${profile.template_vmid}`,
        details: { profile: profile.name, template_vmid: profile.template_vmid },
      });
    }
    const ttl = params.ttl_minutes ?? profile.behavior.ttl_minutes_default;
    const created = this.now();
    const tags = [...new Set((params.tags ?? []).map((t) => t.toLowerCase()))];
    const row = await this.reserveVmid(params.vmid, cluster, (vmid) =>
      this.ctx.store.tx(() => {
        const inserted = this.ctx.store.sandboxes.insert({
          vmid,
          name: params.name ?? `sandbox-${vmid}`,
          profile: profile.name,
          state: "REQUESTED",
          node: template.node,
          keepalive: params.keepalive ?? profile.behavior.keepalive_default,
          lease_expires_at: ttl !== undefined && ttl > 0 ? new Date(created.getTime() + ttl * 60_000) : null,
          tags,
          created_at: created,
        });
        this.event(vmid, "sandbox.requested", `requested with profile ${profile.name}`, {
          profile: profile.name,
        });
        return inserted;
      }),
    );
    this.step(op, row.vmid, "reserve", `reserved VMID ${row.vmid} on node ${template.node}`);
    return this.vmLocks.run(String(row.vmid), () => this.provision(row, profile, template, op));
  }

  private async provision(
    row: Sandbox,
    profile: Profile,
    template: ClusterVm,
    op: Operation,
  ): Promise<SandboxJson> {
    const { backend, config } = this.ctx;
    const vm: VmRef = { vmid: row.vmid, node: template.node };
    const deadline = this.now().getTime() + config.provisioning_timeout_ms;
    let vmCreated = false;
    let snippetPath: string | null = null;
    try {
      transitionSandbox(this.ctx.store, row.vmid, "PROVISIONING");
      op.signal.throwIfAborted();
      const full = config.proxmox_clone_mode === "full" || !template.template;
      this.step(
        op,
        row.vmid,
        "clone",
        `cloning template ${template.vmid} (${full ? "full" : "linked"} clone)`,
      );
      await backend.clone(
        { vmid: template.vmid, node: template.node },
        row.vmid,
        { name: row.name, full },
        { signal: op.signal },
      );
      vmCreated = true;
      this.ctx.store.sandboxes.update(row.vmid, { vm_created: true });
      op.signal.throwIfAborted();

      const snippet = writeSnippet(
        config.snippets_dir,
        row.vmid,
        renderUserData({
          vmid: row.vmid,
          hostname: row.name,
          ...(config.ssh_public_key ? { sshPublicKey: config.ssh_public_key } : {}),
        }),
      );
      snippetPath = snippet.path;
      this.ctx.store.sandboxes.update(row.vmid, { snippet_path: snippet.path });

      this.step(op, row.vmid, "configure", "setting resources, network and cloud-init");
      const cloned = await backend.getConfig(vm);
      const changes: Record<string, string | number> = {
        cicustom: `user=${config.snippet_storage}:snippets/${snippet.file}`,
        ipconfig0: "ip=dhcp",
        scsihw: profile.storage.scsihw ?? "virtio-scsi-pci",
        tags: vmTags(row.tags),
      };
      if (profile.resources.cores !== undefined) changes.cores = profile.resources.cores;
      if (profile.resources.memory_mb !== undefined) changes.memory = profile.resources.memory_mb;
      if (profile.network.bridge !== undefined || this.profileSetsNetwork(profile)) {
        const model = profile.network.model ?? "virtio";
        const mac = netMac(cloned.net0);
        const bridge =
          profile.network.bridge ?? /bridge=([^,]+)/.exec(String(cloned.net0 ?? ""))?.[1] ?? "vmbr1";
        changes.net0 = `${model}${mac ? `=${mac}` : ""},bridge=${bridge}${profile.network.firewall === false ? "" : ",firewall=1"}`;
      }
      await backend.setConfig(vm, changes);
      const wantGb = profile.storage.root_size_gb;
      const disk = rootDisk(cloned);
      if (wantGb !== undefined && disk) {
        const have = diskSizeGb(cloned[disk]);
        if (have === undefined || have < wantGb) {
          this.step(op, row.vmid, "resize", `growing ${disk} to ${wantGb}G`);
          await backend.resizeDisk(vm, disk, `${wantGb}G`, { signal: op.signal });
        }
      }
      op.signal.throwIfAborted();

      transitionSandbox(this.ctx.store, row.vmid, "BOOTING");
      this.step(op, row.vmid, "start", "starting the VM");
      await this.ctx.network?.beforeStart(row.vmid);
      await backend.start(vm, { signal: op.signal });

      this.step(op, row.vmid, "wait-guest", "waiting for the guest to report its address");
      const ip = await this.waitForIp(vm, deadline, op);
      transitionSandbox(this.ctx.store, row.vmid, "READY", { patch: { ip } });
      await this.ctx.network?.bind(row.vmid, netMac(cloned.net0), ip, profile.network.mode);
      this.event(row.vmid, "sandbox.slo.ready", `ready at ${ip}`, {
        duration_ms: this.now().getTime() - row.created_at.getTime(),
        ip,
      });

      this.step(op, row.vmid, "snapshot", `taking the "${CLEAN_SNAPSHOT}" snapshot for revert`);
      await backend.snapshotCreate(vm, CLEAN_SNAPSHOT, "agentlab: state right after provisioning", {
        signal: op.signal,
      });
      const running = transitionSandbox(this.ctx.store, row.vmid, "RUNNING");
      this.step(op, row.vmid, "ready", `sandbox ${row.vmid} is running at ${ip}`);
      return sandboxJson(running);
    } catch (error) {
      const cancelled = op.signal.aborted;
      const reason = cancelled ? `cancelled: ${describe(op.signal.reason)}` : describe(error);
      op.log.warn({ vmid: row.vmid, err: error, vm_created: vmCreated }, `provisioning failed: ${reason}`);
      await this.rollback(row.vmid, vm, vmCreated, snippetPath, reason, op);
      if (cancelled) {
        throw new AgentlabError(
          "CANCELLED",
          `sandbox ${row.vmid} cancelled; what was created has been removed`,
          {
            details: { vmid: row.vmid },
          },
        );
      }
      const code = error instanceof AgentlabError ? error.code : "INTERNAL";
      throw new AgentlabError("PROVISIONING_FAILED", `failed to provision sandbox ${row.vmid}: ${reason}`, {
        hint: `the sandbox is FAILED with this reason (agentlab sandbox show ${row.vmid}); ${vmCreated ? "its VM was removed" : "no VM was created"}`,
        details: { vmid: row.vmid, cause_code: code },
        cause: error,
      });
    }
  }

  private profileSetsNetwork(profile: Profile): boolean {
    return typeof profile.raw.network === "object" && profile.raw.network !== null;
  }

  /**
   * Undo a failed or cancelled provisioning: FAILED with the reason first (so the row is never left
   * in a provisioning state), then the VM is destroyed only if its clone succeeded for this row.
   */
  private async rollback(
    vmid: number,
    vm: VmRef,
    vmCreated: boolean,
    snippetPath: string | null,
    reason: string,
    op: Operation,
  ) {
    try {
      transitionSandbox(this.ctx.store, vmid, "FAILED", { reason });
    } catch (error) {
      op.log.error({ vmid, err: error }, "could not mark the sandbox FAILED");
    }
    this.event(vmid, "sandbox.provision_failed", reason, { reason, vm_created: vmCreated });
    if (vmCreated) {
      try {
        await this.removeVm(vm);
        this.event(vmid, "sandbox.rollback.completed", "removed the VM created for this sandbox");
      } catch (error) {
        this.event(vmid, "sandbox.rollback.failed", `could not remove VM ${vmid}: ${describe(error)}`);
        op.log.error(
          { vmid, err: error },
          "rollback could not remove the VM; sandbox destroy --force will retry",
        );
      }
    }
    removeSnippet(snippetPath);
    if (snippetPath) this.ctx.store.sandboxes.update(vmid, { snippet_path: null });
  }

  /**
   * Stop and destroy with purge; a VM that is already gone is fine. The stop is sent even when the
   * VM reads stopped: a start still in flight (cancelled mid-boot) would otherwise finish after the
   * check and make the destroy fail; Proxmox queues the stop behind it. Maintenance uses it too
   * (holding the sandbox's lock through `exclusive`).
   */
  async removeVm(vm: VmRef): Promise<void> {
    const { backend } = this.ctx;
    try {
      await backend.stop(vm);
      await backend.destroy(vm, { purge: true });
    } catch (error) {
      if (error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND") return;
      throw error;
    }
  }

  /** Whether an operation holds or waits for this sandbox; maintenance passes leave such sandboxes alone. */
  isBusy(vmid: number): boolean {
    return this.vmLocks.isBusy(String(vmid));
  }

  /**
   * Run `work` holding the sandbox's operation lock, for maintenance (lease reaper, reconciler, start-up
   * recovery), so it never races a user's operation on the same VM. With `ifIdle`, a sandbox that another
   * operation holds or waits for is skipped (undefined) instead of waited for; the next pass looks again.
   */
  exclusive<T>(
    vmid: number,
    work: () => Promise<T>,
    options: { ifIdle?: boolean } = {},
  ): Promise<T | undefined> {
    if (options.ifIdle && this.isBusy(vmid)) return Promise.resolve(undefined);
    return this.vmLocks.run(String(vmid), work);
  }

  /**
   * Rebuild the nftables sandbox sets from the database (daemon start). One config read per live
   * sandbox for its MAC; a sandbox whose VM cannot be read is registered without a binding.
   */
  async resyncNetwork(): Promise<void> {
    const network = this.ctx.network;
    if (!network?.active) return;
    const live = this.ctx.store.sandboxes
      .list()
      .filter((row) => row.vm_created && ["BOOTING", "READY", "RUNNING", "SUSPENDED"].includes(row.state));
    const entries = await Promise.all(
      live.map(async (row) => {
        let mac: string | undefined;
        try {
          mac = netMac((await this.ctx.backend.getConfig(this.vmRef(row))).net0);
        } catch (error) {
          this.ctx.log.warn({ vmid: row.vmid, err: error }, "network resync: cannot read the VM's MAC");
        }
        const mode = this.ctx.profiles.find((p) => p.name === row.profile)?.network.mode ?? "nat";
        return { vmid: row.vmid, ip: row.ip, mac, mode };
      }),
    );
    await network.resync(entries);
  }

  /** Ask the guest agent for the address until it answers or the deadline passes. */
  private async waitForIp(vm: VmRef, deadline: number, op: Operation): Promise<string> {
    let delay = 250;
    for (;;) {
      op.signal.throwIfAborted();
      try {
        const ip = pickGuestIp(await this.ctx.backend.guestInterfaces(vm), this.ctx.config.agent_subnet);
        if (ip) return ip;
      } catch (error) {
        if (!(error instanceof AgentlabError && error.code === "GUEST_AGENT_NOT_READY")) throw error;
      }
      const left = deadline - this.now().getTime();
      if (left <= 0) {
        throw new AgentlabError(
          "PROVISIONING_FAILED",
          `the guest did not report an address within provisioning_timeout (${Math.round(this.ctx.config.provisioning_timeout_ms / 1000)}s)`,
          {
            hint: "check that the template has qemu-guest-agent installed and agent: 1 set (qm config <template>)",
          },
        );
      }
      await abortableSleep(Math.min(delay, left), op.signal);
      delay = Math.min(delay * 2, 2000);
    }
  }

  list(filter: {
    state?: SandboxState | undefined;
    profile?: string | undefined;
    all?: boolean | undefined;
  }): { sandboxes: SandboxJson[] } {
    const rows = this.ctx.store.sandboxes.list({
      ...(filter.state ? { state: filter.state } : {}),
      ...(filter.profile ? { profile: filter.profile } : {}),
      includeDestroyed: filter.all === true,
    });
    return { sandboxes: rows.map(sandboxJson) };
  }

  async show(vmid: number, eventCount = 20): Promise<SandboxDetail> {
    const row = this.get(vmid);
    const detail: SandboxDetail = {
      ...sandboxJson(row),
      proxmox: { found: false },
      events: this.ctx.store.events.listForSandbox(vmid, { tail: eventCount }).map(eventJson),
    };
    if (row.lease_expires_at) {
      detail.lease_remaining_seconds = Math.max(
        0,
        Math.round((row.lease_expires_at.getTime() - this.now().getTime()) / 1000),
      );
    }
    if (row.vm_created && row.state !== "DESTROYED") {
      try {
        const vm = this.vmRef(row);
        const [status, vmConfig] = await Promise.all([
          this.ctx.backend.status(vm),
          this.ctx.backend.getConfig(vm),
        ]);
        detail.proxmox = { found: true, status: status.state };
        if (status.lock) detail.proxmox.lock = status.lock;
        if (typeof vmConfig.cores === "number") detail.proxmox.cores = vmConfig.cores;
        const memory = Number(vmConfig.memory);
        if (Number.isFinite(memory)) detail.proxmox.memory_mb = memory;
      } catch (error) {
        detail.proxmox =
          error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND"
            ? { found: false, error: `VM ${vmid} no longer exists in Proxmox` }
            : { found: false, error: describe(error) };
      }
    }
    return detail;
  }

  /**
   * Destroy: stop, destroy with purge, DESTROYED. A normal destroy refuses sandboxes still being
   * provisioned and TIMEOUT ones, and fails on any Proxmox error; --force takes any state and treats a
   * VM that is already gone as destroyed. A VM that still exists is never forgotten.
   */
  async destroy(vmid: number, force: boolean, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      if (row.state === "DESTROYED") return sandboxJson(row);
      const refused: SandboxState[] = ["REQUESTED", "PROVISIONING", "BOOTING", "TIMEOUT"];
      if (!force && refused.includes(row.state)) {
        throw new AgentlabError(
          "DESTROY_FAILED",
          `failed to destroy sandbox: sandbox ${vmid} is in ${row.state} state`,
          {
            hint: `use --force: agentlab sandbox destroy --force ${vmid}`,
            details: { vmid, state: row.state },
          },
        );
      }
      if (row.vm_created) {
        const vm = this.vmRef(row);
        this.step(op, vmid, "destroy", `destroying VM ${vmid}`);
        try {
          if (force) await this.removeVm(vm);
          else {
            const status = await this.ctx.backend.status(vm);
            if (status.state !== "stopped") await this.ctx.backend.stop(vm, { signal: op.signal });
            await this.ctx.backend.destroy(vm, { purge: true }, { signal: op.signal });
          }
        } catch (error) {
          this.event(vmid, "sandbox.destroy.failed", describe(error));
          throw new AgentlabError("DESTROY_FAILED", `failed to destroy sandbox: ${describe(error)}`, {
            hint:
              error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND"
                ? `the VM is already gone; clear the entry with agentlab sandbox destroy --force ${vmid} (or agentlab sandbox prune)`
                : `use --force: agentlab sandbox destroy --force ${vmid}; if that fails too, qm destroy ${vmid} on the Proxmox host`,
            details: {
              vmid,
              state: row.state,
              ...(error instanceof AgentlabError ? { cause_code: error.code } : {}),
            },
            cause: error,
          });
        }
      }
      removeSnippet(row.snippet_path);
      await this.ctx.network?.release(vmid, row.ip);
      // A job bound to a destroyed sandbox can never finish; end it in the same transaction
      // (upstream left such jobs RUNNING forever).
      const destroyed = this.ctx.store.tx(() => {
        const moved = transitionSandbox(this.ctx.store, vmid, "DESTROYED", { patch: { snippet_path: null } });
        finalizeJobs(
          this.ctx,
          vmid,
          row.state === "TIMEOUT" ? "TIMEOUT" : "FAILED",
          `sandbox ${vmid} was destroyed`,
        );
        return moved;
      });
      this.event(vmid, "sandbox.destroy.completed", force ? "destroyed (forced)" : "destroyed");
      return sandboxJson(destroyed);
    });
  }

  /**
   * Remove orphaned entries in one pass over one cluster-wide VM list: TIMEOUT sandboxes, and live
   * rows whose VM no longer exists in Proxmox.
   */
  async prune(op: Operation): Promise<{ count: number; vmids: number[] }> {
    const present = new Set((await this.ctx.backend.listVms()).map((vm) => vm.vmid));
    const candidates = this.ctx.store.sandboxes
      .list()
      .filter(
        (row) =>
          row.state === "TIMEOUT" ||
          (row.vm_created && !present.has(row.vmid) && !this.provisioning(row.state)),
      );
    const vmids: number[] = [];
    for (const row of candidates) {
      try {
        await this.destroy(row.vmid, true, op);
        vmids.push(row.vmid);
      } catch (error) {
        op.log.warn({ vmid: row.vmid, err: error }, `prune could not remove sandbox ${row.vmid}`);
      }
    }
    return { count: vmids.length, vmids };
  }

  private provisioning(state: SandboxState): boolean {
    return state === "REQUESTED" || state === "PROVISIONING" || state === "BOOTING";
  }

  async start(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      if (row.state === "RUNNING" || row.state === "READY") return sandboxJson(row);
      if (row.state !== "STOPPED") {
        throw new AgentlabError(
          "INVALID_STATE",
          `cannot start sandbox in ${row.state} state. Valid states: STOPPED`,
          {
            details: { vmid, state: row.state, valid: ["STOPPED"] },
          },
        );
      }
      return sandboxJson(await this.boot(vmid, this.vmRef(row), op, "start"));
    });
  }

  /**
   * STOPPED -> BOOTING, start the VM, wait for the guest's address, READY -> RUNNING. A failure leaves
   * the sandbox FAILED with `<what> failed: <reason>`. The caller holds the VMID's lock.
   */
  private async boot(vmid: number, vm: VmRef, op: Operation, what: string): Promise<Sandbox> {
    transitionSandbox(this.ctx.store, vmid, "BOOTING");
    try {
      this.step(op, vmid, "start", `starting VM ${vmid}`);
      await this.ctx.network?.beforeStart(vmid);
      await this.ctx.backend.start(vm, { signal: op.signal });
      this.step(op, vmid, "wait-guest", "waiting for the guest to report its address");
      const ip = await this.waitForIp(vm, this.now().getTime() + this.ctx.config.provisioning_timeout_ms, op);
      const ready = transitionSandbox(this.ctx.store, vmid, "READY", { patch: { ip } });
      if (this.ctx.network?.active) {
        const mode = this.ctx.profiles.find((p) => p.name === ready.profile)?.network.mode ?? "nat";
        await this.ctx.network.bind(vmid, netMac((await this.ctx.backend.getConfig(vm)).net0), ip, mode);
      }
      return transitionSandbox(this.ctx.store, vmid, "RUNNING");
    } catch (error) {
      transitionSandbox(this.ctx.store, vmid, "FAILED", { reason: `${what} failed: ${describe(error)}` });
      throw error;
    }
  }

  async stop(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      if (row.state === "STOPPED") return sandboxJson(row);
      this.requireState(row, "stop", ["READY", "RUNNING", "SUSPENDED"]);
      return sandboxJson(await this.powerOff(row, op));
    });
  }

  /** Hard-stop the VM and mark the sandbox STOPPED, with events. The caller holds the VMID's lock. */
  private async powerOff(row: Sandbox, op: Operation, progress = ""): Promise<Sandbox> {
    this.step(op, row.vmid, "stop", `stopping VM ${row.vmid}${progress}`);
    await this.recorded(row.vmid, "sandbox.stop", "stopped", () =>
      this.ctx.backend.stop(this.vmRef(row), { signal: op.signal }),
    );
    return transitionSandbox(this.ctx.store, row.vmid, "STOPPED");
  }

  /**
   * Stop every READY and RUNNING sandbox, a few at a time. Each stop takes its VMID's lock and looks
   * again: a sandbox that left READY/RUNNING meanwhile is skipped, a failed stop is reported and the
   * others go on.
   */
  async stopAll(op: Operation): Promise<StopAllResult> {
    const candidates = this.ctx.store.sandboxes
      .list()
      .filter((row) => row.state === "READY" || row.state === "RUNNING");
    const total = candidates.length;
    this.ctx.store.events.append({
      kind: "sandbox.stop_all",
      msg: `stopping ${total} sandbox${total === 1 ? "" : "es"}`,
      payload: { total, vmids: candidates.map((row) => row.vmid) },
    });
    const results = await mapLimit(candidates, STOP_ALL_CONCURRENCY, (candidate, index) =>
      this.vmLocks.run(String(candidate.vmid), async (): Promise<StopAllResult["results"][number]> => {
        const row = this.ctx.store.sandboxes.get(candidate.vmid) ?? candidate;
        const entry = { vmid: row.vmid, name: row.name };
        if (row.state !== "READY" && row.state !== "RUNNING") {
          return { ...entry, result: "skipped", state: row.state, reason: `it is ${row.state} now` };
        }
        try {
          const stopped = await this.powerOff(row, op, ` (${index + 1}/${total})`);
          return { ...entry, result: "stopped", state: stopped.state };
        } catch (error) {
          const state = this.ctx.store.sandboxes.get(row.vmid)?.state ?? row.state;
          return { ...entry, result: "failed", state, reason: describe(error) };
        }
      }),
    );
    const count = (result: string) => results.filter((r) => r.result === result).length;
    const summary = { total, stopped: count("stopped"), skipped: count("skipped"), failed: count("failed") };
    this.ctx.store.events.append({
      kind: "sandbox.stop_all.result",
      msg: `stopped ${summary.stopped} of ${total} (${summary.skipped} skipped, ${summary.failed} failed)`,
      payload: { ...summary, results },
    });
    return { ...summary, results };
  }

  /** Refuse an operation outside its valid states, in upstream's wording. */
  private requireState(
    row: Sandbox,
    verb: string,
    valid: readonly SandboxState[],
    options: { hint?: string; accepted?: readonly SandboxState[] } = {},
  ): void {
    if ((options.accepted ?? valid).includes(row.state)) return;
    throw new AgentlabError(
      "INVALID_STATE",
      `cannot ${verb} sandbox in ${row.state} state. Valid states: ${valid.join(", ")}`,
      {
        ...(options.hint ? { hint: options.hint } : {}),
        details: { vmid: row.vmid, state: row.state, valid: options.accepted ?? valid },
      },
    );
  }

  /** Refuse an operation on a sandbox whose provisioning failed before its VM was cloned. */
  private requireVm(row: Sandbox, verb: string): void {
    if (row.vm_created) return;
    throw new AgentlabError(
      "INVALID_STATE",
      `cannot ${verb} sandbox ${row.vmid}: it has no VM (its provisioning failed before the clone)`,
      {
        hint: `clear the entry with agentlab sandbox destroy --force ${row.vmid}`,
        details: { vmid: row.vmid, state: row.state },
      },
    );
  }

  /** Run one timed Proxmox-side action and record `<kind>.completed` or `<kind>.failed`. */
  private async recorded<T>(
    vmid: number,
    kind: string,
    done: string,
    work: () => Promise<T>,
    payload: Record<string, unknown> = {},
  ): Promise<T> {
    const started = this.now().getTime();
    try {
      const result = await work();
      this.event(vmid, `${kind}.completed`, done, {
        ...payload,
        duration_ms: this.now().getTime() - started,
      });
      return result;
    } catch (error) {
      this.event(vmid, `${kind}.failed`, describe(error), {
        ...payload,
        duration_ms: this.now().getTime() - started,
        error: describe(error),
      });
      throw error;
    }
  }

  /** Suspend to RAM: READY or RUNNING -> SUSPENDED. Memory, processes and the address are kept. */
  async pause(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      this.requireState(row, "pause", ["READY", "RUNNING"], {
        ...(row.state === "SUSPENDED"
          ? { hint: `it is paused already; resume it with agentlab sandbox resume ${vmid}` }
          : {}),
      });
      this.requireVm(row, "pause");
      this.step(op, vmid, "suspend", `suspending VM ${vmid} to RAM`);
      await this.recorded(vmid, "sandbox.pause", "suspended to RAM", () =>
        this.ctx.backend.suspend(this.vmRef(row), { signal: op.signal }),
      );
      return sandboxJson(transitionSandbox(this.ctx.store, vmid, "SUSPENDED"));
    });
  }

  /** Resume from RAM: SUSPENDED -> RUNNING, where the guest carries on with the same address. */
  async resume(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      this.requireState(row, "resume", ["SUSPENDED"], {
        ...(row.state === "STOPPED"
          ? { hint: `a stopped sandbox is started, not resumed: agentlab sandbox start ${vmid}` }
          : {}),
      });
      this.requireVm(row, "resume");
      this.step(op, vmid, "resume", `resuming VM ${vmid}`);
      await this.recorded(vmid, "sandbox.resume", "resumed", () =>
        this.ctx.backend.resume(this.vmRef(row), { signal: op.signal }),
      );
      return sandboxJson(transitionSandbox(this.ctx.store, vmid, "RUNNING"));
    });
  }

  /**
   * Change cores, memory and tags. Tags replace the sandbox's list (lower-cased) and the VM keeps the
   * managed tag. Proxmox applies cores and memory of a running VM only at its next cold start; what it
   * holds back is read from the VM's current (non-pending) config and reported as pending.
   */
  async update(params: UpdateParams): Promise<UpdateResult> {
    const { vmid } = params;
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      this.requireState(row, "update", SETTLED_STATES);
      this.requireVm(row, "update");
      const vm = this.vmRef(row);
      const tags =
        params.tags === undefined ? undefined : [...new Set(params.tags.map((t) => t.toLowerCase()))];
      const changes: Record<string, string | number> = {};
      if (params.cores !== undefined) changes.cores = params.cores;
      if (params.memory_mb !== undefined) changes.memory = params.memory_mb;
      if (tags !== undefined) changes.tags = vmTags(tags);
      await this.ctx.backend.setConfig(vm, changes);
      const [merged, current] = await Promise.all([
        this.ctx.backend.getConfig(vm),
        this.ctx.backend.getConfig(vm, { current: true }),
      ]);
      const pending: UpdateResult["pending"] = [];
      if (params.cores !== undefined && String(current.cores) !== String(params.cores)) pending.push("cores");
      if (params.memory_mb !== undefined && String(current.memory) !== String(params.memory_mb))
        pending.push("memory_mb");
      const result: Omit<UpdateResult, "sandbox"> = { pending };
      if (merged.cores !== undefined && Number.isFinite(Number(merged.cores)))
        result.cores = Number(merged.cores);
      if (merged.memory !== undefined && Number.isFinite(Number(merged.memory)))
        result.memory_mb = Number(merged.memory);
      const said = [
        ...(params.cores !== undefined ? [`cores ${params.cores}`] : []),
        ...(params.memory_mb !== undefined ? [`memory ${params.memory_mb} MB`] : []),
        ...(tags !== undefined ? [`tags ${tags.length > 0 ? tags.join(", ") : "(none)"}`] : []),
      ].join(", ");
      const updated = this.ctx.store.tx(() => {
        const next = tags !== undefined ? this.ctx.store.sandboxes.update(vmid, { tags }) : undefined;
        this.event(
          vmid,
          "sandbox.configured",
          `${said}${pending.length > 0 ? ` (${pending.join(", ")} pending until the next cold start)` : ""}`,
          {
            ...(params.cores !== undefined ? { cores: params.cores } : {}),
            ...(params.memory_mb !== undefined ? { memory_mb: params.memory_mb } : {}),
            ...(tags !== undefined ? { tags } : {}),
            pending,
          },
        );
        return next ?? this.get(vmid);
      });
      return { sandbox: sandboxJson(updated), ...result };
    });
  }

  /**
   * Roll the root disk back to the `clean` snapshot (spec 5.4), fixing upstream's order: the snapshot's
   * existence is checked before anything is stopped, so a missing `clean` leaves the sandbox as it was.
   *
   * Only the root disk may be rolled back. A Proxmox rollback covers every disk in the snapshot, and
   * `clean` is taken at provisioning, before anything else is attached, so today it holds the root
   * disk alone. A VM that has any other disk now (a future /work workspace) is refused: the workspace
   * code must detach it first and attach it again after, and must never retake `clean` while one is
   * attached; revert does not touch /work.
   *
   * Upstream also refuses without force while the sandbox's job is QUEUED/RUNNING; there are no jobs
   * yet, so force is only recorded.
   */
  async revert(
    vmid: number,
    options: { force?: boolean | undefined; restart?: boolean | undefined },
    op: Operation,
  ): Promise<RevertResult> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      this.requireState(row, "revert", REVERT_STATES, {
        accepted: [...REVERT_STATES, "SUSPENDED"],
        ...(row.state === "DESTROYED"
          ? { hint: `its VM is gone; create a new sandbox: agentlab sandbox new --profile ${row.profile}` }
          : { hint: `wait until provisioning ends (agentlab sandbox show ${vmid}), then revert` }),
      });
      this.requireVm(row, "revert");
      const vm = this.vmRef(row);
      const { backend } = this.ctx;

      this.step(op, vmid, "check", `checking the "${CLEAN_SNAPSHOT}" snapshot and the disks of VM ${vmid}`);
      const [snapshots, config, status] = await Promise.all([
        backend.snapshotList(vm),
        backend.getConfig(vm),
        backend.status(vm),
      ]);
      if (!snapshots.some((snapshot) => snapshot.name === CLEAN_SNAPSHOT)) throw cleanSnapshotMissing(vmid);
      await this.requireRollbackable(vm, config, snapshots, CLEAN_SNAPSHOT);
      const extra = nonRootDisks(config);
      if (extra.length > 0) {
        throw new AgentlabError(
          "CONFLICT",
          `sandbox ${vmid} has disks besides its root disk (${extra.join(", ")}); revert rolls back the root disk only`,
          {
            hint: `detach them first (qm set ${vmid} --delete ${extra.join(",")}, or workspace detach), then revert`,
            details: { vmid, disks: extra },
          },
        );
      }

      const wasRunning =
        row.state === "READY" ||
        row.state === "RUNNING" ||
        row.state === "SUSPENDED" ||
        status.state === "running" ||
        status.state === "paused";
      const restart = options.restart ?? wasRunning;
      const force = options.force === true;
      const payload = { snapshot: CLEAN_SNAPSHOT, was_running: wasRunning, force, restart };
      this.event(vmid, "sandbox.revert.started", `reverting to "${CLEAN_SNAPSHOT}"`, payload);
      const started = this.now().getTime();
      const failed = (error: unknown, what = "") => {
        this.event(vmid, "sandbox.revert.failed", `${what}${describe(error)}`, {
          ...payload,
          error: `${what}${describe(error)}`,
          duration_ms: this.now().getTime() - started,
        });
      };
      try {
        if (status.state !== "stopped") {
          this.step(op, vmid, "stop", `stopping VM ${vmid}`);
          await backend.stop(vm, { signal: op.signal });
        }
        transitionSandbox(this.ctx.store, vmid, "STOPPED", { patch: { ip: null, failure_reason: null } });
        this.step(op, vmid, "rollback", `rolling the root disk back to "${CLEAN_SNAPSHOT}"`);
        await backend.snapshotRollback(vm, CLEAN_SNAPSHOT, { signal: op.signal });
        await this.reapplySettings(vm, config, row.tags);
      } catch (error) {
        failed(error);
        throw isSnapshotMissing(error) ? cleanSnapshotMissing(vmid, error) : error;
      }
      let sandbox = this.get(vmid);
      if (restart) {
        try {
          sandbox = await this.boot(vmid, vm, op, "start after revert");
        } catch (error) {
          failed(error, "rolled back, but the restart failed: ");
          throw error;
        }
      }
      this.event(vmid, "sandbox.revert.completed", `reverted to "${CLEAN_SNAPSHOT}"`, {
        ...payload,
        duration_ms: this.now().getTime() - started,
      });
      return {
        sandbox: sandboxJson(sandbox),
        snapshot: CLEAN_SNAPSHOT,
        was_running: wasRunning,
        restarted: restart,
      };
    });
  }

  /**
   * ZFS rolls a volume back only to its most recent snapshot (`zfs rollback` without -r, as Proxmox
   * runs it), so with the root disk on a zfspool storage a snapshot taken after `name` makes the
   * rollback fail. Checked before anything is stopped, so the refusal leaves the sandbox as it was.
   */
  private async requireRollbackable(
    vm: VmRef,
    config: VmConfig,
    snapshots: SnapshotInfo[],
    name: string,
  ): Promise<void> {
    const parents = new Map(snapshots.map((snapshot) => [snapshot.name, snapshot.parent]));
    const descends = (snapshot: string): boolean => {
      const seen = new Set<string>();
      for (let at = parents.get(snapshot); at !== undefined && !seen.has(at); at = parents.get(at)) {
        if (at === name) return true;
        seen.add(at);
      }
      return false;
    };
    const later = snapshots.map((snapshot) => snapshot.name).filter(descends);
    if (later.length === 0) return;
    const disk = rootDisk(config);
    const storageId = disk ? /^([^:,]+):/.exec(String(config[disk]))?.[1] : undefined;
    if (!storageId) return;
    const storage = (await this.ctx.backend.listStorages(vm.node)).find((s) => s.storage === storageId);
    if (storage?.type !== "zfspool") return;
    throw new AgentlabError(
      "CONFLICT",
      `cannot roll back to snapshot "${name}": the root disk is on ZFS storage ${storageId}, which rolls back only to the most recent snapshot, and ${later.map((n) => `"${n}"`).join(", ")} ${later.length === 1 ? "was" : "were"} taken after it`,
      {
        hint: `nothing was changed; delete the later snapshot${later.length === 1 ? "" : "s"} first: ${later.map((n) => `qm delsnapshot ${vm.vmid} ${n}`).join("; ")}`,
        details: { vmid: vm.vmid, snapshot: name, later, storage: storageId },
      },
    );
  }

  /**
   * A rollback restores the VM's whole config from the snapshot. Put back what the sandbox owns: its
   * tags (with the managed tag) always, and for revert, which is about the root disk only, the cores
   * and memory it had before (`before`, pending changes included), so a `sandbox update` survives it.
   */
  private async reapplySettings(vm: VmRef, before: VmConfig | undefined, tags: readonly string[]) {
    const after = await this.ctx.backend.getConfig(vm);
    const changes: Record<string, string | number> = {};
    for (const key of ["cores", "memory"]) {
      const value = before?.[key];
      if (value !== undefined && String(value) !== String(after[key])) changes[key] = value;
    }
    const tagSet = (value: string | number | undefined) =>
      String(value ?? "")
        .split(/[;, ]+/)
        .filter((tag) => tag !== "")
        .sort()
        .join(";");
    const wanted = vmTags(tags);
    if (tagSet(after.tags) !== tagSet(wanted)) changes.tags = wanted;
    await this.ctx.backend.setConfig(vm, changes);
  }

  /**
   * The guards of snapshot save and restore (spec 5.5): never while provisioning or DESTROYED; without
   * force only a STOPPED sandbox whose VM is really stopped and has no disk besides its root disk.
   */
  private async snapshotGuard(row: Sandbox, verb: "snapshot" | "restore", force: boolean): Promise<void> {
    this.requireState(row, verb, ["STOPPED"], {
      accepted: SETTLED_STATES,
      hint:
        row.state === "DESTROYED"
          ? "its VM is gone, and its snapshots with it"
          : `wait until provisioning ends (agentlab sandbox show ${row.vmid})`,
    });
    this.requireVm(row, verb);
    if (force) return;
    const mustStop = () =>
      new AgentlabError("INVALID_STATE", "sandbox must be stopped for snapshots", {
        hint: `stop it first (agentlab sandbox stop ${row.vmid}), or use --force`,
        details: { vmid: row.vmid, state: row.state },
      });
    if (row.state !== "STOPPED") throw mustStop();
    const vm = this.vmRef(row);
    const [status, config] = await Promise.all([this.ctx.backend.status(vm), this.ctx.backend.getConfig(vm)]);
    if (status.state !== "stopped") throw mustStop();
    const extra = nonRootDisks(config);
    if (extra.length > 0) {
      throw new AgentlabError(
        "CONFLICT",
        `sandbox ${row.vmid} has disks besides its root disk (${extra.join(", ")}); a snapshot would cover them too`,
        {
          hint: "detach them first, or use --force to include them",
          details: { vmid: row.vmid, disks: extra },
        },
      );
    }
  }

  async snapshotSave(
    vmid: number,
    name: string,
    force: boolean,
    op: Operation,
  ): Promise<{ vmid: number; name: string; created_at: string }> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      await this.snapshotGuard(row, "snapshot", force);
      const vm = this.vmRef(row);
      const existing = await this.ctx.backend.snapshotList(vm);
      if (existing.some((snapshot) => snapshot.name === name)) {
        throw new AgentlabError("CONFLICT", `snapshot "${name}" already exists`, {
          hint: `choose another name; agentlab sandbox snapshot list ${vmid} shows the taken ones`,
          details: { vmid, name },
        });
      }
      this.step(op, vmid, "snapshot", `taking snapshot "${name}" of VM ${vmid}`);
      try {
        await this.ctx.backend.snapshotCreate(vm, name, undefined, { signal: op.signal });
      } catch (error) {
        this.event(vmid, "sandbox.snapshot.failed", describe(error), { name, error: describe(error) });
        throw error;
      }
      this.event(vmid, "sandbox.snapshot.created", `snapshot "${name}" taken`, { name, force });
      return { vmid, name, created_at: this.now().toISOString() };
    });
  }

  async snapshotList(vmid: number): Promise<{ vmid: number; snapshots: SandboxSnapshot[] }> {
    const row = this.get(vmid);
    this.requireState(row, "list snapshots of", SETTLED_STATES, {
      hint:
        row.state === "DESTROYED"
          ? "its VM is gone, and its snapshots with it"
          : `wait until provisioning ends (agentlab sandbox show ${vmid})`,
    });
    this.requireVm(row, "list snapshots of");
    const snapshots = await this.ctx.backend.snapshotList(this.vmRef(row));
    return { vmid, snapshots: snapshots.filter((s) => s.name !== "current").map(snapshotJson) };
  }

  /**
   * Roll back to a named snapshot. The VM is then as the snapshot left it: a disk-only snapshot leaves
   * it stopped (STOPPED, address cleared), one with RAM resumes it (RUNNING, address asked again).
   */
  async snapshotRestore(
    vmid: number,
    name: string,
    force: boolean,
    op: Operation,
  ): Promise<{ sandbox: SandboxJson; snapshot: string }> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      await this.snapshotGuard(row, "restore", force);
      const vm = this.vmRef(row);
      const { backend } = this.ctx;
      const snapshots = await backend.snapshotList(vm);
      if (!snapshots.some((snapshot) => snapshot.name === name)) throw snapshotMissing(vmid, name);
      await this.requireRollbackable(vm, await backend.getConfig(vm), snapshots, name);
      this.step(op, vmid, "rollback", `rolling VM ${vmid} back to snapshot "${name}"`);
      try {
        await backend.snapshotRollback(vm, name, { signal: op.signal });
        await this.reapplySettings(vm, undefined, row.tags);
      } catch (error) {
        this.event(vmid, "sandbox.snapshot.restore_failed", describe(error), {
          name,
          error: describe(error),
        });
        throw isSnapshotMissing(error) ? snapshotMissing(vmid, name, error) : error;
      }
      const status = await backend.status(vm);
      let sandbox: Sandbox;
      if (status.state === "running" || status.state === "paused") {
        if (!canTransition(this.get(vmid).state, "RUNNING"))
          transitionSandbox(this.ctx.store, vmid, "STOPPED");
        let ip: string | null = null;
        try {
          ip = await this.waitForIp(vm, this.now().getTime() + RESTORE_IP_BUDGET_MS, op);
        } catch (error) {
          op.log.info({ vmid, err: error }, "no guest address yet after the restore");
        }
        sandbox = transitionSandbox(this.ctx.store, vmid, "RUNNING", { patch: { ip, failure_reason: null } });
      } else {
        sandbox = transitionSandbox(this.ctx.store, vmid, "STOPPED", {
          patch: { ip: null, failure_reason: null },
        });
      }
      this.event(vmid, "sandbox.snapshot.restored", `restored snapshot "${name}"`, {
        name,
        force,
        running: sandbox.state === "RUNNING",
      });
      return { sandbox: sandboxJson(sandbox), snapshot: name };
    });
  }

  /**
   * What sandbox.create would do with these params, and every problem it would meet, without creating
   * anything. Format problems are reported here rather than refused, so one call lists them all.
   */
  async validate(params: ValidateParams): Promise<ValidateResult> {
    const errors: PlanIssue[] = [];
    const warnings: PlanIssue[] = [];
    const issue = (code: string, field: string | undefined, message: string): PlanIssue => ({
      code,
      ...(field ? { field } : {}),
      message,
    });
    const plan: SandboxPlan = { profile: params.profile, tags: [] };

    const profile = this.ctx.profiles.find((p) => p.name === params.profile);
    if (!profile) {
      const names = this.ctx.profiles.map((p) => p.name).sort();
      const near = closest(params.profile, names);
      errors.push(
        issue(
          "unknown_profile",
          "profile",
          `unknown profile "${params.profile}"${near ? ` (did you mean ${near}?)` : ""}; loaded profiles: ${names.join(", ") || "none"}`,
        ),
      );
    }

    if (params.name !== undefined && !SandboxName.safeParse(params.name).success) {
      errors.push(
        issue(
          "invalid_field_value",
          "name",
          `invalid name "${params.name}": a DNS label: letters, digits, dots and dashes`,
        ),
      );
    }
    const tags = [...new Set((params.tags ?? []).map((t) => t.toLowerCase()))];
    for (const tag of tags) {
      if (!SandboxTag.safeParse(tag).success)
        errors.push(
          issue("invalid_tag", "tags", `invalid tag "${tag}": tags use letters, digits and _ + . -`),
        );
    }
    if (tags.length > 16) errors.push(issue("invalid_field_value", "tags", "at most 16 tags"));
    plan.tags = tags.filter((tag) => SandboxTag.safeParse(tag).success);

    if (params.ttl_minutes !== undefined && params.ttl_minutes <= 0) {
      errors.push(issue("invalid_field_value", "ttl_minutes", "ttl_minutes must be positive"));
    } else {
      const ttl = params.ttl_minutes ?? profile?.behavior.ttl_minutes_default;
      if (ttl !== undefined && ttl > 0) {
        plan.ttl_minutes = ttl;
        plan.lease_expires_at = new Date(this.now().getTime() + ttl * 60_000).toISOString();
      } else if (profile) {
        warnings.push(
          issue("no_ttl", "ttl_minutes", "no TTL: the sandbox would never expire (give --ttl to bound it)"),
        );
      }
    }
    if (profile) {
      plan.keepalive = params.keepalive ?? profile.behavior.keepalive_default;
      plan.template_vmid = profile.template_vmid;
      plan.network_mode = profile.network.mode;
      if (profile.network.bridge !== undefined) plan.bridge = profile.network.bridge;
      if (profile.resources.cores !== undefined) plan.cores = profile.resources.cores;
      if (profile.resources.memory_mb !== undefined) plan.memory_mb = profile.resources.memory_mb;
      if (profile.storage.root_size_gb !== undefined) plan.root_size_gb = profile.storage.root_size_gb;
    }

    const validVmid = params.vmid === undefined || (params.vmid >= 100 && params.vmid <= 999_999_999);
    if (!validVmid) {
      errors.push(issue("invalid_field_value", "vmid", "vmid must be between 100 and 999999999"));
    }

    const cluster = await this.ctx.backend.listVms();
    if (profile) {
      const template = cluster.find((vm) => vm.vmid === profile.template_vmid);
      if (!template) {
        errors.push(
          issue(
            "template_validation_failed",
            "profile",
            `template VM ${profile.template_vmid} of profile "${profile.name}" does not exist`,
          ),
        );
      } else {
        plan.node = template.node;
        if (template.name) plan.template_name = template.name;
        const full = this.ctx.config.proxmox_clone_mode === "full" || !template.template;
        plan.clone = full ? "full" : "linked";
        if (!template.template && this.ctx.config.proxmox_clone_mode === "linked") {
          warnings.push(
            issue(
              "template_not_template",
              "profile",
              `VM ${template.vmid} is not a template, and linked clones need one: it would be cloned in full (slower, uses more disk); make it a template with qm template ${template.vmid}`,
            ),
          );
        }
        const config = await this.ctx.backend.getConfig({ vmid: template.vmid, node: template.node });
        if (config.agent === undefined) {
          errors.push(
            issue(
              "template_validation_failed",
              "profile",
              `template VM ${template.vmid} does not have qemu-guest-agent enabled (missing 'agent:' config)`,
            ),
          );
        } else if (!agentEnabled(config.agent)) {
          errors.push(
            issue(
              "template_validation_failed",
              "profile",
              `template VM ${template.vmid} has qemu-guest-agent explicitly disabled`,
            ),
          );
        }
        if (!Object.values(config).some((value) => String(value).includes("cloudinit"))) {
          errors.push(
            issue(
              "template_validation_failed",
              "profile",
              `template VM ${template.vmid} does not have a cloud-init drive configured`,
            ),
          );
        }
        if (plan.cores === undefined && Number.isFinite(Number(config.cores)))
          plan.cores = Number(config.cores);
        if (plan.memory_mb === undefined && Number.isFinite(Number(config.memory)))
          plan.memory_mb = Number(config.memory);
        const disk = rootDisk(config);
        const have = disk ? diskSizeGb(config[disk]) : undefined;
        if (have !== undefined && (plan.root_size_gb === undefined || have > plan.root_size_gb))
          plan.root_size_gb = have;
      }
    }

    const taken = new Set(cluster.map((vm) => vm.vmid));
    if (params.vmid !== undefined && validVmid) {
      plan.vmid = params.vmid;
      plan.vmid_source = "requested";
      if (this.ctx.store.sandboxes.get(params.vmid)) {
        errors.push(issue("resource_conflict", "vmid", `sandbox vmid already exists: ${params.vmid}`));
      } else if (taken.has(params.vmid) || !(await this.ctx.backend.isVmidFree(params.vmid))) {
        errors.push(issue("resource_conflict", "vmid", "vmid already exists in proxmox inventory"));
      }
    } else if (params.vmid === undefined) {
      try {
        plan.vmid = await this.nextFreeVmid(taken);
        plan.vmid_source = "next_free";
      } catch (error) {
        errors.push(issue("allocation_failed", "vmid", describe(error)));
      }
    }
    if (params.name !== undefined) plan.name = params.name;
    else if (plan.vmid !== undefined) plan.name = `sandbox-${plan.vmid}`;

    return { ok: errors.length === 0, errors, warnings, plan };
  }

  leaseRenew(vmid: number, ttlMinutes: number): { vmid: number; lease_expires_at: string } {
    const expires = new Date(this.now().getTime() + ttlMinutes * 60_000);
    const updated = this.ctx.store.tx(() => {
      const row = this.get(vmid);
      if (row.state !== "RUNNING") {
        throw new AgentlabError(
          "LEASE_NOT_RENEWABLE",
          `sandbox lease not renewable: cannot renew lease in ${row.state} state. Valid states: RUNNING`,
          {
            hint:
              row.state === "STOPPED" || row.state === "SUSPENDED"
                ? `bring it back first (agentlab sandbox ${row.state === "STOPPED" ? "start" : "resume"} ${vmid}), then renew`
                : `a ${row.state} sandbox cannot be renewed: agentlab sandbox destroy --force ${vmid}, then agentlab sandbox new --profile ${row.profile} --ttl <ttl>`,
            details: { vmid, state: row.state, valid: ["RUNNING"] },
          },
        );
      }
      const next = this.ctx.store.sandboxes.update(vmid, { lease_expires_at: expires }, "RUNNING");
      if (!next)
        throw new AgentlabError("CONFLICT", `sandbox ${vmid} changed state while renewing its lease`);
      this.event(vmid, "sandbox.lease", `lease renewed until ${expires.toISOString()}`, {
        expires_at: expires.toISOString(),
      });
      return next;
    });
    return { vmid, lease_expires_at: (updated.lease_expires_at ?? expires).toISOString() };
  }

  logs(
    vmid: number,
    options: { tail?: number | undefined; after_id?: number | undefined },
  ): { events: SandboxEvent[]; last_id: number } {
    this.get(vmid);
    const events = this.ctx.store.events.listForSandbox(
      vmid,
      options.after_id !== undefined ? { afterId: options.after_id } : { tail: options.tail ?? 50 },
    );
    return { events: events.map(eventJson), last_id: events.at(-1)?.id ?? options.after_id ?? 0 };
  }
}
