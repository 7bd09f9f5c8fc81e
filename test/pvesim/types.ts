/**
 * The persisted shape of one simulated cluster. Everything lives in one JSON document so that separate
 * processes (each `qm` call, the HTTPS server) see one consistent cluster under one lock.
 *
 * VM configuration is kept the way Proxmox keeps it: string values keyed like the lines of
 * `/etc/pve/nodes/<node>/qemu-server/<vmid>.conf` (`lock`, `template`, `parent` included), so the
 * JSON typing rules of the API and the text of `qm config` can both be derived from it.
 */

export type ConfigMap = Record<string, string>;

export interface NodeRec {
  name: string;
  /** Epoch ms the simulated host "booted"; UPID pstart values count clock ticks from here. */
  bootMs: number;
  online: boolean;
  /** Cluster node id, 1-based, as in /cluster/status. */
  nodeid: number;
}

export interface VmRuntime {
  /** Whether a QEMU process exists. */
  status: "running" | "stopped";
  /** QEMU's own run state as `qmpstatus` reports it. */
  qmpstatus: "running" | "paused" | "stopped";
  pid?: number;
  startedAt?: number;
  /** Epoch ms from which the guest agent answers; absent when no agent was configured at start. */
  agentReadyAt?: number;
  /** guests=qemu: the VM's real QEMU process (its pid file is /var/run/qemu-server/<vmid>.pid). */
  qemu?: { pid: number };
  /** The guest hook process (its own process group), with the marker used to recognise it again. */
  hook?: { pid: number; marker: string };
  /**
   * How many of its vCPUs the guest keeps busy, set by a test (harness setGuestLoad); absent: the idle
   * background of the cpu_load knob. A stop ends the guest's processes, and with them the load.
   */
  load?: number;
}

export interface VmRec {
  vmid: number;
  node: string;
  config: ConfigMap;
  /** Changes waiting for a cold start (the `[PENDING]` section). */
  pending: ConfigMap;
  pendingDelete: string[];
  /** Snapshot sections by name; each holds the snapshotted config plus snaptime/vmstate/snapstate. */
  snapshots: Record<string, ConfigMap>;
  runtime: VmRuntime;
  createdAt: number;
  /** What pvestatd has put into the RRD for this VM, which is all /cluster/resources shows (vms.ts). */
  statd?: StatdView;
}

/** One pvestatd report: `status` is `qmpstatus || status` (pvestatd.pm:341), plus name and template. */
export interface StatdReport {
  status: string;
  name: string;
  template: boolean;
}

export interface StatdView {
  /** The last report, absent until pvestatd has reported the VM at all. */
  shown?: StatdReport;
  /** The state as last observed, and since when it has held. */
  seen: StatdReport;
  since: number;
}

/** `lvm` is thick LVM: raw volumes without snapshots or linked clones (what STORAGE_UNSUPPORTED is for). */
export type StorageType = "dir" | "zfspool" | "lvmthin" | "lvm";

export interface StorageRec {
  id: string;
  type: StorageType;
  content: string[];
  /** Capacity in bytes, reported by status. */
  total: number;
  shared: boolean;
  enabled: boolean;
  active: boolean;
  /** What the real host path would be, shown by nothing but kept for README/debug output. */
  hostPath: string;
  /** zfspool: the dataset volumes live under (`rpool/data`), as `GET /storage/{id}` reports it. */
  pool?: string;
  /** lvmthin and lvm: the volume group. */
  vgname?: string;
  /** lvmthin: the thin pool LV inside the volume group. */
  thinpool?: string;
}

export interface VolumeRec {
  storage: string;
  node: string;
  /** The volume name part of the volid (after `<storage>:`). */
  volname: string;
  /** The owner VMID encoded in the name (0 for snippets and other non-image content). */
  vmid: number;
  format: "raw" | "qcow2" | "vmdk";
  content: "images" | "snippets" | "iso";
  size: number;
  ctime: number;
  /** Volname of the base volume a linked clone was made from. */
  base?: string;
  /** Storage-level snapshots of this volume, oldest first. */
  snapshots: string[];
  /**
   * zfspool: the snapshot a `zfs clone` was made from, as `<volume name>@<snap>` (what the content
   * listing reports as `parent`). While it is set, that snapshot and its volume cannot be destroyed.
   */
  origin?: string;
  /** lvm/lvmthin: whether the LV is active (its /dev link exists). Absent means active. */
  active?: boolean;
  /** lvm/lvmthin: the activation-skip flag (`lvchange -ay` without `-K` leaves such an LV alone). */
  activationSkip?: boolean;
}

export interface TaskLock {
  vmid: number;
  shared: boolean;
}

/** What a task does, as plain data so a later process can finish what an earlier one started. */
export interface TaskOp {
  kind: string;
  vmid: number;
  params: Record<string, string | number | boolean | undefined>;
}

export interface TaskRec {
  upid: string;
  node: string;
  pid: number;
  pstart: number;
  starttime: number;
  type: string;
  id: string;
  /** `user@realm` or `user@realm!tokenid`. */
  user: string;
  createdAt: number;
  phase: "waiting" | "active" | "done";
  beginAt?: number;
  endAt?: number;
  exitstatus?: string;
  log: string[];
  op: TaskOp;
  locks: TaskLock[];
  lockTimeoutMs: number;
  /** Error decided when the task began that it reports when it ends (effects are undone then). */
  failAtEnd?: string;
  /** Scratch data from the begin phase that the end phase needs. */
  scratch: Record<string, unknown>;
}

export interface TokenRec {
  secret: string;
  privsep: boolean;
  /** Epoch seconds, 0 = never. */
  expire: number;
}

export interface UserRec {
  enabled: boolean;
  tokens: Record<string, TokenRec>;
}

export interface AclEntry {
  path: string;
  /** A user id (`u@realm`) or a token id (`u@realm!tok`). */
  subject: string;
  role: string;
  propagate: boolean;
}

export interface SimState {
  format: 1;
  cluster: string;
  nodes: NodeRec[];
  vms: Record<string, VmRec>;
  storages: StorageRec[];
  /** Keyed by `<node>/<storage>:<volname>`. */
  volumes: Record<string, VolumeRec>;
  tasks: TaskRec[];
  nextPid: number;
  users: Record<string, UserRec>;
  acl: AclEntry[];
  /** Roles made with `pveum role add` (pvesim control --add-role); absent in older state files. */
  roles?: Record<string, string[]>;
  /** How often each counted fault (by its id) has fired. */
  faultUse: Record<string, number>;
  /**
   * Faults with a call selector (`call=`, `nth=`), by id: how many matching calls began, and the call
   * that armed the fault while it is in flight (`spent` once that call ended). Absent in older files.
   */
  callFaults?: Record<string, { seen: number; live?: string; spent?: boolean }>;
  createdAt: number;
}
