/**
 * The JSON-RPC contract between the agentlab CLI and agentlabd. Both ends import this module and
 * nothing in it imports anything else of ours.
 */
import { daemonStatus } from "./daemon.js";
import { dbBackup, dbCheck } from "./database.js";
import { jobDoctor, sandboxDoctor, sessionDoctor } from "./doctor.js";
import { sandboxExec } from "./exec.js";
import {
  sandboxFileCancel,
  sandboxFileList,
  sandboxFileMkdir,
  sandboxFileRead,
  sandboxFileStat,
  sandboxFileWrite,
} from "./files.js";
import { daemonChecks } from "./init.js";
import {
  jobArtifactRead,
  jobArtifacts,
  jobCancel,
  jobList,
  jobLogs,
  jobRun,
  jobShow,
  jobValidate,
} from "./job.js";
import { maintenanceRun, sandboxInventory, sandboxReconcile } from "./maintenance.js";
import type { Method } from "./method.js";
import { profileList } from "./profile.js";
import {
  sandboxCreate,
  sandboxDestroy,
  sandboxLeaseRenew,
  sandboxList,
  sandboxLogs,
  sandboxPause,
  sandboxPrune,
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
} from "./sandbox.js";
import {
  sessionBranch,
  sessionCreate,
  sessionFork,
  sessionList,
  sessionResume,
  sessionShow,
  sessionStop,
} from "./session.js";
import { tokenCreate, tokenList, tokenRevoke } from "./token.js";
import {
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
} from "./workspace.js";

export * from "./daemon.js";
export * from "./database.js";
export * from "./doctor.js";
export * from "./errors.js";
export * from "./exec.js";
export * from "./files.js";
export * from "./init.js";
export * from "./job.js";
export * from "./limits.js";
export * from "./maintenance.js";
export * from "./method.js";
export * from "./profile.js";
export * from "./progress.js";
export * from "./sandbox.js";
export * from "./session.js";
export * from "./socket.js";
export * from "./token.js";
export * from "./units.js";
export * from "./workspace.js";

/** Every method the daemon serves, in the order docs/rpc.md lists them. */
export const METHODS: readonly Method[] = [
  daemonStatus,
  daemonChecks,
  profileList,
  sandboxCreate,
  sandboxList,
  sandboxShow,
  sandboxStart,
  sandboxStop,
  sandboxDestroy,
  sandboxPrune,
  sandboxInventory,
  sandboxReconcile,
  sandboxLeaseRenew,
  sandboxTouch,
  sandboxLogs,
  sandboxValidate,
  sandboxStopAll,
  sandboxPause,
  sandboxResume,
  sandboxUpdate,
  sandboxRevert,
  sandboxSnapshotSave,
  sandboxSnapshotList,
  sandboxSnapshotRestore,
  sandboxExec,
  sandboxFileStat,
  sandboxFileList,
  sandboxFileRead,
  sandboxFileMkdir,
  sandboxFileWrite,
  sandboxFileCancel,
  workspaceCreate,
  workspaceList,
  workspaceShow,
  workspaceAttach,
  workspaceDetach,
  workspaceCheck,
  workspaceFsck,
  workspaceSnapshotCreate,
  workspaceSnapshotList,
  workspaceSnapshotRestore,
  workspaceFork,
  workspaceLeaseClear,
  workspaceRebind,
  workspaceDestroy,
  sessionCreate,
  sessionList,
  sessionShow,
  sessionStop,
  sessionResume,
  sessionFork,
  sessionBranch,
  jobRun,
  jobValidate,
  jobShow,
  jobList,
  jobCancel,
  jobLogs,
  jobArtifacts,
  jobArtifactRead,
  sandboxDoctor,
  jobDoctor,
  sessionDoctor,
  tokenCreate,
  tokenList,
  tokenRevoke,
  maintenanceRun,
  dbBackup,
  dbCheck,
];
