import {
  sandboxFileCancel,
  sandboxFileList,
  sandboxFileMkdir,
  sandboxFileRead,
  sandboxFileStat,
  sandboxFileWrite,
} from "../../protocol/files.js";
import type { DaemonContext } from "../context.js";
import { FileService } from "../services/sandbox/files.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/** sandbox.file_*: the requests `sandbox cp` makes, one chunk or one directory page each. */
export function registerFileHandlers(server: RpcServer, ctx: DaemonContext): void {
  const files = new FileService(ctx);
  server.register(sandboxFileStat, (params, call) => files.stat(params, operation(call)));
  server.register(sandboxFileList, (params, call) => files.list(params, operation(call)));
  server.register(sandboxFileRead, (params, call) => files.read(params, operation(call)));
  server.register(sandboxFileMkdir, (params, call) => files.mkdir(params, operation(call)));
  server.register(sandboxFileWrite, (params, call) => files.write(params, operation(call)));
  server.register(sandboxFileCancel, (params, call) =>
    files.cancel(params.vmid, params.transfer, operation(call)),
  );
}
