/**
 * Every RPC method as it travels: its wire name, whether it reports progress, and the error codes it may
 * answer with. Declared here once, without schemas, so a client that only calls (the CLI) loads this
 * file and vscode-jsonrpc, not zod and every method's schemas (docs/performance.md, "CLI start"). Each
 * protocol module adds its method's summary and zod schemas with defineMethod(wire.x, ...); the daemon
 * and the MCP server validate with those.
 */
import { ProgressType } from "vscode-jsonrpc";
import { wire } from "./method.js";
import type { ProgressValue } from "./progress.js";

/** The `$/progress` notifications of the methods whose `progress` is true (ProgressValue in progress.ts). */
export const progressType = new ProgressType<ProgressValue>();

export const daemonStatus = wire("daemon.status", {
  progress: false,
  errors: ["INTERNAL"],
});

export const daemonChecks = wire("daemon.checks", {
  progress: false,
  errors: ["INTERNAL"],
});

export const profileList = wire("profile.list", {
  progress: false,
  errors: ["INTERNAL"],
});

export const sandboxCreate = wire("sandbox.create", {
  progress: true,
  errors: [
    "PROFILE_NOT_FOUND",
    "CONFLICT",
    "PROXMOX_ERROR",
    "PROXMOX_PERMISSION",
    "PROXMOX_TASK_FAILED",
    "PROVISIONING_FAILED",
    "CANCELLED",
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
  ],
});

export const sandboxList = wire("sandbox.list", {
  progress: false,
  errors: [],
});

export const sandboxShow = wire("sandbox.show", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const sandboxStart = wire("sandbox.start", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE"],
});

export const sandboxStop = wire("sandbox.stop", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE"],
});

export const sandboxDestroy = wire("sandbox.destroy", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "DESTROY_FAILED"],
});

export const sandboxPrune = wire("sandbox.prune", {
  progress: false,
  errors: [],
});

export const sandboxInventory = wire("sandbox.inventory", {
  progress: false,
  errors: ["PROXMOX_ERROR", "PROXMOX_UNREACHABLE", "PROXMOX_TIMEOUT", "PROXMOX_AUTH", "PROXMOX_PERMISSION"],
});

export const sandboxReconcile = wire("sandbox.reconcile", {
  progress: true,
  errors: [
    "PROXMOX_ERROR",
    "PROXMOX_UNREACHABLE",
    "PROXMOX_TIMEOUT",
    "PROXMOX_AUTH",
    "PROXMOX_PERMISSION",
    "DAEMON_SHUTTING_DOWN",
  ],
});

export const sandboxLeaseRenew = wire("sandbox.lease.renew", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND", "LEASE_NOT_RENEWABLE"],
});

export const sandboxTouch = wire("sandbox.touch", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const sandboxLogs = wire("sandbox.logs", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const sandboxValidate = wire("sandbox.validate", {
  progress: false,
  errors: ["PROXMOX_ERROR", "PROXMOX_UNREACHABLE"],
});

export const sandboxStopAll = wire("sandbox.stop_all", {
  progress: true,
  errors: [],
});

export const sandboxPause = wire("sandbox.pause", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "PROXMOX_ERROR"],
});

export const sandboxResume = wire("sandbox.resume", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "PROXMOX_ERROR"],
});

export const sandboxUpdate = wire("sandbox.update", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "PROXMOX_ERROR", "PROXMOX_INVALID"],
});

export const sandboxRevert = wire("sandbox.revert", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "SNAPSHOT_NOT_FOUND", "CONFLICT", "PROXMOX_ERROR"],
});

export const sandboxSnapshotSave = wire("sandbox.snapshot.save", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "CONFLICT", "WORKSPACE_ATTACHED", "PROXMOX_ERROR"],
});

export const sandboxSnapshotList = wire("sandbox.snapshot.list", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "PROXMOX_ERROR"],
});

export const sandboxSnapshotRestore = wire("sandbox.snapshot.restore", {
  progress: true,
  errors: ["SANDBOX_NOT_FOUND", "INVALID_STATE", "SNAPSHOT_NOT_FOUND", "WORKSPACE_ATTACHED", "PROXMOX_ERROR"],
});

