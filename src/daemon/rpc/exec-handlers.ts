import { EXEC_STDERR_STEP, EXEC_STDOUT_STEP, sandboxExec } from "../../protocol/exec.js";
import type { DaemonContext } from "../context.js";
import { execInSandbox } from "../services/sandbox/exec.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/** sandbox.exec: the command's output goes out as progress, base64 in `data`, in the order it came. */
export function registerExecHandlers(server: RpcServer, ctx: DaemonContext): void {
  server.register(sandboxExec, (params, call) =>
    execInSandbox(ctx, params, operation(call), (stream, chunk) =>
      call.progress({
        step: stream === "stdout" ? EXEC_STDOUT_STEP : EXEC_STDERR_STEP,
        message: "",
        data: chunk.toString("base64"),
      }),
    ),
  );
}
