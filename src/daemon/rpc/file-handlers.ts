import {
  sandboxFileCancel,
  sandboxFileList,
  sandboxFileMkdir,
  sandboxFileRead,
  sandboxFileStat,
  sandboxFileWrite,
} from "../../protocol/files.js";
import type { DaemonContext } from "../context.js";
import type { SandboxActivity } from "../services/sandbox/activity.js";
import { FileService } from "../services/sandbox/files.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/**
 * sandbox.file_*: the requests `sandbox cp` makes, one chunk or one directory page each. Each one is
 * use of the sandbox (idle stop leaves it alone while a copy runs), as an exec is.
 */
export function registerFileHandlers(server: RpcServer, ctx: DaemonContext, activity: SandboxActivity): void {
  const files = new FileService(ctx);
  server.register(sandboxFileStat, (params, call) =>
    activity.during(params.vmid, () => files.stat(params, operation(call))),
  );
  server.register(sandboxFileList, (params, call) =>
    activity.during(params.vmid, () => files.list(params, operation(call))),
  );
  server.register(sandboxFileRead, (params, call) =>
    activity.during(params.vmid, () => files.read(params, operation(call))),
  );
  server.register(sandboxFileMkdir, (params, call) =>
    activity.during(params.vmid, () => files.mkdir(params, operation(call))),
  );
  server.register(sandboxFileWrite, (params, call) =>
    activity.during(params.vmid, () => files.write(params, operation(call))),
  );
  server.register(sandboxFileCancel, (params, call) =>
    files.cancel(params.vmid, params.transfer, operation(call)),
  );
}
