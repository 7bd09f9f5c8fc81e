import {
  daemonChecks,
  daemonStatus,
  dbBackup,
  dbCheck,
  maintenanceRun,
  profileList,
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
} from "../../protocol/index.js";
import { sandboxInventory, sandboxReconcile } from "../../protocol/maintenance.js";
import type { DaemonContext } from "../context.js";
import { TokenService } from "../remote/tokens.js";
import { daemonChecks as checksOf } from "../services/checks.js";
import { DatabaseService } from "../services/database.js";
import { DoctorService } from "../services/doctor.js";
import { HousekeepingService } from "../services/housekeeping.js";
import { JobService } from "../services/jobs/service.js";
import { type MaintenanceOptions, MaintenanceService } from "../services/maintenance.js";
import { WarmPool } from "../services/pool/filler.js";
import { listProfiles } from "../services/profiles.js";
import { VmidAllocator } from "../services/sandbox/vmid-allocator.js";
import { SandboxService } from "../services/sandboxes.js";
import { SessionService } from "../services/sessions/service.js";
import { daemonStatus as statusOf } from "../services/status.js";
import { WorkspaceService } from "../services/workspaces/service.js";
import { createApiTokenRepo } from "../store/api-tokens.js";
import { registerDoctorHandlers } from "./doctor-handlers.js";
import { registerExecHandlers } from "./exec-handlers.js";
import { registerFileHandlers } from "./file-handlers.js";
import { registerJobHandlers } from "./job-handlers.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";
import { registerSessionHandlers } from "./session-handlers.js";
import { registerTokenHandlers } from "./token-handlers.js";
import { registerWorkspaceHandlers } from "./workspace-handlers.js";

/** Wire every protocol method to the service that answers it. */
export function registerHandlers(
  server: RpcServer,
  ctx: DaemonContext,
  options: { maintenance?: MaintenanceOptions } = {},
): {
  sandboxes: SandboxService;
  maintenance: MaintenanceService;
  housekeeping: HousekeepingService;
  workspaces: WorkspaceService;
  jobs: JobService;
  tokens: TokenService;
  pool: WarmPool;
} {
  // One VMID allocator per daemon: every service that creates VMs reserves through it, under one lock.
  const vmids = new VmidAllocator(ctx);
  const sandboxes = new SandboxService(ctx, vmids);
  // Shares the SandboxService, so background passes and RPC calls take the same per-VM locks.
  const maintenance = new MaintenanceService(ctx, sandboxes, {
    ...options.maintenance,
    detachWorkspace: (row, vm) => sandboxes.releaseWorkspaceBeforeReap(row, vm),
  });
  server.register(sandboxInventory, () => maintenance.inventory());
  server.register(sandboxReconcile, (params, call) =>
    maintenance.reconcile(params.apply === true, operation(call)),
  );
  // The warm pool fills after each maintenance pass (the first one settles what a crash left) and claims.
  const pool = new WarmPool(ctx, sandboxes);
  maintenance.afterEachPass(() => pool.start());
  sandboxes.onPoolChange(() => pool.kick());
  server.register(daemonStatus, () => statusOf(ctx, pool));
  server.register(daemonChecks, () => checksOf(ctx));
  server.register(profileList, () => listProfiles(ctx));
  server.register(sandboxCreate, (params, call) => sandboxes.create(params, operation(call)));
  server.register(sandboxList, (params) => sandboxes.list(params));
  server.register(sandboxShow, (params) => sandboxes.show(params.vmid, params.events));
  server.register(sandboxDestroy, (params, call) =>
    sandboxes.destroy(params.vmid, params.force === true, operation(call)),
  );
  server.register(sandboxPrune, (_params, call) => sandboxes.prune(operation(call)));
  const housekeeping = new HousekeepingService(ctx, sandboxes);
  const database = new DatabaseService(ctx);
  server.register(dbBackup, (params) => database.backup(params.out, params.keep));
  server.register(dbCheck, () => database.check());
  server.register(maintenanceRun, (params, call) =>
    housekeeping.run(params.dry_run === true, operation(call)),
  );
  server.register(sandboxStart, (params, call) => sandboxes.start(params.vmid, operation(call)));
  registerExecHandlers(server, ctx, sandboxes.activity);
  registerFileHandlers(server, ctx, sandboxes.activity);
  server.register(sandboxStop, (params, call) => sandboxes.stop(params.vmid, operation(call)));
  server.register(sandboxLeaseRenew, (params) => sandboxes.leaseRenew(params.vmid, params.ttl_minutes));
  server.register(sandboxTouch, (params) => sandboxes.touch(params.vmid));
  server.register(sandboxLogs, (params) => sandboxes.logs(params.vmid, params));
  server.register(sandboxValidate, (params) => sandboxes.validate(params));
  server.register(sandboxStopAll, (_params, call) => sandboxes.stopAll(operation(call)));
  server.register(sandboxPause, (params, call) => sandboxes.pause(params.vmid, operation(call)));
  server.register(sandboxResume, (params, call) => sandboxes.resume(params.vmid, operation(call)));
  server.register(sandboxUpdate, (params) => sandboxes.update(params));
  server.register(sandboxRevert, (params, call) => sandboxes.revert(params.vmid, params, operation(call)));
  server.register(sandboxSnapshotSave, (params, call) =>
    sandboxes.snapshotSave(params.vmid, params.name, params.force === true, operation(call)),
  );
  server.register(sandboxSnapshotList, (params) => sandboxes.snapshotList(params.vmid));
  server.register(sandboxSnapshotRestore, (params, call) =>
    sandboxes.snapshotRestore(params.vmid, params.name, params.force === true, operation(call)),
  );
  const workspaces = new WorkspaceService(ctx, sandboxes, vmids);
  sandboxes.useWorkspaces(workspaces);
  registerWorkspaceHandlers(server, workspaces);
  const sessions = new SessionService(ctx, sandboxes, workspaces);
  registerSessionHandlers(server, sessions);
  registerDoctorHandlers(server, new DoctorService(ctx, sessions));
  const jobs = new JobService(ctx, sandboxes, sessions);
  registerJobHandlers(server, jobs);
  const tokens = new TokenService(() => createApiTokenRepo(ctx.store), ctx.clock);
  registerTokenHandlers(server, tokens);
  return { sandboxes, maintenance, housekeeping, workspaces, jobs, tokens, pool };
}