/** What any call into a running sandbox's guest over ssh can fail with (exec and the file methods). */
const GUEST_ACCESS_ERRORS = [
  "SANDBOX_NOT_FOUND",
  "INVALID_STATE",
  "GUEST_UNREACHABLE",
  "GUEST_AUTH_FAILED",
  "HOST_KEY_MISMATCH",
] as const;

export const sandboxExec = wire("sandbox.exec", {
  progress: true,
  errors: [...GUEST_ACCESS_ERRORS, "CANCELLED"],
});

export const sandboxFileStat = wire("sandbox.file_stat", {
  progress: false,
  errors: [...GUEST_ACCESS_ERRORS, "FILE_PERMISSION"],
});

export const sandboxFileList = wire("sandbox.file_list", {
  progress: false,
  errors: [...GUEST_ACCESS_ERRORS, "FILE_NOT_FOUND", "FILE_NOT_DIRECTORY", "FILE_PERMISSION"],
});

export const sandboxFileRead = wire("sandbox.file_read", {
  progress: false,
  errors: [
    ...GUEST_ACCESS_ERRORS,
    "FILE_NOT_FOUND",
    "FILE_IS_DIRECTORY",
    "FILE_PERMISSION",
    "FILE_TRANSFER_FAILED",
  ],
});

export const sandboxFileMkdir = wire("sandbox.file_mkdir", {
  progress: false,
  errors: [...GUEST_ACCESS_ERRORS, "FILE_NOT_FOUND", "FILE_NOT_DIRECTORY", "FILE_PERMISSION"],
});

export const sandboxFileWrite = wire("sandbox.file_write", {
  progress: false,
  errors: [
    ...GUEST_ACCESS_ERRORS,
    "NOT_FOUND",
    "CONFLICT",
    "FILE_NOT_FOUND",
    "FILE_IS_DIRECTORY",
    "FILE_PERMISSION",
    "FILE_TRANSFER_FAILED",
    "CANCELLED",
  ],
});

export const sandboxFileCancel = wire("sandbox.file_cancel", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const workspaceCreate = wire("workspace.create", {
  progress: true,
  errors: ["CONFLICT", "STORAGE_UNSUPPORTED", "PROXMOX_ERROR", "PROXMOX_TASK_FAILED"],
});

export const workspaceList = wire("workspace.list", {
  progress: false,
  errors: [],
});

export const workspaceShow = wire("workspace.show", {
  progress: false,
  errors: ["WORKSPACE_NOT_FOUND"],
});

export const workspaceAttach = wire("workspace.attach", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "SANDBOX_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "CONFLICT",
  ],
});

export const workspaceDetach = wire("workspace.detach", {
  progress: true,
  errors: ["WORKSPACE_NOT_FOUND", "WORKSPACE_BUSY", "CONFLICT"],
});

export const workspaceCheck = wire("workspace.check", {
  progress: false,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "PROXMOX_UNREACHABLE",
    "PROXMOX_PERMISSION",
    "PROXMOX_AUTH",
    "PROXMOX_ERROR",
  ],
});

export const workspaceFsck = wire("workspace.fsck", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "HOST_TOOLS_UNAVAILABLE",
  ],
});

export const workspaceSnapshotCreate = wire("workspace.snapshot.create", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "CONFLICT",
    "STORAGE_UNSUPPORTED",
  ],
});

export const workspaceSnapshotList = wire("workspace.snapshot.list", {
  progress: false,
  errors: ["WORKSPACE_NOT_FOUND"],
});

export const workspaceSnapshotRestore = wire("workspace.snapshot.restore", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "SNAPSHOT_NOT_FOUND",
    "SNAPSHOT_NOT_LATEST",
  ],
});

export const workspaceFork = wire("workspace.fork", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "CONFLICT",
    "SNAPSHOT_NOT_FOUND",
    "STORAGE_UNSUPPORTED",
    "HOST_TOOLS_UNAVAILABLE",
  ],
});

export const workspaceLeaseClear = wire("workspace.lease.clear", {
  progress: false,
  errors: ["WORKSPACE_NOT_FOUND"],
});

export const workspaceRebind = wire("workspace.rebind", {
  progress: true,
  errors: [
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_LEASE_HELD",
    "WORKSPACE_BUSY",
    "PROFILE_NOT_FOUND",
    "PROVISIONING_FAILED",
  ],
});

