/**
 * THE authorisation table of the remote listener: for every method a remote token may call, the scope
 * it needs and, for `operate` methods, which params name a sandbox, workspace or job the token must own
 * and what the call creates (recorded as the token's). A method missing here is refused remotely: new
 * methods are local-only until someone decides their scope (deny by default). The Unix socket does not
 * consult this table: its group-based trust is unchanged.
 *
 * Upstream authorised routes by command only even when the body named another target (security review
 * F5, F10); here a target param is checked against the row's owner_token as well.
 */
import {
  daemonChecks,
  daemonStatus,
  dbBackup,
  dbCheck,
  jobArtifactRead,
  jobArtifacts,
  jobCancel,
  jobDoctor,
  jobList,
  jobLogs,
  jobRun,
  jobShow,
  jobValidate,
  type Method,
  maintenanceRun,
  profileList,
  sandboxCreate,
  sandboxDestroy,
  sandboxDoctor,
  sandboxExec,
  sandboxFileCancel,
  sandboxFileList,
  sandboxFileMkdir,
  sandboxFileRead,
  sandboxFileStat,
  sandboxFileWrite,
  sandboxInventory,
  sandboxLeaseRenew,
  sandboxList,
  sandboxLogs,
  sandboxPause,
  sandboxPrune,
  sandboxReconcile,
  sandboxResume,
  sandboxRevert,
  sandboxShow,
  sandboxSnapshotList,
  sandboxSnapshotRestore,
  sandboxSnapshotSave,
  sandboxStart,
  sandboxStop,
  sandboxStopAll,
  sandboxTouch,
  sandboxUpdate,
  sandboxValidate,
  sessionBranch,
  sessionCreate,
  sessionDoctor,
  sessionFork,
  sessionList,
  sessionResume,
  sessionShow,
  sessionStop,
  type TokenScope,
  tokenCreate,
  tokenList,
  tokenRevoke,
  workspaceAttach,
  workspaceCheck,
  workspaceCreate,
  workspaceDestroy,
  workspaceDetach,
  workspaceFork,
  workspaceFsck,
  workspaceLeaseClear,
  workspaceList,
  workspaceRebind,
  workspaceShow,
  workspaceSnapshotCreate,
  workspaceSnapshotList,
  workspaceSnapshotRestore,
} from "../../protocol/index.js";
import type { OwnedKind } from "../store/api-tokens.js";

/** A param that names an existing sandbox (vmid), workspace (name or id) or job (id). */
export interface TargetParam {
  kind: OwnedKind;
  param: string;
}

/** Where the id of what a call created is found in its result. */
export interface Created {
  kind: OwnedKind;
  /** Path into the result, e.g. ["sandbox", "vmid"]. */
  path: readonly string[];
}

export interface Requirement {
  scope: TokenScope;
  /** operate: params naming things an owner-limited token must have created. */
  targets?: readonly TargetParam[];
  /** operate: what the call creates; recorded as the calling token's. */
  creates?: readonly Created[];
  /**
   * operate: the method acts on things that carry no owner (sessions), so an owner-limited token cannot
   * be checked against them and is refused; an operate token made with --all may call it.
   */
  unowned?: true;
}

const read: Requirement = { scope: "read" };
const admin: Requirement = { scope: "admin" };
const onSandbox: Requirement = { scope: "operate", targets: [{ kind: "sandbox", param: "vmid" }] };
const onWorkspace: Requirement = { scope: "operate", targets: [{ kind: "workspace", param: "workspace" }] };
const onSessions: Requirement = { scope: "operate", unowned: true };

