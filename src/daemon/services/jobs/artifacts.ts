/**
 * A job's artifacts on the host (docs/jobs.md, "Artifacts"): the files its runner uploads, stored at
 * artifact_dir/<job id>/<name>. An upload is streamed to a temporary file beside its target while its
 * SHA-256 is computed, fsynced and renamed into place, so a reader never sees half a file; only then is
 * its row written. Limits are per job (artifact_max_bytes together, artifact_max_files), checked against
 * the declared length first and the bytes actually received too. An empty file is an artifact like any
 * other (an agent that changed nothing leaves an empty repo.diff); upstream refused empty bodies.
 *
 * Names come from a guest that runs an untrusted agent: relative, `/`-separated, no `.`/`..` or empty
 * segment, no control characters or backslashes, and the directory the file lands in must resolve inside
 * the job's directory (a symlink planted there cannot lead the write elsewhere). Upstream checked only
 * for `..` and absolute paths (spec §7.5).
 */
import { createHash, randomBytes } from "node:crypto";
import { constants, promises as fsp } from "node:fs";
import { dirname, join, sep } from "node:path";
import type { Readable } from "node:stream";
import { AgentlabError } from "../../../protocol/errors.js";
import type { DaemonContext } from "../../context.js";
import type { GuestAnswer } from "../../guest/listener.js";
import type { JobArtifact } from "../../store/job-artifacts.js";
import type { Job } from "../../store/jobs.js";

/** Longest artifact name, and longest segment (most filesystems' NAME_MAX). */
export const MAX_ARTIFACT_NAME = 1024;
const MAX_SEGMENT = 255;
/** Largest chunk job.artifact_read returns: a bounded message on the socket or the WebSocket. */
export const MAX_READ_CHUNK = 1024 * 1024;

export const ARTIFACT_REFUSED = {
  tooLarge: "artifact exceeds size limit",
  tooMany: "artifact count limit reached",
} as const;

/** The checked name, or why it is refused (the runner logs it). */
export function artifactName(raw: string | null | undefined): { name: string } | { error: string } {
  if (raw === null || raw === undefined || raw === "")
    return { error: "name is required (?name=<relative path>)" };
  if (raw.length > MAX_ARTIFACT_NAME)
    return { error: `artifact name longer than ${MAX_ARTIFACT_NAME} characters` };
  if (raw.startsWith("/"))
    return { error: `artifact name must be a relative path, not ${JSON.stringify(raw)}` };
  if (/[\x00-\x1f\x7f\\]/.test(raw)) {
    return { error: "artifact name must not contain control characters or backslashes" };
  }
  const segments = raw.split("/");
  for (const segment of segments) {
    if (segment === "" || segment === "." || segment === "..") {
      return { error: `artifact name ${JSON.stringify(raw)} has an empty, "." or ".." segment` };
    }
    if (Buffer.byteLength(segment) > MAX_SEGMENT) {
      return { error: `artifact name segment longer than ${MAX_SEGMENT} bytes` };
    }
  }
  return { name: segments.join("/") };
}

/** The protocol's view of a stored artifact. */
export function artifactJson(a: JobArtifact): {
  name: string;
  size_bytes: number;
  sha256: string;
  created_at: string;
} {
  return { name: a.name, size_bytes: a.size_bytes, sha256: a.sha256, created_at: a.created_at.toISOString() };
}

const refuse = (status: number, error: string): GuestAnswer => ({ status, body: { error } });

function inside(root: string, path: string): boolean {
  return path === root || path.startsWith(root + sep);
}

export class ArtifactStore {
  constructor(private readonly ctx: DaemonContext) {}

  jobDir(jobId: string): string {
    return join(this.ctx.config.artifact_dir, jobId);
  }

