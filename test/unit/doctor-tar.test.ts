import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { gunzipSync } from "node:zlib";
import { bundleArchive, doctorSlug, gzipDeterministic, tarArchive } from "../../src/cli/doctor.js";

/**
 * The doctor bundle's archive writer is our own ustar + gzip code, so these tests hand its output to
 * the real tar(1) and check that what tar lists and extracts is what went in.
 */
describe("doctor bundle archive", () => {
  const dir = mkdtempSync(join(tmpdir(), "doctor-tar-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const save = (name: string, bytes: Buffer) => {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    return path;
  };

  test("tar -tzv lists every entry with its size, mode 0644 and owner 0/0", () => {
    const big = Buffer.alloc(1300, "x");
    const archive = gzipDeterministic(
      tarArchive([
        { name: "top/a.json", content: Buffer.from('{"a":1}\n') },
        { name: "top/sub/big.txt", content: big },
        { name: "top/empty", content: Buffer.alloc(0) },
      ]),
      "agentlab-doctor",
    );
    const path = save("list.tar.gz", archive);
    const listing = execFileSync("tar", ["--numeric-owner", "-tzvf", path], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map((line) => line.split(/\s+/));
    assert.deepEqual(
      listing.map((cols) => [cols[0], cols[1], cols[2], cols.at(-1)]),
      [
        ["-rw-r--r--", "0/0", "8", "top/a.json"],
        ["-rw-r--r--", "0/0", "1300", "top/sub/big.txt"],
        ["-rw-r--r--", "0/0", "0", "top/empty"],
      ],
    );
    const out = join(dir, "x1");
    execFileSync("mkdir", [out]);
    execFileSync("tar", ["-xzf", path, "-C", out]);
    assert.deepEqual(readFileSync(join(out, "top/sub/big.txt")), big);
    assert.equal(statSync(join(out, "top/a.json")).mtimeMs, 0, "times are epoch 0");
  });

  test("the gzip header is fixed: name agentlab-doctor, mtime 0, OS 255; the same input gives the same bytes", () => {
    const entries = [{ name: "t/f", content: Buffer.from("hello\n") }];
    const a = gzipDeterministic(tarArchive(entries), "agentlab-doctor");
    const b = gzipDeterministic(tarArchive(entries), "agentlab-doctor");
    assert.deepEqual(a, b);
    assert.equal(a.readUInt32LE(4), 0, "mtime");
    assert.equal(a[9], 255, "OS");
    assert.equal(a.subarray(10, 26).toString("latin1"), "agentlab-doctor\0");
    // Node's own gunzip checks the CRC and length trailer.
    assert.equal(gunzipSync(a).length % 512, 0);
  });

  test("a name over 100 bytes goes through the ustar prefix field", () => {
    const long = `${"d".repeat(120)}/${"f".repeat(90)}.json`;
    const path = save(
      "long.tar.gz",
      gzipDeterministic(tarArchive([{ name: long, content: Buffer.from("1\n") }]), "x"),
    );
    const names = execFileSync("tar", ["-tzf", path], { encoding: "utf8" }).trim().split("\n");
    assert.deepEqual(names, [long]);
  });

  test("a name that no split fits is refused", () => {
    assert.throws(() => tarArchive([{ name: "n".repeat(101), content: Buffer.alloc(1) }]), /too long/);
    assert.throws(
      () => tarArchive([{ name: `${"p".repeat(160)}/f`, content: Buffer.alloc(1) }]),
      /too long for a ustar header/,
    );
  });

  test("a bundle is archived under agentlab-doctor-<kind>-<slug>/ with its files sorted", () => {
    assert.equal(doctorSlug("job_AB12"), "job-ab12");
    const archive = bundleArchive({
      kind: "job",
      id: "job_0123456789abcdef",
      files: [
        { path: "records/job.json", content: "{}\n" },
        { path: "meta.json", content: '{"version": 1}\n' },
        { path: "events/job.json", content: "{}\n" },
      ],
    });
    const path = save("bundle.tar.gz", archive);
    const names = execFileSync("tar", ["-tzf", path], { encoding: "utf8" }).trim().split("\n");
    const top = "agentlab-doctor-job-job-0123456789abcdef";
    assert.deepEqual(names, [`${top}/events/job.json`, `${top}/meta.json`, `${top}/records/job.json`]);
  });
});
