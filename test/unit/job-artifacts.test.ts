import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, it } from "node:test";
import { ArtifactStore, artifactName } from "../../src/daemon/services/jobs/artifacts.js";
import type { Job } from "../../src/daemon/store/jobs.js";
import { insertJob, type JobRig, jobRig } from "../helpers/job-rig.js";

// The host side of artifact uploads (src/daemon/services/jobs/artifacts.ts) on a real store and real
// files: names, the per-job limits, a planted symlink, replacing a file, chunked reads.

const body = (...parts: string[]) => Readable.from(parts.map((p) => Buffer.from(p)));
const sha = (text: string) => createHash("sha256").update(text).digest("hex");

describe("artifact names", () => {
  it("takes plain relative paths and refuses the rest with the reason", () => {
    assert.deepEqual(artifactName("out/result.txt"), { name: "out/result.txt" });
    assert.deepEqual(artifactName("with space.txt"), { name: "with space.txt" });
    for (const [raw, why] of [
      ["", /name is required/],
      ["/etc/passwd", /must be a relative path/],
      ["../x", /empty, "\." or "\.\." segment/],
      ["a/../../x", /"\.\." segment/],
      ["a//b", /empty/],
      ["a/", /empty/],
      ["./a", /"\."/],
      ["a\\b", /backslashes/],
      ["a\nb", /control characters/],
      ["a\0b", /control characters/],
      [`${"x".repeat(256)}`, /segment longer than 255 bytes/],
      ["a/".repeat(600), /longer than 1024 characters/],
    ] as const) {
      const checked = artifactName(raw);
      assert.ok("error" in checked, `${JSON.stringify(raw)} accepted`);
      assert.match(checked.error, why, JSON.stringify(raw));
    }
  });
});

describe("ArtifactStore", () => {
  let rig: JobRig;
  let job: Job;
  let store: ArtifactStore;
  let dir: string;

  beforeEach(() => {
    rig = jobRig();
    dir = path.join(rig.dir, "artifacts");
    rig.ctx.config = { ...rig.ctx.config, artifact_dir: dir, artifact_max_bytes: 100, artifact_max_files: 3 };
    job = insertJob(rig.store, 200, { status: "RUNNING" });
    store = new ArtifactStore(rig.ctx);
  });
  afterEach(() => rig.close());

  it("streams to artifact_dir/<job>/<name> with its SHA-256, and replacing a name frees its bytes", async () => {
    const first = await store.upload(job, "out/a.txt", undefined, body("hello ", "world"));
    assert.equal(first.status, 201, JSON.stringify(first.body));
    assert.equal(fs.readFileSync(path.join(dir, job.id, "out", "a.txt"), "utf8"), "hello world");
    assert.deepEqual(
      rig.store.jobArtifacts.list(job.id).map((a) => [a.name, a.size_bytes, a.sha256]),
      [["out/a.txt", 11, sha("hello world")]],
    );
    // 90 more bytes fit only because the 11 of the file it replaces are given back.
    const again = await store.upload(job, "out/a.txt", 95, body("y".repeat(95)));
    assert.equal(again.status, 201, JSON.stringify(again.body));
    assert.deepEqual(rig.store.jobArtifacts.totals(job.id), { count: 1, bytes: 95 });
    assert.deepEqual(fs.readdirSync(path.join(dir, job.id, "out")), ["a.txt"], "no temporary file left");
    const read = await store.read(job.id, "out/a.txt", 90, 1000);
    assert.equal(read.data.toString(), "yyyyy");
  });

  it("refuses with 413 what passes artifact_max_bytes (declared or received) or artifact_max_files", async () => {
    const declared = await store.upload(job, "big", 101, body("x"));
    assert.equal(declared.status, 413);
    assert.match(
      String(declared.body.error),
      /^artifact exceeds size limit: big does not fit in the 100 bytes left/,
    );
    // No Content-Length (chunked): counted as it arrives, the partial file removed.
    const streamed = await store.upload(job, "big", undefined, body("x".repeat(60), "x".repeat(60)));
    assert.equal(streamed.status, 413);
    assert.deepEqual(fs.readdirSync(path.join(dir, job.id)), []);
    for (const name of ["1", "2", "3"])
      assert.equal((await store.upload(job, name, 1, body("z"))).status, 201);
    const fourth = await store.upload(job, "4", 1, body("z"));
    assert.equal(fourth.status, 413);
    assert.match(
      String(fourth.body.error),
      /^artifact count limit reached: job job_0123456789abcdef already has 3 artifacts \(artifact_max_files 3\)$/,
    );
    assert.equal((await store.upload(job, "3", 1, body("w"))).status, 201, "replacing one still works");
  });

  it("never writes through a symlink planted in the job's directory", async () => {
    const outside = path.join(rig.dir, "outside");
    fs.mkdirSync(outside);
    fs.mkdirSync(path.join(dir, job.id), { recursive: true });
    fs.symlinkSync(outside, path.join(dir, job.id, "link"));
    const answer = await store.upload(job, "link/x.txt", 4, body("evil"));
    assert.equal(answer.status, 400);
    assert.match(String(answer.body.error), /leads outside the job's artifact directory/);
    assert.deepEqual(fs.readdirSync(outside), []);
    // A symlink as the file itself is replaced by the upload, not written through.
    fs.writeFileSync(path.join(outside, "target"), "keep");
    fs.symlinkSync(path.join(outside, "target"), path.join(dir, job.id, "file"));
    assert.equal((await store.upload(job, "file", 3, body("new"))).status, 201);
    assert.equal(fs.readFileSync(path.join(outside, "target"), "utf8"), "keep");
    assert.equal(fs.lstatSync(path.join(dir, job.id, "file")).isFile(), true);
  });

  it("reading an unknown name, or a file removed by hand, is ARTIFACT_NOT_FOUND", async () => {
    await assert.rejects(store.read(job.id, "nope", 0, 10), { code: "ARTIFACT_NOT_FOUND" });
    assert.equal((await store.upload(job, "gone", 1, body("g"))).status, 201);
    fs.rmSync(path.join(dir, job.id, "gone"));
    await assert.rejects(store.read(job.id, "gone", 0, 10), (error: Error & { code: string }) => {
      assert.equal(error.code, "ARTIFACT_NOT_FOUND");
      assert.match(error.message, /^artifact file missing: /);
      return true;
    });
  });
});
