/**
 * `agentlab sandbox cp [-r] SRC DST`, one side `<vmid>:<path>`: files and directories into and out of a
 * running sandbox. The bytes travel through the daemon (SFTP from its host, chunked RPC calls to here),
 * so the copy works the same on the host and through `agentlab connect`.
 */
import type { Argv, CommandModule } from "yargs";
import { AgentlabError } from "../../protocol/errors.js";
import { execute, type GlobalArgs } from "../context.js";
import { formatBytes } from "../render.js";
import { type CopySummary, PROGRESS_MIN_BYTES, parseCopyEnd, SandboxCopier } from "../sandbox-copy.js";

interface CpArgs extends GlobalArgs {
  source: string;
  destination: string;
  recursive?: boolean;
  user?: string;
}

/** Progress on stderr: one rewritten line on a terminal, a line per tenth otherwise. */
function progressReporter(): (done: number, total: number) => void {
  const terminal = process.stderr.isTTY === true;
  let lastTenth = -1;
  let lastDraw = 0;
  return (done, total) => {
    if (total < PROGRESS_MIN_BYTES) return;
    const percent = Math.floor((done / total) * 100);
    const line = `copied ${formatBytes(done)} / ${formatBytes(total)} (${percent}%)`;
    if (terminal) {
      const now = Date.now();
      if (done < total && now - lastDraw < 200) return;
      lastDraw = now;
      process.stderr.write(`\r${line}${done >= total ? "\n" : ""}`);
    } else {
      const tenth = Math.floor(percent / 10);
      if (tenth === lastTenth) return;
      lastTenth = tenth;
      process.stderr.write(`${line}\n`);
    }
  };
}

function summaryText(summary: CopySummary): string {
  const where =
    summary.direction === "upload" ? `${summary.vmid}:${summary.destination}` : summary.destination;
  const files = `${summary.files.length} file${summary.files.length === 1 ? "" : "s"}`;
  const dirs =
    summary.directories.length > 0
      ? `, ${summary.directories.length} director${summary.directories.length === 1 ? "y" : "ies"}`
      : "";
  const skipped = summary.skipped.map(
    (s) => `skipped ${s.path} (a ${s.type}: only files and directories are copied)\n`,
  );
  return `${skipped.join("")}copied ${files}${dirs}, ${formatBytes(summary.bytes)} to ${where}\n`;
}

export const cpCommand: CommandModule<GlobalArgs, CpArgs> = {
  command: "cp <source> <destination>",
  describe: "Copy files into or out of a running sandbox (one side is <vmid>:<path>)",
  builder: (yargs) =>
    (
      yargs
        .positional("source", {
          type: "string",
          demandOption: true,
          describe: "a local path, or <vmid>:<path> (absolute, or relative to the user's home)",
        })
        .positional("destination", {
          type: "string",
          demandOption: true,
          describe: "a local path, or <vmid>:<path>; an existing directory receives SOURCE by its name",
        }) as Argv<GlobalArgs & { source: string; destination: string }>
    )
      .option("recursive", { alias: "r", type: "boolean", describe: "copy directories and what they hold" })
      .option("user", { type: "string", describe: "guest user the copy runs as (default: agent)" })
      .example("agentlab sandbox cp ./task.md 1012:/work/task.md", "upload a file")
      .example("agentlab sandbox cp 1012:/work/out/report.json .", "download into the current directory")
      .example("agentlab sandbox cp -r ./src 1012:/work/", "upload a directory into /work (as /work/src)")
      .example(
        "agentlab --json sandbox cp 1012:out.tar ./",
        "summary with the SHA-256 of every file",
      ) as Argv<CpArgs>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const source = parseCopyEnd(argv.source);
      const destination = parseCopyEnd(argv.destination);
      if ((source.kind === "guest") === (destination.kind === "guest")) {
        throw new AgentlabError(
          "USAGE",
          source.kind === "guest"
            ? "both sides are in a sandbox: copy through a local directory (download, then upload)"
            : "neither side is in a sandbox: write one as <vmid>:<path>",
          {
            hint: "agentlab sandbox cp ./task.md 1012:/work/task.md, or agentlab sandbox cp 1012:/work/out .",
          },
        );
      }
      // Ctrl-C: the call in flight is cancelled (the daemon drops its upload); between calls, this stops
      // the copy before the next. A second Ctrl-C leaves at once (partial files are still removed).
      const abort = new AbortController();
      let interrupts = 0;
      const onSigint = () => {
        interrupts++;
        if (interrupts > 1) process.exit(130);
        abort.abort();
      };
      process.on("SIGINT", onSigint);
      const copier = new SandboxCopier(ctx, {
        recursive: argv.recursive === true,
        ...(argv.user !== undefined ? { user: argv.user } : {}),
        ...(argv.json ? {} : { onProgress: progressReporter() }),
        signal: abort.signal,
        cancelMessage: "interrupting the copy… (press Ctrl-C again to stop waiting)\n",
      });
      try {
        const summary =
          source.kind === "local" && destination.kind === "guest"
            ? await copier.upload(source.path, destination.vmid, destination.path)
            : source.kind === "guest" && destination.kind === "local"
              ? await copier.download(source.vmid, source.path, destination.path)
              : (undefined as never);
        return { data: summary, text: summaryText(summary) };
      } catch (error) {
        if (error instanceof AgentlabError && error.code === "CANCELLED" && !argv.json) {
          process.stderr.write(`${error.message}\n`);
          return { data: null, text: "", printed: true, exitCode: 130 };
        }
        throw error;
      } finally {
        process.off("SIGINT", onSigint);
      }
    }),
};
