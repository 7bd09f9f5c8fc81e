/**
 * The Proxmox privileges the api backend's token needs, in one place: docs/runbook.md's
 * `pveum role add AgentLab` line is checked against AGENTLAB_ROLE_PRIVS by a test, and
 * `agentlab init`/`status` compare the token's effective privileges against requiredPrivileges().
 * Names are pve-access-control's (src/PVE/AccessControl.pm:1057-1168); Qemu.pm is qemu-server's
 * src/PVE/API2/Qemu.pm.
 */

/** The role every ACL line of the runbook grants. */
export const AGENTLAB_ROLE = "AgentLab";

/** What each privilege is for (shown to the user), and in comments the Proxmox source that demands it. */
const ROLE_PRIVS: Record<string, string> = {
  // Qemu.pm:4337-4345 (clone: VM.Allocate on /vms/<newid>); create and destroy the same.
  "VM.Allocate": "clone, create and destroy sandboxes and workspace holders",
  // Qemu.pm:4341 (VM.Clone on /vms/<template>).
  "VM.Clone": "clone the template",
  "VM.Audit": "read VM configs, status, snapshots and the cluster VM list",
  // Qemu.pm:1023 (check_vm_modify_config_perm), 5946 (resize_vm).
  "VM.Config.Disk": "resize disks, attach and detach workspace volumes",
  "VM.Config.CPU": "set cores",
  "VM.Config.Memory": "set memory",
  "VM.Config.Network": "set net0",
  "VM.Config.Options": "set tags, onboot, protection, description",
  "VM.Config.HWType": "set scsihw",
  // Qemu.pm:1026-1029: VM.Config.Cloudinit or VM.Config.Network.
  "VM.Config.Cloudinit": "set cicustom and ipconfig0",
  "VM.PowerMgmt": "start, shut down and stop VMs",
  "VM.Snapshot": "take and delete snapshots",
  "VM.Snapshot.Rollback": "revert a sandbox to its clean snapshot",
  // Qemu.pm:314 (clone, every disk's storage, linked clones too), 189 (new disks), 6025 (resize).
  "Datastore.AllocateSpace": "allocate disks on the storages of clones, holders and resizes",
  // pve-storage Storage.pm:619-656 (check_volume_access), API2/Storage/Status.pm (storage list filter).
  "Datastore.Audit": "list storages and use a workspace volume another VM owns",
  // pve-storage API2/Storage/Config.pm:180.
  "Datastore.Allocate": "read the storage's config (GET /storage/{id}) for lvmthin and ZFS workspaces",
  // pve-guest-common GuestHelpers.pm:397-421 (check_bridge_access), since PVE 8.0.
  "SDN.Use": "put net0 on the bridge",
  // pve-manager API2/Tasks.pm:184-190.
  "Sys.Audit": "see tasks the token did not start",
};

/** Read-only guest agent calls: VM.GuestAgent.Audit since PVE 9 (Agent.pm:65-67), VM.Monitor before. */
export function agentPrivilege(pveMajor: number): string {
  return pveMajor >= 9 ? "VM.GuestAgent.Audit" : "VM.Monitor";
}

/** The privileges of the AgentLab role on a PVE major version, in the runbook's order. */
export function agentlabRolePrivs(pveMajor: number): string[] {
  const privs = Object.keys(ROLE_PRIVS).filter((p) => pveMajor >= 8 || p !== "SDN.Use");
  return [...privs, agentPrivilege(pveMajor)];
}

/** The PVE 9 role, as docs/runbook.md gives it. */
export const AGENTLAB_ROLE_PRIVS: readonly string[] = agentlabRolePrivs(9);

/** `pveum role add AgentLab -privs "..."` for a PVE major version. */
export function roleAddCommand(pveMajor: number): string {
  return `pveum role add ${AGENTLAB_ROLE} -privs "${agentlabRolePrivs(pveMajor).join(",")}"`;
}

export function privilegePurpose(priv: string): string {
  if (priv === "VM.GuestAgent.Audit" || priv === "VM.Monitor")
    return "ask the guest agent for the sandbox's address";
  return ROLE_PRIVS[priv] ?? "";
}

/** The major version of a `version` string such as 9.0.3. */
export function pveMajor(version: string): number {
  return Number.parseInt(version, 10) || 0;
}

/** One path and the privileges needed on it; an entry `A|B` is satisfied by either. */
export interface PrivilegeNeed {
  path: string;
  privs: string[];
}

export interface PrivilegeInputs {
  pveVersion: string;
  templates: { vmid: number; storages: string[]; bridges: string[] }[];
  /** Bridges profiles put net0 on. */
  bridges: string[];
  workspaceStorage?: { id: string; type?: string };
  nodes: string[];
}

/** Workspace storage types whose volumes are opened through GET /storage/{id} (vgname, pool). */
const STORAGE_CONFIG_TYPES = new Set(["lvmthin", "zfspool"]);

/** The privileges the daemon will use, path by path, for this config, these templates and this version. */
export function requiredPrivileges(input: PrivilegeInputs): PrivilegeNeed[] {
  const major = pveMajor(input.pveVersion);
  const needs = new Map<string, Set<string>>();
  const need = (path: string, ...privs: string[]): void => {
    const set = needs.get(path) ?? new Set<string>();
    for (const p of privs) set.add(p);
    needs.set(path, set);
  };
  // New VMIDs (sandboxes, workspace holders) have no ACL of their own: they inherit from /vms.
  need(
    "/vms",
    ...agentlabRolePrivs(major).filter(
      (p) => p.startsWith("VM.") && p !== "VM.Clone" && p !== agentPrivilege(major),
    ),
    major >= 9 ? "VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted" : "VM.Monitor",
  );
  const bridges = new Set(input.bridges);
  for (const t of input.templates) {
    need(`/vms/${t.vmid}`, "VM.Clone", "VM.Audit");
    for (const s of t.storages) need(`/storage/${s}`, "Datastore.AllocateSpace");
    for (const b of t.bridges) bridges.add(b);
  }
  const ws = input.workspaceStorage;
  if (ws) {
    need(`/storage/${ws.id}`, "Datastore.AllocateSpace", "Datastore.Audit");
    if (ws.type && STORAGE_CONFIG_TYPES.has(ws.type)) need(`/storage/${ws.id}`, "Datastore.Allocate");
  }
  if (major >= 8) for (const b of bridges) need(`/sdn/zones/localnetwork/${b}`, "SDN.Use");
  for (const n of input.nodes) need(`/nodes/${n}`, "Sys.Audit");
  return [...needs].map(([path, privs]) => ({ path, privs: [...privs] }));
}

/** The privileges of `need` missing from what GET /access/permissions?path= answered. */
export function missingPrivileges(need: PrivilegeNeed, have: Record<string, unknown>): string[] {
  return need.privs.filter((entry) => !entry.split("|").some((p) => p in have));
}
