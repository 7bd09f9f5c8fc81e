import type { CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import { daemonStatus } from "../../protocol/wire.js";
import { VERSION } from "../../version.js";
import { execute, type GlobalArgs } from "../context.js";

export const versionCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "version",
  describe: "Print the CLI's version and, when it answers, the daemon's",
  handler: (argv) =>
    execute(argv, async (ctx) => {
      let daemon: { version: string } | { error: string; code: string };
      try {
        const status = await ctx.call(daemonStatus, {});
        daemon = { version: status.version };
      } catch (error) {
        if (!(error instanceof AgentlabError)) throw error;
        daemon = { error: error.message, code: error.code };
      }
      const daemonLine =
        "version" in daemon ? `agentlabd ${daemon.version}` : `agentlabd: not reachable (${daemon.error})`;
      return {
        data: { cli: { version: VERSION, node_version: process.versions.node }, daemon },
        text: `agentlab ${VERSION} (node ${process.versions.node})\n${daemonLine}\n`,
      };
    }),
};