export const REMOTE_METHODS: ReadonlyMap<Method, Requirement> = new Map<Method, Requirement>([
  // read: lists, shows, status, doctor bundles. Read tokens see every sandbox: they change nothing.
  [daemonStatus, read],
  [profileList, read],
  [sandboxList, read],
  [sandboxShow, read],
  [sandboxLogs, read],
  [sandboxSnapshotList, read],
  [sandboxValidate, read],
  [sandboxDoctor, read],
  [workspaceList, read],
  [workspaceShow, read],
  [workspaceSnapshotList, read],
  [sessionList, read],
  [sessionShow, read],
  [sessionDoctor, read],
  [jobList, read],
  [jobShow, read],
  [jobDoctor, read],
  // A job's output and files, like job show (whose output_tail they extend): read tokens see every job.
  [jobLogs, read],
  [jobArtifacts, read],
  [jobArtifactRead, read],
  // Checks a request as job.run would, recording nothing: like sandbox.validate.
  [jobValidate, read],

  // operate: create, destroy, start, stop, jobs, workspace operations.
  [
    sandboxCreate,
    {
      scope: "operate",
      targets: [
        { kind: "sandbox", param: "vmid" },
        { kind: "workspace", param: "workspace" },
      ],
      creates: [{ kind: "sandbox", path: ["vmid"] }],
    },
  ],
  [sandboxDestroy, onSandbox],
  [sandboxStart, onSandbox],
  [sandboxStop, onSandbox],
  [sandboxLeaseRenew, onSandbox],
  // Keeps a sandbox from idle stop, as renewing keeps it from expiry.
  [sandboxTouch, onSandbox],
  [sandboxPause, onSandbox],
  [sandboxResume, onSandbox],
  [sandboxUpdate, onSandbox],
  [sandboxRevert, onSandbox],
  [sandboxSnapshotSave, onSandbox],
  [sandboxSnapshotRestore, onSandbox],
  [sandboxExec, onSandbox],
  // sandbox cp, both ways: reading a sandbox's files is as sensitive as running a command in it.
  [sandboxFileStat, onSandbox],
  [sandboxFileList, onSandbox],
  [sandboxFileRead, onSandbox],
  [sandboxFileMkdir, onSandbox],
  [sandboxFileWrite, onSandbox],
  [sandboxFileCancel, onSandbox],
  [
    jobRun,
    {
      scope: "operate",
      targets: [{ kind: "workspace", param: "workspace" }],
      // workspace_create makes a workspace for the job: it is the token's too (an existing one named by
      // `workspace` passed the target check, so it is already the token's, or the token has --all).
      creates: [
        { kind: "job", path: ["id"] },
        { kind: "workspace", path: ["workspace_id"] },
      ],
    },
  ],
  [jobCancel, { scope: "operate", targets: [{ kind: "job", param: "id" }] }],
  [workspaceCreate, { scope: "operate", creates: [{ kind: "workspace", path: ["id"] }] }],
  [
    workspaceAttach,
    {
      scope: "operate",
      targets: [
        { kind: "workspace", param: "workspace" },
        { kind: "sandbox", param: "vmid" },
      ],
    },
  ],
  [workspaceDetach, onWorkspace],
  [workspaceCheck, onWorkspace],
  [workspaceFsck, onWorkspace],
  [workspaceSnapshotCreate, onWorkspace],
  [workspaceSnapshotRestore, onWorkspace],
  [workspaceDestroy, onWorkspace],
  [
    workspaceFork,
    {
      scope: "operate",
      targets: [{ kind: "workspace", param: "workspace" }],
      creates: [{ kind: "workspace", path: ["id"] }],
    },
  ],
  [
    workspaceRebind,
    {
      scope: "operate",
      targets: [{ kind: "workspace", param: "workspace" }],
      creates: [{ kind: "sandbox", path: ["sandbox", "vmid"] }],
    },
  ],
  [sessionCreate, onSessions],
  [sessionStop, onSessions],
  [sessionResume, onSessions],
  [sessionFork, onSessions],
  [sessionBranch, onSessions],

  // admin: everything-at-once maintenance, init's checks, leases of others, tokens.
  [daemonChecks, admin],
  [sandboxPrune, admin],
  [maintenanceRun, admin],
  [dbBackup, admin],
  [dbCheck, admin],
  [sandboxStopAll, admin],
  [sandboxInventory, admin],
  [sandboxReconcile, admin],
  [workspaceLeaseClear, admin],
  [tokenCreate, admin],
  [tokenList, admin],
  [tokenRevoke, admin],
]);

/** Read a nested field of a result; undefined when any step is missing. */
export function resultField(result: unknown, path: readonly string[]): string | number | undefined {
  let value: unknown = result;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<string, unknown>)[key];
  }
  return typeof value === "string" || typeof value === "number" ? value : undefined;
}
