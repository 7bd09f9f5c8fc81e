import {
  daemonStatus,
  profileList,
  sandboxCreate,
  sandboxDestroy,
  sandboxLeaseRenew,
  sandboxList,
  sandboxLogs,
  sandboxPrune,
  sandboxShow,
  sandboxStart,
  sandboxStop,
} from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";
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
export function registerHandlers(server: RpcServer, ctx: DaemonContext): { sandboxes: SandboxService } {
  const sandboxes = new SandboxService(ctx);
  server.register(daemonStatus, () => statusOf(ctx));
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
  return { sandboxes };
}
