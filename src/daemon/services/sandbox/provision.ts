/**
 * `sandbox new`: from a profile to a RUNNING sandbox (design.md, "One request, end to end"). Intent
 * first: the row is recorded as REQUESTED before anything is done in Proxmox, and a failure or a
 * cancellation at any step rolls back what was created and leaves the sandbox FAILED with the reason.
 *
 * With a workspace (`sandbox new --workspace`, sessions, rebind; docs/workspaces-design.md §5.5) the
 * order changes: clone → configure → `clean` snapshot while the VM is stopped and has no scsi1 (so a
 * revert never covers the workspace) → attach scsi1 → first start. A workspace that cannot be attached
 * is refused before anything is cloned wherever that can be known; the workspace itself is never
 * harmed by a rollback, because the sandbox never owns its volume.
 */
import type { Profile } from "../../../config/profiles.js";
import { AgentlabError, ERROR_CODES } from "../../../protocol/errors.js";
import type { Sandbox as SandboxJson } from "../../../protocol/sandbox.js";
import { formatDuration } from "../../../protocol/units.js";
import type { DaemonContext } from "../../context.js";
import { removeSnippet, renderUserData, writeSnippet } from "../../guest/cloud-init.js";
import { firstGuestAddress } from "../../guest/ready-waiters.js";
import { runnerScript } from "../../guest/runner-script.js";
import type { ClusterVm, VmConfig, VmRef } from "../../proxmox/types.js";
import { transitionSandbox } from "../../state/sandbox.js";
import { leaseHeldError, sandboxLeaseOwner } from "../../store/leases.js";
import type { Sandbox } from "../../store/sandboxes.js";
import type { Workspace } from "../../store/workspaces.js";
import { describe, isVmNotFound } from "../maintenance-steps.js";
import type { Operation } from "../operation.js";
import { templateNodeRefusal } from "../placement.js";
import { removeVm } from "./destroy.js";
import type { SandboxScope } from "./guards.js";
import { waitForIp } from "./guest-address.js";
import { recordEvent, reportStep } from "./journal.js";
import { sandboxJson } from "./json.js";
import { CLEAN_SNAPSHOT } from "./revert.js";
import type { ValidateParams } from "./validate.js";
import { diskSizeGb, isTemplateConfig, netMac, rootDisk, sandboxTags, vmTags } from "./vm-config.js";
import type { VmidAllocator } from "./vmid-allocator.js";
import { releaseSandboxWorkspace, type SandboxWorkspaces } from "./workspace.js";

/** sandbox.create takes the request of sandbox.validate, plus the workspace to attach before the first boot. */
export type CreateParams = ValidateParams & {
  workspace?: string | undefined;
  /** Internal (job run; not an RPC field): the job bound to the sandbox when its VMID is reserved. */
  jobId?: string | undefined;
  /**
   * Internal (the warm pool; not an RPC field): provision a member of this profile's pool, with no
   * lease and its default name, invisible to users until `sandbox new` claims it (pool/claim.ts).
   */
  pool?: { onReserved(vmid: number): void } | undefined;
};

/** How a sandbox gets its workspace while it is provisioned. */
export interface WorkspacePlan {
  /** Workspace name or id. */
  ref: string;
  /** Owner of the attachment lease, e.g. `session:<id>`; by default `sandbox:<vmid>`. */
  leaseOwner?: string;
  sessionId?: string;
  /**
   * Take the lease in the transaction that records the sandbox, so nothing else can take the workspace
   * while the VM is cloned. False for rebind: the old sandbox holds the lease until it is detached.
   */
  reserveLease?: boolean;
  /** The sandbox the workspace may still be attached to when provisioning starts (rebind's old one). */
  attachedTo?: number;
  /** Runs in the transaction that records the sandbox (a session points at it from the start). */
  onReserved?: (vmid: number) => void;
  /** Runs after the `clean` snapshot, before the attach (rebind: detach from the old sandbox). */
  beforeAttach?: (vmid: number, op: Operation) => Promise<void>;
  /**
   * Runs right after the attach committed, with no await in between (rebind: record its own intent
   * row, which the attach's own row kept out until now).
   */
  afterAttach?: (vmid: number) => void;
  /** Undoes beforeAttach after a failure, once the new sandbox has let go of the workspace. */
  undoBeforeAttach?: (op: Operation) => Promise<void>;
}

