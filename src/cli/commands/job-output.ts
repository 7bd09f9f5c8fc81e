/**
 * What a job leaves behind and prints: `job logs` (the agent's output, --follow live through
 * notifications) and `job artifacts` (list, download in bounded chunks with the SHA-256 checked).
 * Both go through the RPC connection only, so they work the same against a remote endpoint.
 */
import { createHash } from "node:crypto";
import { promises as fsp } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import type { Argv, CommandModule } from "yargs";
import { ARTIFACT_READ_MAX } from "../../protocol/chunk-sizes.js";
import { AgentlabError } from "../../protocol/errors.js";
import type { JobArtifact } from "../../protocol/job.js";
import { jobArtifactRead, jobArtifacts, jobLogs } from "../../protocol/wire.js";
import { type CommandContext, execute, type GlobalArgs } from "../context.js";
import { table } from "../render.js";

type Args<T> = GlobalArgs & T;

/** job logs --follow stays quiet as long as the agent does: only --timeout limits it. */
const FOLLOW_SILENCE_MS = 7 * 24 * 3600_000;

/**
 * Print a job's output live until it ends (job logs --follow, job run --wait): each chunk is written as
 * it arrives. Resolves with the job's final status and the offset the log ended at.
 */
export async function streamJobLog(
  ctx: CommandContext,
  id: string,
  write: (text: string) => void,
  signal?: AbortSignal,
): Promise<{ status: string; next_offset: number }> {
  const result = await ctx.call(
    jobLogs,
    { id, follow: true },
    {
      onProgress: (value) => {
        if (value.step === "log") write(value.message);
      },
      timeoutMs: FOLLOW_SILENCE_MS,
      ...(signal ? { signal } : {}),
    },
  );
  return { status: result.status, next_offset: result.next_offset };
}

interface LogsArgs {
  id: string;
  follow: boolean;
}

export const logsCommand: CommandModule<GlobalArgs, Args<LogsArgs>> = {
  command: "logs <id>",
  describe: "Print the agent's output of a job (--follow: live, until the job ends)",
  builder: (yargs) =>
    (
      yargs.positional("id", { type: "string", demandOption: true, describe: "job id (job_...)" }) as Argv<
        Args<{ id: string }>
      >
    ).option("follow", {
      alias: "f",
      type: "boolean",
      default: false,
      describe: "keep printing the output as the runner sends it, until the job ends",
    }) as Argv<Args<LogsArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      if (argv.follow) {
        const write = argv.json
          ? (text: string) => ctx.out.stdout(`${JSON.stringify({ text })}\n`)
          : (text: string) => ctx.out.stdout(text);
        const end = await streamJobLog(ctx, argv.id, write);
        if (!argv.json) ctx.out.stderr(`job ${argv.id} ended ${end.status}\n`);
        return { data: end, text: "", printed: true };
      }
      let offset = 0;
      let text = "";
      for (;;) {
        const page = await ctx.call(jobLogs, { id: argv.id, offset });
        text += page.text;
        if (page.next_offset <= offset || page.next_offset >= page.end) {
          return {
            data: { job_id: page.job_id, status: page.status, text, end: page.end },
            text:
              text === ""
                ? `job ${argv.id} (${page.status}) has no output yet; the runner sends it while the agent runs\n`
                : text,
          };
        }
        offset = page.next_offset;
      }
    }),
};

function artifactTable(id: string, artifacts: JobArtifact[]): string {
  if (artifacts.length === 0) {
    return `job ${id} has no artifacts (the runner uploads them when the agent ends)\n`;
  }
  return table(
    ["NAME", "SIZE", "SHA256"],
    artifacts.map((a) => [a.name, String(a.size_bytes), a.sha256]),
  );
}

/** A name from the daemon, as a path under `dir`: never absolute, never out of it. */
function localPath(dir: string, name: string): string {
  const parts = name.split("/");
  if (name.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new AgentlabError(
      "PROTOCOL_MISMATCH",
      `the daemon sent an artifact name that is not a plain relative path: ${name}`,
    );
  }
  return join(dir, ...parts);
}

