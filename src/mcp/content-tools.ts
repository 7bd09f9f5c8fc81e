/**
 * The tools that move bytes: exec (its output streamed as progress, its exit code in the result), guest
 * file read and write (chunked through sandbox.file_read/file_write, which bound each request), and
 * reading a job's artifact. Their inputs are built from the protocol's field schemas, so limits match.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import { AgentlabError } from "../protocol/errors.js";
import {
  ARTIFACT_READ_MAX,
  EXEC_STDERR_STEP,
  EXEC_STDOUT_STEP,
  FILE_CHUNK_BYTES,
  jobArtifactRead,
  sandboxExec,
  sandboxFileCancel,
  sandboxFileRead,
  sandboxFileWrite,
} from "../protocol/index.js";
import type { DaemonCall } from "./caller.js";
import { progressReporter } from "./progress.js";
import { guarded, toolResult } from "./results.js";

/** Output kept per stream for the answer; more is dropped from the middle and said so. */
export const EXEC_OUTPUT_KEEP = 256 * 1024;
/** Largest file file_read returns and file_write accepts in one call: an AI client's context is finite. */
export const FILE_TOOL_MAX = 8 * 1024 * 1024;

const ENCODING = z
  .enum(["utf8", "base64"])
  .optional()
  .describe("utf8 (default) for text; base64 for binary content");

/** Keeps the first and last halves of a stream, counting what fell between. */
class Capture {
  private head = "";
  private tail = "";
  dropped = 0;
  add(text: string): void {
    const half = EXEC_OUTPUT_KEEP / 2;
    if (this.head.length < half) {
      const room = half - this.head.length;
      this.head += text.slice(0, room);
      text = text.slice(room);
    }
    this.tail += text;
    if (this.tail.length > half) {
      this.dropped += this.tail.length - half;
      this.tail = this.tail.slice(-half);
    }
  }
  text(): string {
    return this.dropped > 0
      ? `${this.head}\n[… ${this.dropped} characters not shown …]\n${this.tail}`
      : this.head + this.tail;
  }
}