export function resolveProfile(ctx: DaemonContext, name: string): Profile {
  const profile = ctx.profiles.find((p) => p.name === name);
  if (!profile) {
    const names = ctx.profiles.map((p) => p.name).sort();
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

/**
 * Every refusal that can be known before a VM is cloned: the workspace exists and is ready, no other
 * operation or sandbox has it, its lease is free, and it lives on the node the template clones to.
 */
export function workspaceRefusal(
  ctx: DaemonContext,
  workspaces: SandboxWorkspaces | undefined,
  plan: WorkspacePlan,
  node: string | undefined,
  profile: string,
): { workspace: Workspace; error?: AgentlabError } {
  const ws = ctx.store.workspaces.require(plan.ref);
  const fail = (error: AgentlabError) => ({ workspace: ws, error });
  if (!workspaces) return fail(new AgentlabError("INTERNAL", "workspaces are not available in this daemon"));
  if (ws.state === "broken") {
    return fail(
      new AgentlabError(
        "CONFLICT",
        `workspace ${ws.name} is broken: ${ws.broken_reason ?? "unknown reason"}`,
        {
          hint: `agentlab workspace check ${ws.name} lists what is wrong and how to fix it`,
          details: { workspace_id: ws.id, state: ws.state },
        },
      ),
    );
  }
  if (ws.state !== "ready") {
    return fail(
      new AgentlabError("WORKSPACE_BUSY", `workspace ${ws.name} is ${ws.state}`, {
        hint: `wait for it to finish (agentlab workspace show ${ws.name})`,
        details: { workspace_id: ws.id, state: ws.state },
      }),
    );
  }
  const inFlight = ctx.store.workspaceOps.getByWorkspace(ws.id);
  if (inFlight) {
    return fail(
      new AgentlabError("WORKSPACE_BUSY", `workspace ${ws.name} has a ${inFlight.kind} operation in flight`, {
        hint: `wait for it to finish (agentlab workspace show ${ws.name})`,
        details: { workspace_id: ws.id, operation: inFlight.kind },
      }),
    );
  }
  if (ws.attached_vmid !== null && ws.attached_vmid !== plan.attachedTo) {
    const session = ctx.store.sessions.byCurrentVmid(ws.attached_vmid);
    return fail(
      new AgentlabError("WORKSPACE_ATTACHED", "workspace already attached", {
        hint: session
          ? `it is attached to sandbox ${ws.attached_vmid} of session ${session.name}: agentlab session stop ${session.name}, or move it: agentlab workspace rebind ${ws.name} --profile ${profile}`
          : `it is attached to sandbox ${ws.attached_vmid}: agentlab workspace detach ${ws.name}, or move it: agentlab workspace rebind ${ws.name} --profile ${profile}`,
        details: {
          workspace_id: ws.id,
          workspace_name: ws.name,
          attached_vmid: ws.attached_vmid,
          ...(session ? { session: session.name } : {}),
        },
      }),
    );
  }
  if (ws.holder_vmid === null || ws.node === null) {
    return fail(
      new AgentlabError("CONFLICT", `workspace ${ws.name} has no holder VM`, {
        hint: `check it with agentlab workspace check ${ws.name}`,
        details: { workspace_id: ws.id },
      }),
    );
  }
  if (node !== undefined && ws.node !== node) {
    return fail(
      new AgentlabError(
        "CONFLICT",
        `workspace ${ws.name} lives on node ${ws.node}, the template of profile ${profile} on ${node}; local storage cannot be shared`,
        {
          hint: `use a profile whose template is on ${ws.node}`,
          details: { workspace_node: ws.node, sandbox_node: node, profile },
        },
      ),
    );
  }
  const now = ctx.clock.now();
  const held =
    plan.reserveLease !== false &&
    ws.lease_owner !== null &&
    ws.lease_owner !== plan.leaseOwner &&
    ws.lease_expires_at !== null &&
    ws.lease_expires_at.getTime() > now.getTime();
  if (held) return fail(leaseHeldError(ws, ws, workspaces.describeOwner(ws.lease_owner)));
  return { workspace: ws };
}

/**
 * Resolve the profile, find its template, check the workspace, reserve the VMID and record the sandbox
 * as REQUESTED (under the allocator's lock, with the workspace's lease), then provision it under the
 * sandbox's own lock.
 */
export async function createSandbox(
  { ctx, locks }: SandboxScope,
  vmids: VmidAllocator,
  workspaces: SandboxWorkspaces | undefined,
  params: CreateParams,
  op: Operation,
  workspacePlan?: WorkspacePlan,
): Promise<SandboxJson> {
  const profile = resolveProfile(ctx, params.profile);
  const cluster = await ctx.backend.listVms();
  const template = cluster.find((vm) => vm.vmid === profile.template_vmid);
  if (!template) {
    throw new AgentlabError("PROVISIONING_FAILED", `template VM ${profile.template_vmid} does not exist`, {
      hint: `check the template named by profile "${profile.name}": qm list | grep ${profile.template_vmid}`,
      details: { profile: profile.name, template_vmid: profile.template_vmid },
    });
  }
  const elsewhere = await templateNodeRefusal(ctx, template, profile.name);
  if (elsewhere) throw elsewhere;
  const plan = workspacePlan ?? (params.workspace !== undefined ? { ref: params.workspace } : undefined);
  let workspace: Workspace | undefined;
  if (plan) {
    const checked = workspaceRefusal(ctx, workspaces, plan, template.node, profile.name);
    if (checked.error) throw checked.error;
    workspace = checked.workspace;
  }
  const pool = params.pool !== undefined;
  // A pool member has no lease until it is claimed: it counts against nobody's.
  const ttl = pool ? undefined : (params.ttl_minutes ?? profile.behavior.ttl_minutes_default);
  const created = ctx.clock.now();
  const tags = sandboxTags(params.tags ?? []);
  const row = await vmids.reserve(params.vmid, cluster, (vmid) =>
    ctx.store.tx(() => {
      const inserted = ctx.store.sandboxes.insert({
        vmid,
        name: params.name ?? `sandbox-${vmid}`,
        profile: profile.name,
        state: "REQUESTED",
        node: template.node,
        keepalive: params.keepalive ?? profile.behavior.keepalive_default,
        lease_expires_at: ttl !== undefined && ttl > 0 ? new Date(created.getTime() + ttl * 60_000) : null,
        tags,
        created_at: created,
        ...(pool ? { pool: profile.name } : {}),
      });
      if (plan && workspace && plan.reserveLease !== false) {
        const owner = plan.leaseOwner ?? sandboxLeaseOwner(vmid);
        const got = ctx.store.workspaceLeases.acquire(
          workspace.id,
          owner,
          ctx.config.workspace_lease_ttl_ms,
          ctx.clock.now(),
        );
        if (!got.ok) throw leaseHeldError(workspace, got, workspaces?.describeOwner(got.lease_owner));
      }
      plan?.onReserved?.(vmid);
      if (params.jobId !== undefined) ctx.store.jobs.bindSandbox(params.jobId, vmid);
      params.pool?.onReserved(vmid);
      const what = pool
        ? `requested for the warm pool of profile ${profile.name}`
        : `requested with profile ${profile.name}`;
      recordEvent(ctx, vmid, "sandbox.requested", what, {
        profile: profile.name,
        ...(pool ? { pool: profile.name } : {}),
        ...(workspace ? { workspace: workspace.name, workspace_id: workspace.id } : {}),
      });
      return inserted;
    }),
  );
  reportStep(op, row.vmid, "reserve", `reserved VMID ${row.vmid} on node ${template.node}`);
  const run: Run = {
    ctx,
    row,
    profile,
    template,
    op,
    vm: { vmid: row.vmid, node: template.node },
    deadline: ctx.clock.now().getTime() + ctx.config.provisioning_timeout_ms,
  };
  const key = String(row.vmid);
  if (!plan || !workspace || !workspaces) {
    return locks.run(key, async () => {
      try {
        await prepare(run, false);
        return await boot(run, true);
      } catch (error) {
        throw await failed(run, error);
      }
    });
  }
  const ws = workspace;
  let detachedOld = false;
  try {
    await locks.run(key, () => prepare(run, true));
    if (plan.beforeAttach) {
      await plan.beforeAttach(row.vmid, op);
      detachedOld = true;
    }
    op.signal.throwIfAborted();
    reportStep(op, row.vmid, "attach", `attaching workspace ${ws.name} as scsi1 before the first boot`);
    // The attach takes the workspace's lock and then this sandbox's, so provisioning does not hold
    // the sandbox's lock across it (lock order: workspace before sandbox, never after).
    await workspaces.attach(ws.id, row.vmid, op, {
      leaseOwner: plan.leaseOwner ?? sandboxLeaseOwner(row.vmid),
      ...(plan.sessionId ? { sessionId: plan.sessionId } : {}),
    });
    plan.afterAttach?.(row.vmid);
    return await locks.run(key, async () => {
      const now = ctx.store.sandboxes.get(row.vmid);
      if (now?.state !== "PROVISIONING") {
        throw new AgentlabError(
          "CONFLICT",
          `sandbox ${row.vmid} left provisioning (it is ${now?.state ?? "gone"}) while its workspace was attached`,
          { details: { vmid: row.vmid, state: now?.state } },
        );
      }
      return boot(run, false);
    });
  } catch (error) {
    // A lease this provisioning took itself goes with it; one it found held (rebind) stays.
    const taken = plan.reserveLease !== false ? plan.leaseOwner : undefined;
    const wrapped = await locks.run(key, () => failed(run, error, taken));
    if (detachedOld && plan.undoBeforeAttach) {
      try {
        await plan.undoBeforeAttach(op);
      } catch (undoError) {
        op.log.error(
          { vmid: row.vmid, err: undoError },
          `could not put workspace ${ws.name} back where it was: ${describe(undoError)}`,
        );
      }
    }
    throw wrapped;
  }
}

/** One provisioning in progress: what it works on, and what it created so far (for the rollback). */
interface Run {
  ctx: DaemonContext;
  row: Sandbox;
  profile: Profile;
  template: ClusterVm;
  op: Operation;
  vm: VmRef;
  /** When waiting for the guest gives up: the whole provisioning budget, counted from the reservation. */
  deadline: number;
  vmCreated?: boolean;
  /** The clone was sent: if its answer was lost (a failed task poll, a dropped connection), the VM may exist. */
  cloneSent?: boolean;
  snippetPath?: string | null;
  /** The clone's config as read before the changes: net0's MAC for the network binding. */
  cloned?: VmConfig;
}

/** Whether the profile has a network section at all: then net0 is rewritten even without a bridge. */
function profileSetsNetwork(profile: Profile): boolean {
  return typeof profile.raw.network === "object" && profile.raw.network !== null;
}

/**
 * PROVISIONING: clone, cloud-init snippet, resources and network, root disk size; with `cleanNow` the
 * `clean` snapshot too, while the VM is stopped and before anything else is attached. The caller holds
 * the VMID's lock.
 */
async function prepare(run: Run, cleanNow: boolean): Promise<void> {
  const { ctx, row, profile, template, op, vm } = run;
  const { backend, config } = ctx;
  transitionSandbox(ctx.store, row.vmid, "PROVISIONING");
  op.signal.throwIfAborted();
  // Linked or full: /cluster/resources says `template: 1` once pvestatd has reported the VM, and a
  // template cannot become a plain VM again, so that answer is trusted as it is. Its absence proves
  // nothing (the key is left out until pvestatd has reported, API2Tools.pm:84-116, which would silently
  // make a full clone), so then the template's own config decides: one call fewer per create for the
  // common case of a long-standing template (issue 15).
  const full =
    config.proxmox_clone_mode === "full" ||
    (!template.template &&
      !isTemplateConfig(await backend.getConfig({ vmid: template.vmid, node: template.node })));
  op.signal.throwIfAborted();
  reportStep(op, row.vmid, "clone", `cloning template ${template.vmid} (${full ? "full" : "linked"} clone)`);
  run.cloneSent = true;
  await backend.clone(
    { vmid: template.vmid, node: template.node },
    row.vmid,
    { name: row.name, full },
    { signal: op.signal },
  );
  run.vmCreated = true;
  ctx.store.sandboxes.update(row.vmid, { vm_created: true });
  op.signal.throwIfAborted();

  // A token for the guest's phone-home, when a guest can reach the listener at all.
  const phoneHome = ctx.guestReady?.phoneHomeAvailable ? ctx.guestReady.issue(row.vmid) : undefined;
  const job = jobRunner(ctx, row.vmid, phoneHome !== undefined);
  const snippet = writeSnippet(
    config.snippets_dir,
    row.vmid,
    renderUserData({
      vmid: row.vmid,
      hostname: row.name,
      ...(config.ssh_public_key ? { sshPublicKey: config.ssh_public_key } : {}),
      ...(ctx.sshIdentity ? { daemonPublicKey: ctx.sshIdentity.publicKey } : {}),
      ...(phoneHome ? { bootstrap: phoneHome } : {}),
      ...(job ? { job } : {}),
    }),
  );
  run.snippetPath = snippet.path;
  ctx.store.sandboxes.update(row.vmid, { snippet_path: snippet.path });

  reportStep(op, row.vmid, "configure", "setting resources, network and cloud-init");
  const cloned = await backend.getConfig(vm);
  run.cloned = cloned;
  const changes: Record<string, string | number> = {
    cicustom: `user=${config.snippet_storage}:snippets/${snippet.file}`,
    ipconfig0: "ip=dhcp",
    scsihw: profile.storage.scsihw ?? "virtio-scsi-pci",
    tags: vmTags(row.tags),
  };
  if (profile.resources.cores !== undefined) changes.cores = profile.resources.cores;
  if (profile.resources.memory_mb !== undefined) changes.memory = profile.resources.memory_mb;
  if (profile.network.bridge !== undefined || profileSetsNetwork(profile)) {
    const model = profile.network.model ?? "virtio";
    const mac = netMac(cloned.net0);
    const bridge = profile.network.bridge ?? /bridge=([^,]+)/.exec(String(cloned.net0 ?? ""))?.[1] ?? "vmbr1";
    changes.net0 = `${model}${mac ? `=${mac}` : ""},bridge=${bridge}${profile.network.firewall === false ? "" : ",firewall=1"}`;
  }
  await backend.setConfig(vm, changes);
  const wantGb = profile.storage.root_size_gb;
  const disk = rootDisk(cloned);
  if (wantGb !== undefined && disk) {
    const have = diskSizeGb(cloned[disk]);
    if (have === undefined || have < wantGb) {
      reportStep(op, row.vmid, "resize", `growing ${disk} to ${wantGb}G`);
      await backend.resizeDisk(vm, disk, `${wantGb}G`, { signal: op.signal });
    }
  }
  op.signal.throwIfAborted();
  if (cleanNow) await takeClean(run, "state before the first boot, without the workspace");
}

async function takeClean(run: Run, what: string): Promise<void> {
  const { ctx, row, op, vm } = run;
  reportStep(op, row.vmid, "snapshot", `taking the "${CLEAN_SNAPSHOT}" snapshot for revert`);
  await ctx.backend.snapshotCreate(vm, CLEAN_SNAPSHOT, `agentlab: ${what}`, { signal: op.signal });
}

/**
 * The runner and its job token when a QUEUED job is bound to this sandbox (job run), else undefined. A
 * job's runner reaches the daemon through the guest listener only, so without it the job cannot start.
 */
function jobRunner(
  ctx: DaemonContext,
  vmid: number,
  listening: boolean,
): { token: string; runnerScript: string } | undefined {
  const job = ctx.store.jobs.latestForSandbox(vmid);
  if (job?.status !== "QUEUED") return undefined;
  if (!listening || !ctx.guestReady) {
    throw new AgentlabError(
      "PROVISIONING_FAILED",
      `job ${job.id} cannot start: the guest listener is not listening, so its runner could not fetch the job`,
      {
        hint: "agentlab status shows why; fix bootstrap_listen (usually: create vmbr1) and restart agentlabd",
      },
    );
  }
  return { token: ctx.guestReady.issueJobToken(vmid), runnerScript: runnerScript() };
}

/**
 * BOOTING: start and wait for the guest's address (phone-home or guest agent, whichever answers first);
 * READY: network binding, and with `cleanAfter` the `clean` snapshot; RUNNING. The caller holds the
 * VMID's lock.
 */
async function boot(run: Run, cleanAfter: boolean): Promise<SandboxJson> {
  const { ctx, row, profile, op, vm } = run;
  const { backend } = ctx;
  transitionSandbox(ctx.store, row.vmid, "BOOTING");
  reportStep(op, row.vmid, "start", "starting the VM");
  await ctx.network?.beforeStart(row.vmid);
  await backend.start(vm, { signal: op.signal });

  reportStep(op, row.vmid, "wait-guest", "waiting for the guest to report its address");
  const { ip, via, phoneHomeMissed, hostKeys } = await firstGuestAddress(
    ctx.guestReady,
    row.vmid,
    op.signal,
    (signal) => waitForIp(ctx, vm, run.deadline, { ...op, signal }),
    { graceMs: ctx.config.phone_home_grace_ms },
  );
  if (phoneHomeMissed) {
    const waited = formatDuration(ctx.config.phone_home_grace_ms);
    recordEvent(
      ctx,
      row.vmid,
      "sandbox.phone_home.missed",
      `the guest agent reported ${ip} but the guest did not phone home within ${waited}: cloud-init may not have finished (check the guest's /var/log/cloud-init-output.log and that it reaches the guest listener)`,
      { ip, grace_ms: ctx.config.phone_home_grace_ms },
    );
    ctx.log.warn(
      { vmid: row.vmid, ip },
      `sandbox ${row.vmid}: no phone-home within ${waited}; READY by the guest agent`,
    );
  }
  // This boot's keys replace whatever an earlier boot of the VMID reported; none reported clears them.
  transitionSandbox(ctx.store, row.vmid, "READY", { patch: { ip, ssh_host_keys: hostKeys ?? null } });
  await ctx.network?.bind(row.vmid, netMac(run.cloned?.net0), ip, profile.network.mode);
  recordEvent(ctx, row.vmid, "sandbox.slo.ready", `ready at ${ip}`, {
    duration_ms: ctx.clock.now().getTime() - row.created_at.getTime(),
    ip,
    via,
  });
  if (cleanAfter) await takeClean(run, "state right after provisioning");
  const running = transitionSandbox(ctx.store, row.vmid, "RUNNING");
  reportStep(op, row.vmid, "ready", `sandbox ${row.vmid} is running at ${ip}`, "info");
  return sandboxJson(running);
}

/**
 * A failed or cancelled provisioning: roll back (under the sandbox's lock) and return the error to throw.
 */
async function failed(run: Run, error: unknown, leaseOwner?: string): Promise<AgentlabError> {
  const { ctx, row, op } = run;
  const cancelled = op.signal.aborted;
  const reason = cancelled ? `cancelled: ${describe(op.signal.reason)}` : describe(error);
  op.log.warn(
    { vmid: row.vmid, err: error, vm_created: run.vmCreated === true },
    `provisioning failed: ${reason}`,
  );
  ctx.guestReady?.cancel(row.vmid);
  ctx.guestReady?.revokeJobToken(row.vmid);
  await rollback(run, reason, leaseOwner);
  if (cancelled) {
    return new AgentlabError(
      "CANCELLED",
      `sandbox ${row.vmid} cancelled; what was created has been removed`,
      {
        details: { vmid: row.vmid },
      },
    );
  }
  const code = error instanceof AgentlabError ? error.code : "INTERNAL";
  const outcome = `the sandbox is FAILED with this reason (agentlab sandbox show ${row.vmid}); ${run.vmCreated ? "its VM was removed" : "no VM was created"}`;
  // The cause's own fix comes first when it has one (a 403 names the privilege and the pveum lines
  // that grant it); a cause with only its code's generic hint adds nothing.
  const fix =
    error instanceof AgentlabError && error.hint !== ERROR_CODES[error.code].hint ? error.hint : undefined;
  return new AgentlabError("PROVISIONING_FAILED", `failed to provision sandbox ${row.vmid}: ${reason}`, {
    hint: fix ? `${fix}\n${outcome}` : outcome,
    details: { vmid: row.vmid, cause_code: code },
    cause: error,
  });
}

/**
 * Whether a clone whose outcome the daemon never learned made this sandbox's VM: a VM with its VMID and
 * its name. The name tells it from a VM someone else made with that VMID (the clone was then refused
 * with `VM N already exists`, and that VM is not ours to remove). When Proxmox cannot be asked, the VM
 * is taken as made: the rollback's removal then fails and leaves the row for destroy --force, instead of
 * forgetting a VM that may exist.
 */
async function cloneLanded(run: Run): Promise<boolean> {
  try {
    const config = await run.ctx.backend.getConfig(run.vm);
    return config.name === run.row.name;
  } catch (error) {
    return !isVmNotFound(error);
  }
}

/**
 * Undo a failed or cancelled provisioning: FAILED with the reason first (so the row is never left
 * in a provisioning state), then the VM is destroyed only if its clone succeeded for this row. Once no
 * VM references the workspace any more, its records let go of the sandbox too (attachment, lease,
 * session); if the VM could not be removed they stay, and destroy --force finishes the job.
 */
async function rollback(run: Run, reason: string, leaseOwner?: string): Promise<void> {
  const { ctx, row, vm, op } = run;
  const vmid = row.vmid;
  const vmCreated = run.vmCreated === true || (run.cloneSent === true && (await cloneLanded(run)));
  if (vmCreated && !run.vmCreated) {
    run.vmCreated = true;
    ctx.store.sandboxes.update(vmid, { vm_created: true });
  }
  try {
    transitionSandbox(ctx.store, vmid, "FAILED", { reason });
  } catch (error) {
    op.log.error({ vmid, err: error }, "could not mark the sandbox FAILED");
  }
  recordEvent(ctx, vmid, "sandbox.provision_failed", reason, { reason, vm_created: vmCreated });
  let removed = !vmCreated;
  if (vmCreated) {
    try {
      await removeVm(ctx, vm);
      removed = true;
      recordEvent(ctx, vmid, "sandbox.rollback.completed", "removed the VM created for this sandbox");
    } catch (error) {
      recordEvent(ctx, vmid, "sandbox.rollback.failed", `could not remove VM ${vmid}: ${describe(error)}`);
      op.log.error(
        { vmid, err: error },
        "rollback could not remove the VM; sandbox destroy --force will retry",
      );
    }
  }
  if (removed) {
    try {
      releaseSandboxWorkspace(ctx, vmid, leaseOwner ? { alsoRelease: leaseOwner } : {});
    } catch (error) {
      op.log.error({ vmid, err: error }, "could not record the workspace as detached after the rollback");
    }
  }
  const snippetPath = run.snippetPath ?? null;
  removeSnippet(snippetPath);
  if (snippetPath) ctx.store.sandboxes.update(vmid, { snippet_path: null });
}