/** Fetch one artifact in chunks to `dest` (through `dest.part`), checking its size and SHA-256. */
async function download(ctx: CommandContext, id: string, artifact: JobArtifact, dest: string): Promise<void> {
  await fsp.mkdir(dirname(dest), { recursive: true });
  const part = `${dest}.part`;
  const file = await fsp.open(part, "w", 0o644);
  const hash = createHash("sha256");
  let offset = 0;
  let ok = false;
  try {
    for (;;) {
      const chunk = await ctx.call(jobArtifactRead, {
        id,
        name: artifact.name,
        offset,
        length: ARTIFACT_READ_MAX,
      });
      const data = Buffer.from(chunk.data_base64, "base64");
      hash.update(data);
      await file.write(data);
      offset += data.length;
      if (chunk.eof || data.length === 0) break;
    }
    await file.close();
    const sha256 = hash.digest("hex");
    if (offset !== artifact.size_bytes || sha256 !== artifact.sha256) {
      throw new AgentlabError(
        "INTERNAL",
        `artifact ${artifact.name} arrived damaged: ${offset} bytes with SHA-256 ${sha256}, expected ${artifact.size_bytes} bytes with ${artifact.sha256}`,
        { hint: "download it again; if it stays damaged the file in artifact_dir changed after its upload" },
      );
    }
    await fsp.rename(part, dest);
    ok = true;
  } finally {
    if (!ok) {
      await file.close().catch(() => {});
      await fsp.rm(part, { force: true });
    }
  }
}

interface DownloadArgs {
  id: string;
  name?: string;
  all?: boolean;
  out?: string;
}

const downloadCommand: CommandModule<GlobalArgs, Args<DownloadArgs>> = {
  command: "download <id>",
  describe: "Download a job's artifacts (all of them, or one with --name); each SHA-256 is checked",
  builder: (yargs) =>
    (
      yargs.positional("id", { type: "string", demandOption: true, describe: "job id (job_...)" }) as Argv<
        Args<{ id: string }>
      >
    )
      .option("name", { type: "string", describe: "only this artifact (its name as job artifacts lists it)" })
      .option("all", { type: "boolean", describe: "every artifact (the default)" })
      .conflicts("name", "all")
      .option("out", {
        type: "string",
        describe:
          "with --name: the file to write (default: the artifact's base name here); else the directory (default ./<job id>-artifacts)",
      })
      .example(
        "agentlab job artifacts download job_0123456789abcdef",
        "everything, into ./job_0123456789abcdef-artifacts/",
      )
      .example(
        "agentlab job artifacts download job_0123456789abcdef --name agentlab/repo.diff --out fix.diff",
        "the agent's changes as a patch",
      ) as Argv<Args<DownloadArgs>>,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const { artifacts } = await ctx.call(jobArtifacts, { id: argv.id });
      let picked: Array<{ artifact: JobArtifact; dest: string }>;
      if (argv.name !== undefined) {
        const artifact = artifacts.find((a) => a.name === argv.name);
        if (!artifact) {
          throw new AgentlabError("ARTIFACT_NOT_FOUND", `job ${argv.id} has no artifact named ${argv.name}`, {
            details: { job_id: argv.id, name: argv.name, names: artifacts.map((a) => a.name) },
          });
        }
        picked = [{ artifact, dest: resolve(argv.out ?? basename(artifact.name)) }];
      } else {
        const dir = resolve(argv.out ?? `${argv.id}-artifacts`);
        picked = artifacts.map((artifact) => ({ artifact, dest: localPath(dir, artifact.name) }));
      }
      for (const { artifact, dest } of picked) await download(ctx, argv.id, artifact, dest);
      const files = picked.map(({ artifact, dest }) => ({ ...artifact, path: dest }));
      const bytes = files.reduce((sum, f) => sum + f.size_bytes, 0);
      return {
        data: { job_id: argv.id, files },
        text:
          files.length === 0
            ? `job ${argv.id} has no artifacts to download\n`
            : `${files.map((f) => `${f.path}  ${f.size_bytes} bytes  sha256 ${f.sha256} ok\n`).join("")}downloaded ${files.length} artifact${files.length === 1 ? "" : "s"} (${bytes} bytes)\n`,
      };
    }),
};

const listArtifactsCommand: CommandModule<GlobalArgs, Args<{ id: string }>> = {
  command: "$0 <id>",
  describe: "List a job's artifacts: name, size and SHA-256",
  builder: (yargs) =>
    yargs.positional("id", { type: "string", demandOption: true, describe: "job id (job_...)" }) as Argv<
      Args<{ id: string }>
    >,
  handler: (argv) =>
    execute(argv, async (ctx) => {
      const result = await ctx.call(jobArtifacts, { id: argv.id });
      return { data: result, text: artifactTable(argv.id, result.artifacts) };
    }),
};

export const artifactsCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: "artifacts",
  describe: "List a job's artifacts (job artifacts <id>) or download them (job artifacts download <id>)",
  builder: (yargs) => yargs.command(downloadCommand).command(listArtifactsCommand),
  handler: () => {},
};
