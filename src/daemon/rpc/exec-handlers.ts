import { EXEC_STDERR_STEP, EXEC_STDOUT_STEP, sandboxExec } from "../../protocol/exec.js";
import type { DaemonContext } from "../context.js";
import type { SandboxActivity } from "../services/sandbox/activity.js";
import { execInSandbox } from "../services/sandbox/exec.js";
import { operation } from "./operation.js";
import type { RpcServer } from "./server.js";

/**
 * sandbox.exec: the command's output goes out as progress, base64 in `data`, in the order it came. While
 * it runs the sandbox is in use (idle stop leaves it alone), and its start and end are recorded as use.
 */
export function registerExecHandlers(server: RpcServer, ctx: DaemonContext, activity: SandboxActivity): void {
  server.register(sandboxExec, (params, call) =>
    activity.during(params.vmid, () =>
      execInSandbox(ctx, params, operation(call), (stream, chunk) =>
        call.progress({
          step: stream === "stdout" ? EXEC_STDOUT_STEP : EXEC_STDERR_STEP,
          message: "",
          data: chunk.toString("base64"),
        }),
      ),
    ),
  );
}