  /**
   * Store one upload of an authenticated, still active job. `declared` is the request's Content-Length
   * when it sent one. Never throws for bad input; the answer is what the runner sees.
   */
  async upload(
    job: Job,
    rawName: string | null,
    declared: number | undefined,
    body: Readable,
  ): Promise<GuestAnswer> {
    const checked = artifactName(rawName);
    if ("error" in checked) return refuse(400, checked.error);
    const { name } = checked;
    const { config, store } = this.ctx;
    const totals = store.jobArtifacts.totals(job.id);
    const previous = store.jobArtifacts.get(job.id, name);
    if (previous === undefined && totals.count >= config.artifact_max_files) {
      return refuse(
        413,
        `${ARTIFACT_REFUSED.tooMany}: job ${job.id} already has ${totals.count} artifacts (artifact_max_files ${config.artifact_max_files})`,
      );
    }
    // Replacing a file frees its bytes.
    const room = config.artifact_max_bytes - (totals.bytes - (previous?.size_bytes ?? 0));
    const tooLarge = () =>
      refuse(
        413,
        `${ARTIFACT_REFUSED.tooLarge}: ${name} does not fit in the ${room} bytes left of the job's artifact_max_bytes (${config.artifact_max_bytes})`,
      );
    if (declared !== undefined && declared > room) return tooLarge();

    const root = this.jobDir(job.id);
    const target = join(root, ...name.split("/"));
    await fsp.mkdir(dirname(target), { recursive: true, mode: 0o750 });
    // A symlink among the directories (only a hand could plant one: uploads make files) must not lead
    // the write out of the job's directory.
    const [realRoot, realParent] = await Promise.all([fsp.realpath(root), fsp.realpath(dirname(target))]);
    if (!inside(realRoot, realParent)) {
      return refuse(400, `artifact name ${JSON.stringify(name)} leads outside the job's artifact directory`);
    }
    const existing = await fsp.lstat(target).catch(() => undefined);
    if (existing?.isDirectory()) return refuse(409, `artifact name ${JSON.stringify(name)} is a directory`);

    const temp = `${target}.tmp-${randomBytes(6).toString("hex")}`;
    const file = await fsp.open(
      temp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o640,
    );
    const hash = createHash("sha256");
    let size = 0;
    let done = false;
    try {
      // Leaving the loop early (too large) must not destroy the request: the runner is still owed the 413.
      for await (const chunk of body.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > room) return tooLarge();
        hash.update(chunk);
        await file.write(chunk);
      }
      await file.sync();
      await file.close();
      await fsp.rename(temp, target);
      done = true;
    } finally {
      if (!done) {
        await file.close().catch(() => {});
        await fsp.rm(temp, { force: true });
      }
    }
    const sha256 = hash.digest("hex");
    const row = store.tx(() => {
      const put = store.jobArtifacts.put({
        job_id: job.id,
        vmid: job.sandbox_vmid,
        name,
        size_bytes: size,
        sha256,
      });
      store.events.append({
        kind: "artifact.upload",
        job_id: job.id,
        sandbox_vmid: job.sandbox_vmid,
        msg: `artifact ${name} (${size} bytes)`,
        payload: { name, size_bytes: size, sha256 },
      });
      return put;
    });
    return { status: 201, body: { job_id: job.id, artifact: artifactJson(row) } };
  }

  list(jobId: string): JobArtifact[] {
    return this.ctx.store.jobArtifacts.list(jobId);
  }

  /** Up to `length` bytes of one artifact from `offset`, for downloads in bounded chunks. */
  async read(
    jobId: string,
    name: string,
    offset: number,
    length: number,
  ): Promise<{ artifact: JobArtifact; data: Buffer }> {
    const artifact = this.ctx.store.jobArtifacts.get(jobId, name);
    if (!artifact) {
      throw new AgentlabError("ARTIFACT_NOT_FOUND", `job ${jobId} has no artifact named ${name}`, {
        details: { job_id: jobId, name },
      });
    }
    const path = join(this.jobDir(jobId), ...name.split("/"));
    let file: fsp.FileHandle;
    try {
      file = await fsp.open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch (error) {
      throw new AgentlabError(
        "ARTIFACT_NOT_FOUND",
        `artifact file missing: ${path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
        {
          hint: "the file was removed from artifact_dir by hand or by maintenance; the job's record remains",
          details: { job_id: jobId, name },
        },
      );
    }
    try {
      const want = Math.max(0, Math.min(length, MAX_READ_CHUNK, artifact.size_bytes - offset));
      const data = Buffer.alloc(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await file.read(data, got, want - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return { artifact, data: data.subarray(0, got) };
    } finally {
      await file.close();
    }
  }
}
