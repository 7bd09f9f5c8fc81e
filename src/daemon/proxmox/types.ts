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
  /** Proxmox's RRD-based status: a fresh clone may read "unknown" for ~10 s. */
  state: PowerState;
  template: boolean;
  lock?: string;
  tags: string[];
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
  /** Linked clones need a template source; full copies every disk. */
  full: boolean;
  target?: string;
  storage?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export interface ProxmoxBackend {
  readonly kind: "shell" | "api";
  version(): Promise<{ version: string; release: string }>;
  listNodes(): Promise<NodeInfo[]>;
  /** Every VM of the cluster with its node and status, in one request. */
  listVms(): Promise<ClusterVm[]>;
  /** Whether a VMID is free cluster-wide (Proxmox's nextid check). */
  isVmidFree(vmid: number): Promise<boolean>;
  clone(source: VmRef, newid: number, options: CloneOptions, call?: CallOptions): Promise<void>;
  getConfig(vm: VmRef, options?: { current?: boolean }): Promise<VmConfig>;
  setConfig(vm: VmRef, changes: Record<string, string | number | boolean>, remove?: string[]): Promise<void>;
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
  snapshotDelete(vm: VmRef, name: string, call?: CallOptions): Promise<void>;
  /** Throws GUEST_AGENT_NOT_READY while the agent is not answering yet. */
  guestInterfaces(vm: VmRef): Promise<GuestInterface[]>;
  listStorages(node: string): Promise<StorageInfo[]>;
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
