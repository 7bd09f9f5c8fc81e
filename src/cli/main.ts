import { COMPLETION_FLAG } from "./commands/completion.js";
import { directCommand } from "./direct.js";

/**
 * A reader that stops reading (`agentlab sandbox list | head -1`) is not a failure of the command: its
 * work is done, so exit 0 without a word instead of an unhandled EPIPE stack trace.
 */
function quietOnClosedPipe(stream: NodeJS.WriteStream): void {
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0);
    throw error;
  });
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  quietOnClosedPipe(process.stdout);
  quietOnClosedPipe(process.stderr);
  // A command that takes only the global flags runs without yargs (most of a start-up) when that is
  // all the command line holds; anything else, help included, is yargs' to parse and to report.
  const direct = await directCommand(argv);
  if (direct) return direct();
  const names = argv.includes(COMPLETION_FLAG)
    ? await (await import("./completion-names.js")).completionNames(argv, COMPLETION_FLAG)
    : [];
  const { buildCli } = await import("./parser.js");
  await (await buildCli(argv, names)).parseAsync();
}
