/**
 * MCP progress for one tool call: when the client put a progressToken in the request's _meta, each
 * daemon progress step becomes a notifications/progress with a growing counter and the step's line.
 */
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { ServerNotification, ServerRequest } from "@modelcontextprotocol/sdk/types.js";

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/** A function that reports one line, or undefined when the client asked for no progress. */
export function progressReporter(extra: ToolExtra): ((message: string) => void) | undefined {
  const token = extra._meta?.progressToken;
  if (token === undefined) return undefined;
  let count = 0;
  return (message) => {
    count++;
    // A client that went away must not fail the call that is still running in the daemon.
    void extra
      .sendNotification({
        method: "notifications/progress",
        params: { progressToken: token, progress: count, message },
      })
      .catch(() => {});
  };
}
