/**
 * What the daemon needs from Proxmox, typed. Both backends implement this one interface; services
 * depend on it and never on a transport, and no backend touches the database.
 */

/** A VM is addressed by its VMID and the node that owns it (VMIDs are cluster-wide). */
export interface VmRef {
  vmid: number;
  node: string;
}

export type PowerState = "running" | "stopped" | "paused" | "unknown";

export interface VmStatus {
  vmid: number;
  node: string;
  name?: string;
  /** `paused` when QEMU is suspended to RAM (Proxmox reports status running, qmpstatus paused). */
  state: PowerState;
  lock?: string;
  template: boolean;
  uptimeSeconds: number;
  cpu: number;
  tags: string[];
}

/** One entry of the cluster-wide VM list (one call for every VM on every node). */
export interface ClusterVm {
  vmid: number;
  node: string;
  name?: string;
  /**
   * pvestatd's last report (RRD), not the live state: "unknown" until it has reported the VM, and a
   * start or stop shows up only with its next report (up to ~10 s). Ask `status()` for the truth.
   */
  state: PowerState;
  /**
   * Also from pvestatd: false while the VM is unreported, so false proves nothing: where it must be
   * right (linked vs full clone), read `template` in the VM's config. True can be trusted: a template
   * cannot be turned back into a plain VM.
   */
  template: boolean;
  lock?: string;
  tags: string[];
  /**
   * pvestatd's last CPU sample: the VM's CPU use over its last cycle (~10 s) as a fraction of the VM's
   * vCPUs. Absent until pvestatd has reported the VM.
   */
  cpu?: number;
}

export interface NodeInfo {
  node: string;
  online: boolean;
  cpu?: number;
  maxcpu?: number;
  mem?: number;
  maxmem?: number;
}

export interface StorageInfo {
  storage: string;
  type: string;
  active: boolean;
  enabled: boolean;
  shared: boolean;
  content: string[];
  totalBytes?: number;
  usedBytes?: number;
  availBytes?: number;
}

export interface VolumeInfo {
  volid: string;
  path: string;
  sizeBytes: number;
  format?: string;
}

export interface SnapshotInfo {
  name: string;
  parent?: string;
  description?: string;
  /** Unix seconds. */
  snaptime?: number;
  vmstate: boolean;
}

export interface GuestInterface {
  name: string;
  mac?: string;
  ipv4: string[];
  ipv6: string[];
}

/** Config as Proxmox returns it: integers as numbers, everything else (property strings) as strings. */
export type VmConfig = Record<string, string | number>;

export interface CloneOptions {
  name: string;
  /** Linked clones need a template source (or a snapshot on lvmthin); full copies every disk. */
  full: boolean;
  target?: string;
  storage?: string;
  /**
   * Clone the source as it was at this snapshot: linked on lvmthin; full on lvmthin and dir qcow2.
   * zfspool refuses it (`Full clone feature is not supported for a snapshot of '<volid>' (scsi0)`).
   */
  snapname?: string;
  /** Target format of a full clone on file storages (`qcow2` on dir). */
  format?: "raw" | "qcow2" | "vmdk";
  description?: string;
}

/** VM options for `createVm`, as the API takes them (`scsi0: "local-zfs:80"` allocates a new disk). */
export type CreateVmParams = Record<string, string | number | boolean>;

/** One row of `GET .../pending`: the current value, the pending one, or a pending delete (2 = forced). */
export interface PendingEntry {
  key: string;
  value?: string | number;
  pending?: string | number;
  delete?: number;
}

export interface ListTasksOptions {
  vmid?: number;
  /** Task type, e.g. `qmsnapshot`. */
  typefilter?: string;
  /**
   * `active` = running now, plus finished tasks not yet archived (filter on `running`); `archive`
   * (Proxmox's default) = finished; `all`.
   */
  source?: "archive" | "active" | "all";
  /** Proxmox's default is 50. */
  limit?: number;
}

export interface TaskInfo {
  upid: string;
  node: string;
  type: string;
  /** Usually the VMID (a clone's is its source). */
  id: string;
  /** `user@realm`, or `user@realm!token` for API tokens. */
  user: string;
  /** Unix seconds. */
  starttime: number;
  /** Unix seconds; absent while the task runs. */
  endtime?: number;
  /** The exit status (`OK`, `WARNINGS: n`, or the error); absent while the task runs. */
  status?: string;
  running: boolean;
}

/** A storage's configuration (storage.cfg), as `GET /storage/{storage}` gives it. */
export interface StorageConfig {
  storage: string;
  type: string;
  content: string[];
  shared: boolean;
  disabled: boolean;
  /** zfspool: the dataset volumes live under, e.g. `rpool/data`. */
  pool?: string;
  /** lvm, lvmthin: the volume group. */
  vgname?: string;
  /** lvmthin: the thin pool LV. */
  thinpool?: string;
  /** dir (and other file storages): the directory. */
  path?: string;
  /** PVE 9 `snapshot-as-volume-chain` (dir, lvm): snapshots are qcow2 volume chains. */
  snapshotAsVolumeChain?: boolean;
}