export const workspaceDestroy = wire("workspace.destroy", {
  progress: true,
  errors: ["WORKSPACE_NOT_FOUND", "WORKSPACE_ATTACHED", "WORKSPACE_LEASE_HELD", "WORKSPACE_BUSY", "CONFLICT"],
});

export const sessionCreate = wire("session.create", {
  progress: true,
  errors: [
    "CONFLICT",
    "PROFILE_NOT_FOUND",
    "WORKSPACE_NOT_FOUND",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "PROVISIONING_FAILED",
  ],
});

export const sessionList = wire("session.list", {
  progress: false,
  errors: [],
});

export const sessionShow = wire("session.show", {
  progress: false,
  errors: ["SESSION_NOT_FOUND"],
});

export const sessionStop = wire("session.stop", {
  progress: true,
  errors: ["SESSION_NOT_FOUND", "DESTROY_FAILED"],
});

export const sessionResume = wire("session.resume", {
  progress: true,
  errors: [
    "SESSION_NOT_FOUND",
    "CONFLICT",
    "WORKSPACE_ATTACHED",
    "WORKSPACE_LEASE_HELD",
    "PROVISIONING_FAILED",
  ],
});

export const sessionFork = wire("session.fork", {
  progress: true,
  errors: ["SESSION_NOT_FOUND", "CONFLICT", "WORKSPACE_ATTACHED", "PROVISIONING_FAILED"],
});

export const sessionBranch = wire("session.branch", {
  progress: true,
  errors: ["CONFLICT", "PROFILE_NOT_FOUND", "PROVISIONING_FAILED"],
});

/** What queueing a job can fail with: the errors of job.run and of job.validate, which checks the same request. */
const JOB_REQUEST_ERRORS = [
  "PROFILE_NOT_FOUND",
  "PROVISIONING_FAILED",
  "WORKSPACE_NOT_FOUND",
  "WORKSPACE_ATTACHED",
  "WORKSPACE_LEASE_HELD",
  "WORKSPACE_BUSY",
  "CONFLICT",
  "INVALID_PARAMS",
] as const;

export const jobRun = wire("job.run", {
  progress: true,
  errors: JOB_REQUEST_ERRORS,
});

export const jobValidate = wire("job.validate", {
  progress: false,
  errors: JOB_REQUEST_ERRORS,
});

export const jobShow = wire("job.show", {
  progress: false,
  errors: ["JOB_NOT_FOUND"],
});

export const jobList = wire("job.list", {
  progress: false,
  errors: [],
});

export const jobCancel = wire("job.cancel", {
  progress: false,
  errors: ["JOB_NOT_FOUND", "JOB_NOT_ACTIVE"],
});

export const jobLogs = wire("job.logs", {
  progress: true,
  errors: ["JOB_NOT_FOUND"],
});

export const jobArtifacts = wire("job.artifacts", {
  progress: false,
  errors: ["JOB_NOT_FOUND"],
});

export const jobArtifactRead = wire("job.artifact_read", {
  progress: false,
  errors: ["JOB_NOT_FOUND", "ARTIFACT_NOT_FOUND"],
});

export const sandboxDoctor = wire("sandbox.doctor", {
  progress: false,
  errors: ["SANDBOX_NOT_FOUND"],
});

export const jobDoctor = wire("job.doctor", {
  progress: false,
  errors: ["JOB_NOT_FOUND"],
});

export const sessionDoctor = wire("session.doctor", {
  progress: false,
  errors: ["SESSION_NOT_FOUND"],
});

export const tokenCreate = wire("token.create", {
  progress: false,
  errors: ["CONFLICT", "INVALID_PARAMS"],
});

export const tokenList = wire("token.list", {
  progress: false,
  errors: [],
});

export const tokenRevoke = wire("token.revoke", {
  progress: false,
  errors: ["NOT_FOUND"],
});

export const maintenanceRun = wire("maintenance.run", {
  progress: true,
  errors: ["DAEMON_SHUTTING_DOWN"],
});

export const dbBackup = wire("db.backup", {
  progress: false,
  errors: ["USAGE", "DB_CORRUPT", "DB_UNAVAILABLE"],
});

export const dbCheck = wire("db.check", {
  progress: false,
  errors: [],
});
