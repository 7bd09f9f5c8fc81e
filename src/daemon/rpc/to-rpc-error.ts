import { ResponseError } from "vscode-jsonrpc/node.js";
import { AgentlabError, type ErrorData } from "../../protocol/errors.js";

/**
 * The one place an error becomes a JSON-RPC error. AgentlabErrors keep their code, message, hint and
 * details; anything else is a bug or an unexpected failure, reported as INTERNAL with the method and
 * request id so the operator can find the stack trace in the log.
 */
export function toRpcError(error: unknown, method: string, requestId: string): ResponseError<ErrorData> {
  const known =
    error instanceof AgentlabError
      ? error
      : new AgentlabError(
          "INTERNAL",
          `internal error in ${method}: ${(error as Error)?.message ?? String(error)}`,
          {
            details: { method, request_id: requestId },
          },
        );
  return new ResponseError(known.rpcCode, known.message, known.toData());
}