function decodeUtf8(bytes: Buffer): string | undefined {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

const fileFields = sandboxFileRead.params.pick({ vmid: true, user: true, path: true });

export function registerContentTools(server: McpServer, call: DaemonCall): void {
  server.registerTool(
    "sandbox_exec",
    {
      title: "Run a command in a sandbox",
      description:
        'Run a command in a RUNNING sandbox (as user, default the guest\'s login user, in cwd, default its home) and wait for it to end. command is an argv array, e.g. ["bash", "-lc", "make test"]. stdout and stderr stream as progress notifications while it runs; the result gives exit_code (128+N for signal N), stdout, stderr and timed_out. A non-zero exit code is a normal result, not a tool error.',
      inputSchema: sandboxExec.params.omit({ progress_token: true }),
      annotations: { title: "Run a command in a sandbox", readOnlyHint: false, openWorldHint: true },
    },
    (args, extra) =>
      guarded(async () => {
        const report = progressReporter(extra);
        const out = { [EXEC_STDOUT_STEP]: new Capture(), [EXEC_STDERR_STEP]: new Capture() };
        const decoders = {
          [EXEC_STDOUT_STEP]: new TextDecoder(),
          [EXEC_STDERR_STEP]: new TextDecoder(),
        };
        const result = await call(sandboxExec, args, {
          signal: extra.signal,
          onProgress: (value) => {
            const step = value.step as keyof typeof out;
            if (!(step in out) || value.data === undefined) {
              report?.(value.message);
              return;
            }
            const text = decoders[step].decode(Buffer.from(value.data, "base64"), { stream: true });
            out[step].add(text);
            if (text !== "") report?.(step === EXEC_STDERR_STEP ? `[stderr] ${text}` : text);
          },
        });
        for (const step of [EXEC_STDOUT_STEP, EXEC_STDERR_STEP] as const)
          out[step].add(decoders[step].decode());
        const stdout = out[EXEC_STDOUT_STEP].text();
        const stderr = out[EXEC_STDERR_STEP].text();
        const summary = `exit_code: ${result.exit_code}${result.signal ? ` (signal ${result.signal})` : ""}${result.timed_out ? " (timed out)" : ""}`;
        return toolResult(
          { ...result, stdout, stderr },
          [
            summary,
            stdout !== "" ? `--- stdout ---\n${stdout}` : "",
            stderr !== "" ? `--- stderr ---\n${stderr}` : "",
          ]
            .filter((part) => part !== "")
            .join("\n"),
        );
      }),
  );

  server.registerTool(
    "file_read",
    {
      title: "Read a file in a sandbox",
      description: `Read a file from a RUNNING sandbox's guest (path absolute or relative to the user's home), as UTF-8 text or base64. At most max_bytes (default and limit ${FILE_TOOL_MAX / 1024 / 1024} MiB); the result says size and whether it was truncated.`,
      inputSchema: fileFields.extend({
        encoding: ENCODING,
        max_bytes: z.number().int().positive().max(FILE_TOOL_MAX).optional(),
      }),
      annotations: { title: "Read a file in a sandbox", readOnlyHint: true, openWorldHint: false },
    },
    (args, extra) =>
      guarded(async () => {
        const max = args.max_bytes ?? FILE_TOOL_MAX;
        const chunks: Buffer[] = [];
        let offset = 0;
        let size = 0;
        let mode = 0;
        let eof = false;
        while (!eof && offset < max) {
          const part = await call(
            sandboxFileRead,
            {
              vmid: args.vmid,
              path: args.path,
              ...(args.user !== undefined ? { user: args.user } : {}),
              offset,
              length: Math.min(FILE_CHUNK_BYTES, max - offset),
            },
            { signal: extra.signal },
          );
          const bytes = Buffer.from(part.data, "base64");
          chunks.push(bytes);
          offset += bytes.length;
          ({ size, mode, eof } = part);
          if (bytes.length === 0) break;
        }
        const bytes = Buffer.concat(chunks);
        const base = { path: args.path, size, mode, bytes: bytes.length, truncated: !eof };
        if ((args.encoding ?? "utf8") === "base64") {
          return toolResult({ ...base, encoding: "base64", content: bytes.toString("base64") });
        }
        const text = decodeUtf8(bytes);
        if (text === undefined) {
          throw new AgentlabError("USAGE", `${args.path} is not UTF-8 text`, {
            hint: 'read it with encoding: "base64"',
            details: { vmid: args.vmid, path: args.path },
          });
        }
        return toolResult({ ...base, encoding: "utf8", content: text }, text);
      }),
  );

  server.registerTool(
    "file_write",
    {
      title: "Write a file in a sandbox",
      description: `Create or replace a file in a RUNNING sandbox's guest with content (UTF-8 text, or base64 with encoding: "base64"; at most ${FILE_TOOL_MAX / 1024 / 1024} MiB). The file appears whole or not at all: it is written beside the target and renamed over it. The parent directory must exist. Returns the absolute path, bytes written and SHA-256.`,
      inputSchema: sandboxFileWrite.params.pick({ vmid: true, user: true, path: true, mode: true }).extend({
        content: z.string().max(Math.ceil(FILE_TOOL_MAX / 3) * 4),
        encoding: ENCODING,
      }),
      annotations: { title: "Write a file in a sandbox", readOnlyHint: false, destructiveHint: true },
    },
    (args, extra) =>
      guarded(async () => {
        const bytes =
          args.encoding === "base64"
            ? Buffer.from(args.content, "base64")
            : Buffer.from(args.content, "utf8");
        if (bytes.length > FILE_TOOL_MAX) {
          throw new AgentlabError("USAGE", `content is ${bytes.length} bytes; the limit is ${FILE_TOOL_MAX}`);
        }
        const who = args.user !== undefined ? { user: args.user } : {};
        let transfer: string | undefined;
        let offset = 0;
        try {
          for (;;) {
            const chunk = bytes.subarray(offset, offset + FILE_CHUNK_BYTES);
            const last = offset + chunk.length >= bytes.length;
            const answer = await call(
              sandboxFileWrite,
              {
                vmid: args.vmid,
                path: args.path,
                ...who,
                ...(transfer !== undefined ? { transfer } : {}),
                offset,
                data: chunk.toString("base64"),
                last,
                ...(last && args.mode !== undefined ? { mode: args.mode } : {}),
              },
              { signal: extra.signal },
            );
            transfer = answer.transfer;
            offset += chunk.length;
            if (answer.done) {
              return toolResult({
                path: answer.path,
                bytes: answer.written,
                ...(answer.sha256 !== undefined ? { sha256: answer.sha256 } : {}),
              });
            }
          }
        } catch (error) {
          // The daemon removes the temporary on a failed chunk; an abandoned one needs telling.
          if (transfer !== undefined) {
            await call(sandboxFileCancel, { vmid: args.vmid, transfer }).catch(() => {});
          }
          throw error;
        }
      }),
  );

  server.registerTool(
    "job_artifact_read",
    {
      title: "Read a job's artifact",
      description: `Read one artifact a job uploaded (names from job_artifacts), from offset, at most length bytes (default and limit ${ARTIFACT_READ_MAX / 1024 / 1024} MiB). Text artifacts come back as text; others as base64. eof: false means more follows from offset + bytes.`,
      inputSchema: jobArtifactRead.params.extend({ offset: jobArtifactRead.params.shape.offset.optional() }),
      annotations: { title: "Read a job's artifact", readOnlyHint: true, openWorldHint: false },
    },
    (args, extra) =>
      guarded(async () => {
        const answer = await call(
          jobArtifactRead,
          {
            id: args.id,
            name: args.name,
            offset: args.offset ?? 0,
            ...(args.length !== undefined ? { length: args.length } : {}),
          },
          { signal: extra.signal },
        );
        const bytes = Buffer.from(answer.data_base64, "base64");
        const text = decodeUtf8(bytes);
        const base = {
          artifact: answer.artifact,
          offset: answer.offset,
          bytes: bytes.length,
          eof: answer.eof,
        };
        if (text === undefined) {
          return toolResult({ ...base, encoding: "base64", content: answer.data_base64 });
        }
        return toolResult({ ...base, encoding: "utf8", content: text }, text);
      }),
  );
}
