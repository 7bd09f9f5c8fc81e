import {
  daemonChecks,
  daemonStatus,
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
  sandboxUpdate,
  sandboxValidate,
} from "../../protocol/index.js";
import { sandboxInventory, sandboxReconcile } from "../../protocol/maintenance.js";
import type { DaemonContext } from "../context.js";
import { daemonChecks as checksOf } from "../services/checks.js";
import { type MaintenanceOptions, MaintenanceService } from "../services/maintenance.js";
import type { Operation } from "../services/operation.js";
import { listProfiles } from "../services/profiles.js";
import { SandboxService } from "../services/sandboxes.js";
import { daemonStatus as statusOf } from "../services/status.js";
import type { CallContext, RpcServer } from "./server.js";

/** A service operation driven by an RPC call: its cancellation, its progress, its request log. */
function operation(call: CallContext): Operation {
  return { signal: call.signal, log: call.log, step: (step, message) => call.progress({ step, message }) };
}

/** Wire every protocol method to the service that answers it. */
export function registerHandlers(
  server: RpcServer,
  ctx: DaemonContext,
  options: { maintenance?: MaintenanceOptions } = {},
): { sandboxes: SandboxService; maintenance: MaintenanceService } {
  const sandboxes = new SandboxService(ctx);
  // Shares the SandboxService, so background passes and RPC calls take the same per-VM locks.
  const maintenance = new MaintenanceService(ctx, sandboxes, options.maintenance);
  server.register(sandboxInventory, () => maintenance.inventory());
  server.register(sandboxReconcile, (params, call) =>
    maintenance.reconcile(params.apply === true, operation(call)),
  );
  server.register(daemonStatus, () => statusOf(ctx));
  server.register(daemonChecks, () => checksOf(ctx));
  server.register(profileList, () => listProfiles(ctx));
  server.register(sandboxCreate, (params, call) => sandboxes.create(params, operation(call)));
  server.register(sandboxList, (params) => sandboxes.list(params));
  server.register(sandboxShow, (params) => sandboxes.show(params.vmid, params.events));
  server.register(sandboxDestroy, (params, call) =>
    sandboxes.destroy(params.vmid, params.force === true, operation(call)),
  );
  server.register(sandboxPrune, (_params, call) => sandboxes.prune(operation(call)));
  server.register(sandboxStart, (params, call) => sandboxes.start(params.vmid, operation(call)));
  server.register(sandboxStop, (params, call) => sandboxes.stop(params.vmid, operation(call)));
  server.register(sandboxLeaseRenew, (params) => sandboxes.leaseRenew(params.vmid, params.ttl_minutes));
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
  return { sandboxes, maintenance };
}