/** One volume of a storage's content listing. */
export interface StorageContentEntry {
  volid: string;
  /** Owner VMID (absent for non-image content). */
  vmid?: number;
  format: string;
  content: string;
  sizeBytes: number;
  usedBytes?: number;
  /** Unix seconds. */
  ctime?: number;
  /**
   * What the volume was cloned from: `<base>@__base__` for linked clones of templates,
   * `vm-H-disk-0@<snap>` for a ZFS clone of a snapshot.
   */
  parent?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface ProxmoxBackend {
  readonly kind: "shell" | "api";
  /**
   * Changes the daemon made in Proxmox so far (writes sent, tasks ended; shared-reads.ts): a view kept
   * from a smaller count may predate one of them. Absent: every view is probed afresh.
   */
  readonly changes?: number;
  version(): Promise<{ version: string; release: string }>;
  /**
   * `GET /access/permissions?path=`: the caller's effective privileges on one path (for a privilege
   * separated token, the intersection with its user's), each mapped to its propagate flag.
   */
  permissions(path: string): Promise<Record<string, number>>;
  listNodes(): Promise<NodeInfo[]>;
  /** Every VM of the cluster with its node and status, in one request. */
  listVms(): Promise<ClusterVm[]>;
  /** Whether a VMID is free cluster-wide (Proxmox's nextid check). */
  isVmidFree(vmid: number): Promise<boolean>;
  clone(source: VmRef, newid: number, options: CloneOptions, call?: CallOptions): Promise<void>;
  /**
   * `POST /nodes/{node}/qemu` (`qmcreate`), waiting for the task. A taken VMID fails at once with
   * `unable to create VM N - VM N already exists on node 'x'` (PROXMOX_ERROR); a failed task has freed
   * its volumes and removed the config.
   */
  createVm(node: string, vmid: number, params: CreateVmParams, call?: CallOptions): Promise<void>;
  /** The config (pending changes merged), or with `current` what runs, or a snapshot's config. */
  getConfig(vm: VmRef, options?: { current?: boolean; snapshot?: string }): Promise<VmConfig>;
  getPending(vm: VmRef): Promise<PendingEntry[]>;
  setConfig(vm: VmRef, changes: Record<string, string | number | boolean>, remove?: string[]): Promise<void>;
  /** The same change as `setConfig` through `POST .../config` (task `qmconfig`, the verb for hotplug). */
  setConfigAsync(
    vm: VmRef,
    changes: Record<string, string | number | boolean>,
    remove?: string[],
    call?: CallOptions,
  ): Promise<void>;
  resizeDisk(vm: VmRef, disk: string, size: string, call?: CallOptions): Promise<void>;
  start(vm: VmRef, call?: CallOptions): Promise<void>;
  /** Hard stop; a VM that is already stopped is fine. */
  stop(vm: VmRef, call?: CallOptions): Promise<void>;
  shutdown(
    vm: VmRef,
    options?: { timeoutSeconds?: number; forceStop?: boolean },
    call?: CallOptions,
  ): Promise<void>;
  suspend(vm: VmRef, call?: CallOptions): Promise<void>;
  resume(vm: VmRef, call?: CallOptions): Promise<void>;
  /** Throws PROXMOX_VM_NOT_FOUND when the VM does not exist. */
  status(vm: VmRef): Promise<VmStatus>;
  destroy(vm: VmRef, options?: { purge?: boolean }, call?: CallOptions): Promise<void>;
  snapshotCreate(vm: VmRef, name: string, description?: string, call?: CallOptions): Promise<void>;
  snapshotList(vm: VmRef): Promise<SnapshotInfo[]>;
  snapshotRollback(vm: VmRef, name: string, call?: CallOptions): Promise<void>;
  /**
   * `DELETE …/snapshot/<name>`; with `force` (`?force=1`, `qm delsnapshot --force 1`) Proxmox removes the
   * snapshot from the config even when deleting its storage part fails (that failure is only a warning).
   */
  snapshotDelete(vm: VmRef, name: string, call?: CallOptions, options?: { force?: boolean }): Promise<void>;
  /** Throws GUEST_AGENT_NOT_READY while the agent is not answering yet. */
  guestInterfaces(vm: VmRef): Promise<GuestInterface[]>;
  listStorages(node: string): Promise<StorageInfo[]>;
  /** `GET /storage/{storage}` (needs Datastore.Allocate on /storage/{storage}). */
  storageConfig(storage: string): Promise<StorageConfig>;
  /** `GET /nodes/{node}/storage/{storage}/content`, optionally one owner's volumes or one content type. */
  storageContent(
    node: string,
    storage: string,
    options?: { vmid?: number; content?: string },
  ): Promise<StorageContentEntry[]>;
  /** `GET /nodes/{node}/tasks`, newest first. */
  listTasks(node: string, options?: ListTasksOptions): Promise<TaskInfo[]>;
  /** Allocate a volume; the name must follow Proxmox's vm-<vmid>-* rule. Returns the volid. */
  volumeAlloc(
    node: string,
    storage: string,
    vmid: number,
    filename: string,
    size: string,
    format?: string,
  ): Promise<string>;
  volumeInfo(node: string, volid: string): Promise<VolumeInfo>;
  volumeFree(node: string, volid: string, call?: CallOptions): Promise<void>;
  /** Calls made so far, by kind: spawns for the shell backend, requests for the API backend. */
  readonly calls: { count: number };
}
