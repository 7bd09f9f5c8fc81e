/**
 * How the daemon's answers and failures look to an MCP client: a result is its JSON (as text for every
 * client, and as structured content for those that read it); a failure is a tool error (isError) whose
 * text is the daemon's message and hint, the same two lines the CLI prints, with code and details beside.
 */
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { AgentlabError } from "../protocol/errors.js";

export function toolResult(data: Record<string, unknown>, text?: string): CallToolResult {
  return {
    content: [{ type: "text", text: text ?? JSON.stringify(data, null, 2) }],
    structuredContent: data,
  };
}

/** The failure as the CLI would show it; anything that is not an AgentlabError is INTERNAL. */
export function toolError(error: unknown): CallToolResult {
  const failure =
    error instanceof AgentlabError
      ? error
      : new AgentlabError("INTERNAL", error instanceof Error ? error.message : String(error));
  return {
    isError: true,
    content: [
      { type: "text", text: `error: ${failure.message}\nhint: ${failure.hint}\ncode: ${failure.code}` },
    ],
    structuredContent: {
      code: failure.code,
      message: failure.message,
      hint: failure.hint,
      details: failure.details,
    },
  };
}

/** Run a tool's work; whatever it throws comes back as a tool error, never as a protocol failure. */
export async function guarded(work: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await work();
  } catch (error) {
    return toolError(error);
  }
}
