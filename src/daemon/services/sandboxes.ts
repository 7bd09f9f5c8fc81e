import type { Profile } from "../../config/profiles.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { SandboxDetail, SandboxEvent, Sandbox as SandboxJson } from "../../protocol/sandbox.js";
import type { DaemonContext } from "../context.js";
import { removeSnippet, renderUserData, writeSnippet } from "../guest/cloud-init.js";
import { KeyedMutex } from "../locks.js";
import { pickGuestIp } from "../network/guest-ip.js";
import { abortableSleep } from "../proxmox/tasks.js";
import type { ClusterVm, VmConfig, VmRef } from "../proxmox/types.js";
import { transitionSandbox } from "../state/sandbox.js";
import type { EventRecord } from "../store/events.js";
import type { Sandbox, SandboxState } from "../store/sandboxes.js";
import type { Operation } from "./operation.js";

/** Auto-allocated VMIDs start here and grow; they are never reused (DESTROYED rows keep theirs). */
export const FIRST_VMID = 1000;

/** Tag put on every VM agentlab creates, so inventory can tell ours from everything else. */
export const MANAGED_TAG = "agentlab";

/** Name of the snapshot `sandbox revert` goes back to. */
export const CLEAN_SNAPSHOT = "clean";

export interface CreateParams {
  profile: string;
  name?: string | undefined;
  ttl_minutes?: number | undefined;
  keepalive?: boolean | undefined;
  vmid?: number | undefined;
  tags?: string[] | undefined;
}

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
      let candidate = Math.max(FIRST_VMID, (this.ctx.store.sandboxes.maxVmid() ?? 0) + 1);
      for (let tries = 0; tries < 50; tries++, candidate++) {
        if (taken.has(candidate) || this.ctx.store.sandboxes.get(candidate)) continue;
        if (!(await this.ctx.backend.isVmidFree(candidate))) continue;
        return insert(candidate);
      }
      throw new AgentlabError("CONFLICT", "vmid allocation failed: no free VMID found after 50 tries", {
        details: { last_tried: candidate },
      });
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
        tags: [MANAGED_TAG, ...row.tags].join(";"),
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
      await backend.start(vm, { signal: op.signal });

      this.step(op, row.vmid, "wait-guest", "waiting for the guest to report its address");
      const ip = await this.waitForIp(vm, deadline, op);
      transitionSandbox(this.ctx.store, row.vmid, "READY", { patch: { ip } });
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
   * check and make the destroy fail; Proxmox queues the stop behind it.
   */
  private async removeVm(vm: VmRef): Promise<void> {
    const { backend } = this.ctx;
    try {
      await backend.stop(vm);
      await backend.destroy(vm, { purge: true });
    } catch (error) {
      if (error instanceof AgentlabError && error.code === "PROXMOX_VM_NOT_FOUND") return;
      throw error;
    }
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
      const destroyed = transitionSandbox(this.ctx.store, vmid, "DESTROYED", {
        patch: { snippet_path: null },
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
      const vm = this.vmRef(row);
      transitionSandbox(this.ctx.store, vmid, "BOOTING");
      try {
        this.step(op, vmid, "start", `starting VM ${vmid}`);
        await this.ctx.backend.start(vm, { signal: op.signal });
        this.step(op, vmid, "wait-guest", "waiting for the guest to report its address");
        const ip = await this.waitForIp(
          vm,
          this.now().getTime() + this.ctx.config.provisioning_timeout_ms,
          op,
        );
        transitionSandbox(this.ctx.store, vmid, "READY", { patch: { ip } });
        return sandboxJson(transitionSandbox(this.ctx.store, vmid, "RUNNING"));
      } catch (error) {
        transitionSandbox(this.ctx.store, vmid, "FAILED", { reason: `start failed: ${describe(error)}` });
        throw error;
      }
    });
  }

  async stop(vmid: number, op: Operation): Promise<SandboxJson> {
    return this.vmLocks.run(String(vmid), async () => {
      const row = this.get(vmid);
      if (row.state === "STOPPED") return sandboxJson(row);
      const valid: SandboxState[] = ["READY", "RUNNING", "SUSPENDED"];
      if (!valid.includes(row.state)) {
        throw new AgentlabError(
          "INVALID_STATE",
          `cannot stop sandbox in ${row.state} state. Valid states: ${valid.join(", ")}`,
          {
            details: { vmid, state: row.state, valid },
          },
        );
      }
      this.step(op, vmid, "stop", `stopping VM ${vmid}`);
      await this.ctx.backend.stop(this.vmRef(row), { signal: op.signal });
      return sandboxJson(transitionSandbox(this.ctx.store, vmid, "STOPPED"));
    });
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
