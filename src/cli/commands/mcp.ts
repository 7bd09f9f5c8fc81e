import type { CommandModule } from "yargs";
import { execute, type GlobalArgs } from "../context.js";

export const mcpCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "mcp",
  describe: "Serve the Model Context Protocol on stdin/stdout, so an AI client drives sandboxes and jobs",
  builder: (yargs) =>
    yargs.epilog(
      [
        "Register it in an MCP client as the command `agentlab mcp` (docs/mcp.md has the snippets for Claude",
        "Desktop, Claude Code, VS Code and Cursor). It talks to the daemon like any other command: the local",
        "socket, or the endpoint saved by agentlab connect (or --endpoint/--token), whose scopes apply.",
        "stdout carries the protocol only; messages go to stderr.",
        "",
        "Remote AI clients need no shell on the host: the control listener serves the same tools at",
        "https://<host>:8845/mcp with Authorization: Bearer <token>.",
      ].join("\n"),
    ),
  handler: (argv) =>
    execute(argv, async () => {
      // Imported here: the MCP SDK is a tenth of a second that no other command should pay for.
      const { serveStdio } = await import("../mcp/stdio.js");
      await serveStdio(argv);
      return { data: {}, text: "", printed: true };
    }),
};
