import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type GuestRig, guestRigSkipReason, type SandboxBody, startGuestRig } from "../helpers/guest-rig.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";

/**
 * `agentlab sandbox cp` against a real OpenSSH sshd serving SFTP (the rig of sandbox exec's test): the
 * daemon logs in with its own key, checks the host key the guest reported, and moves the bytes in
 * chunks. The sshd runs as root on this machine, so "the guest's" paths are this machine's paths, in a
 * scratch directory.
 */

const skip = guestRigSkipReason();

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const modeOf = (path: string) => statSync(path).mode & 0o7777;

interface CopySummary {
  direction: string;
  destination: string;
  files: Array<{ path: string; bytes: number; sha256: string; mode: number }>;
  directories: string[];
  skipped: Array<{ path: string; type: string }>;
  bytes: number;
}

/**
 * Temporaries a copy of `file` left in `dir` (`.NAME.agentlab-*.part`): of that file only, so one test's
 * failed copy is its own failure, not also the next test's.
 */
function partials(dir: string, file: string): string[] {
  return readdirSync(dir).filter((name) => name.startsWith(`.${file}.agentlab-`) && name.endsWith(".part"));
}

describe("sandbox cp against a real sshd", { skip }, () => {
  let rig: GuestRig;
  let vmid: number;
  let local: string;
  let guest: string;
  /** A 1 MiB tmpfs: a guest disk that fills up. */
  let smallDisk: string | undefined;
  const cp = (args: string[]) => rig.cli(["sandbox", "cp", "--user", "root", ...args]);
  const cpJson = (args: string[]) => rig.json<CopySummary>(["sandbox", "cp", "--user", "root", ...args]);

  before(async () => {
    // Mounted before sshd starts: `ip netns exec` gives sshd a copy of the mounts there are then.
    smallDisk = mkdtempSync(join(tmpdir(), "agentlab-cp-disk-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", smallDisk]);
    rig = await startGuestRig("cp");
    vmid = (await rig.newSandbox()).vmid;
    local = join(rig.dir, "local");
    guest = join(rig.dir, "guest");
    mkdirSync(local);
    mkdirSync(guest);
  });

  after(async () => {
    await rig?.stop();
    if (smallDisk) {
      spawnSync("umount", [smallDisk]);
      rmSync(smallDisk, { recursive: true, force: true });
    }
  });

  test("a 50 MiB binary file up and down: the same bytes, the same SHA-256, the mode kept", async () => {
    // 50 MiB and a bit (issue 13's round trip): a hundred chunks and a short one, with progress.
    const data = randomBytes(50 * 1024 * 1024 + 17);
    const source = join(local, "blob.bin");
    writeFileSync(source, data);
    chmodSync(source, 0o750);

    const before = await rig.json<{ last_used_at?: string }>(["sandbox", "show", String(vmid)]);
    const up = await cp([source, `${vmid}:${guest}/blob.bin`]);
    assert.equal(up.code, 0, up.stderr);
    // A copy is use of the sandbox: idle stop counts from its end.
    const after = await rig.json<{ last_used_at?: string }>(["sandbox", "show", String(vmid)]);
    assert.ok(
      Date.parse(after.body.last_used_at ?? "") > Date.parse(before.body.last_used_at ?? "0"),
      `last_used_at moved: ${before.body.last_used_at} -> ${after.body.last_used_at}`,
    );
    assert.equal(up.stdout, `copied 1 file, 50.0 MiB to ${vmid}:${guest}/blob.bin\n`);
    assert.match(up.stderr, /copied 50\.0 MiB \/ 50\.0 MiB \(100%\)\n$/, "progress on stderr");
    assert.equal(sha256(readFileSync(join(guest, "blob.bin"))), sha256(data));
    assert.equal(modeOf(join(guest, "blob.bin")), 0o750);
    assert.deepEqual(partials(guest, "blob.bin"), []);

    chmodSync(join(guest, "blob.bin"), 0o604);
    const down = await cpJson([`${vmid}:${guest}/blob.bin`, join(local, "back.bin")]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(sha256(readFileSync(join(local, "back.bin"))), sha256(data));
    assert.equal(modeOf(join(local, "back.bin")), 0o604);
    assert.deepEqual(down.body.files, [
      { path: join(local, "back.bin"), bytes: data.length, sha256: sha256(data), mode: 0o604 },
    ]);
    assert.equal(down.body.bytes, data.length);
    assert.deepEqual(partials(local, "back.bin"), []);
  });

  test("cp's rules: into an existing directory by name, a relative guest path from the user's home", async () => {
    const source = join(local, "task.md");
    writeFileSync(source, "# the task\n");
    const into = await cpJson([source, `${vmid}:${guest}`]);
    assert.equal(into.code, 0, into.stderr);
    assert.equal(into.body.files[0]?.path, join(guest, "task.md"));
    assert.equal(readFileSync(join(guest, "task.md"), "utf8"), "# the task\n");

    // A download into ".": the CLI's working directory is this process's; name a directory instead.
    const out = join(local, "out");
    mkdirSync(out);
    const back = await cp([`${vmid}:${guest}/task.md`, out]);
    assert.equal(back.code, 0, back.stderr);
    assert.equal(readFileSync(join(out, "task.md"), "utf8"), "# the task\n");

    // Relative: the login user's home (root's here), as scp has it.
    const name = `agentlab-cp-test-${process.pid}.txt`;
    try {
      const relative = await cpJson([source, `${vmid}:${name}`]);
      assert.equal(relative.code, 0, relative.stderr);
      assert.equal(relative.body.files[0]?.path, `/root/${name}`);
      assert.equal(readFileSync(`/root/${name}`, "utf8"), "# the task\n");
    } finally {
      rmSync(`/root/${name}`, { force: true });
    }

    // An existing file is replaced whole.
    writeFileSync(join(guest, "task.md"), "old and longer than the new one\n");
    assert.equal((await cp([source, `${vmid}:${guest}/task.md`])).code, 0);
    assert.equal(readFileSync(join(guest, "task.md"), "utf8"), "# the task\n");
  });

  test("-r copies a tree both ways with its modes; without -r a directory is refused", async () => {
    const tree = join(local, "tree");
    mkdirSync(join(tree, "sub", "deeper"), { recursive: true });
    mkdirSync(join(tree, "empty"));
    writeFileSync(join(tree, "a.txt"), "a\n");
    writeFileSync(join(tree, "sub", "b.sh"), "#!/bin/sh\necho b\n");
    chmodSync(join(tree, "sub", "b.sh"), 0o755);
    writeFileSync(join(tree, "sub", "deeper", "c.bin"), randomBytes(600 * 1024));
    chmodSync(join(tree, "sub", "deeper"), 0o750);
    symlinkSync("a.txt", join(tree, "link"));

    const refused = await cp([tree, `${vmid}:${guest}/tree`]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`error: ${tree} is a directory \\(not copied\\)`));
    assert.match(refused.stderr, /hint: copy a directory with -r/);
    assert.equal(existsSync(join(guest, "tree")), false);

    const up = await cpJson(["-r", tree, `${vmid}:${guest}/tree`]);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(up.body.files.length, 3);
    assert.deepEqual(up.body.skipped, [{ path: join(tree, "link"), type: "symlink" }]);
    for (const file of ["a.txt", "sub/b.sh", "sub/deeper/c.bin"]) {
      assert.equal(
        sha256(readFileSync(join(guest, "tree", file))),
        sha256(readFileSync(join(tree, file))),
        file,
      );
      assert.equal(modeOf(join(guest, "tree", file)), modeOf(join(tree, file)), file);
    }
    assert.equal(modeOf(join(guest, "tree", "sub", "deeper")), 0o750);
    assert.ok(statSync(join(guest, "tree", "empty")).isDirectory());

    // Again into the now existing directory: it lands inside, as tree/tree (cp -r does the same).
    const again = await cp(["-r", tree, `${vmid}:${guest}/tree`]);
    assert.equal(again.code, 0, again.stderr);
    assert.ok(existsSync(join(guest, "tree", "tree", "sub", "b.sh")));

    const down = await cpJson(["-r", `${vmid}:${guest}/tree`, join(local, "tree-back")]);
    assert.equal(down.code, 0, down.stderr);
    for (const file of ["a.txt", "sub/b.sh", "sub/deeper/c.bin", "tree/a.txt"]) {
      assert.equal(
        sha256(readFileSync(join(local, "tree-back", file))),
        sha256(readFileSync(join(guest, "tree", file))),
        file,
      );
      assert.equal(modeOf(join(local, "tree-back", file)), modeOf(join(guest, "tree", file)), file);
    }
    assert.equal(modeOf(join(local, "tree-back", "sub", "deeper")), 0o750);

    const noR = await cp([`${vmid}:${guest}/tree`, join(local, "nope")]);
    assert.equal(noR.code, 1);
    assert.match(
      noR.stderr,
      new RegExp(`error: sandbox ${vmid}: ${guest}/tree is a directory \\(not copied\\)`),
    );

    // A directory over an existing file: refused, like cp(1).
    writeFileSync(join(local, "plain"), "x");
    const over = await cp(["-r", `${vmid}:${guest}/tree`, join(local, "plain")]);
    assert.equal(over.code, 1);
    assert.match(over.stderr, /error: cannot overwrite non-directory .*plain with directory/);
    assert.equal(readFileSync(join(local, "plain"), "utf8"), "x");
  });

  test("a missing path, a missing directory, permission denied: what was wrong, nothing changed", async () => {
    const missing = await cp([`${vmid}:${guest}/no-such-file`, local]);
    assert.equal(missing.code, 1);
    assert.match(
      missing.stderr,
      new RegExp(`error: sandbox ${vmid}: ${guest}/no-such-file: no such file or directory`),
    );

    const missingLocal = await cp([join(local, "no-such-file"), `${vmid}:${guest}/x`]);
    assert.equal(missingLocal.code, 1);
    assert.match(missingLocal.stderr, /error: .*no-such-file: no such file or directory/);

    writeFileSync(join(local, "small.txt"), "small\n");
    const noDir = await cp([join(local, "small.txt"), `${vmid}:${guest}/no-dir/small.txt`]);
    assert.equal(noDir.code, 1);
    assert.match(noDir.stderr, new RegExp(`error: sandbox ${vmid}: ${guest}/no-dir: no such directory`));
    assert.match(noDir.stderr, /hint: make it first: agentlab sandbox exec/);

    // A trailing / names a directory: one that is not there is not made into a file of that name.
    const slash = await cp([join(local, "small.txt"), `${vmid}:${guest}/not-yet/`]);
    assert.equal(slash.code, 1);
    assert.match(slash.stderr, new RegExp(`error: sandbox ${vmid}: ${guest}/not-yet/: no such directory`));
    assert.equal(existsSync(join(guest, "not-yet")), false);

    // Even root may not write into an immutable directory (ext4's i attribute): EPERM in the guest.
    const locked = join(guest, "locked");
    mkdirSync(locked);
    const chattr = spawnSync("chattr", ["+i", locked]);
    if (chattr.status === 0) {
      try {
        const denied = await cp([join(local, "small.txt"), `${vmid}:${locked}/small.txt`]);
        assert.equal(denied.code, 1);
        assert.match(denied.stderr, new RegExp(`error: sandbox ${vmid}: ${locked}: permission denied`));
        assert.deepEqual(readdirSync(locked), []);
      } finally {
        spawnSync("chattr", ["-i", locked]);
      }
    }

    const both = await cp([`${vmid}:/a`, `${vmid}:/b`]);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /error: both sides are in a sandbox/);
  });

  test("a copy that fails midway (the guest's disk is full) leaves the old file intact and no temporary", async () => {
    const small = smallDisk!;
    writeFileSync(join(small, "target.bin"), "the old content\n");
    const big = join(local, "big.bin");
    writeFileSync(big, randomBytes(3 * 1024 * 1024));
    const run = await cp([big, `${vmid}:${small}/target.bin`]);
    assert.equal(run.code, 1);
    assert.match(run.stderr, new RegExp(`error: sandbox ${vmid}: writing ${small}/target.bin failed`));
    assert.match(run.stderr, /hint: the destination was left as it was/);
    assert.equal(readFileSync(join(small, "target.bin"), "utf8"), "the old content\n");
    assert.deepEqual(readdirSync(small), ["target.bin"]);
  });

  test("Ctrl-C in the middle of an upload: exit 130, the old file intact, the temporary removed", async () => {
    const big = join(local, "huge.bin");
    writeFileSync(big, randomBytes(48 * 1024 * 1024));
    const target = join(guest, "interrupted.bin");
    writeFileSync(target, "before\n");
    const child: ChildProcess = spawn(
      process.execPath,
      [
        AGENTLAB_BIN,
        "--socket",
        rig.host.socketPath,
        "sandbox",
        "cp",
        "--user",
        "root",
        big,
        `${vmid}:${target}`,
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, AGENTLAB_SOCKET: "" } },
    );
    let stderr = "";
    // The first progress line (10%) says the upload is under way: then Ctrl-C.
    await new Promise<void>((resolve) =>
      child.stderr?.on("data", (chunk) => {
        stderr += chunk;
        if (/copied .* \/ 48\.0 MiB \(1\d%\)/.test(stderr)) resolve();
      }),
    );
    child.kill("SIGINT");
    const code = await new Promise((resolve) => child.on("close", resolve));
    assert.equal(code, 130, stderr);
    assert.match(stderr, /the copy was interrupted; the file being copied was left as it was/);
    assert.equal(readFileSync(target, "utf8"), "before\n");
    assert.deepEqual(partials(guest, "interrupted.bin"), []);
  });

  test("Ctrl-C in the middle of a download: exit 130, the local file intact, no partial file left", async () => {
    writeFileSync(join(guest, "huge-out.bin"), randomBytes(48 * 1024 * 1024));
    const into = join(local, "download-here");
    mkdirSync(into);
    const target = join(into, "huge-out.bin");
    writeFileSync(target, "before\n");
    const child: ChildProcess = spawn(
      process.execPath,
      [
        AGENTLAB_BIN,
        "--socket",
        rig.host.socketPath,
        "sandbox",
        "cp",
        "--user",
        "root",
        `${vmid}:${guest}/huge-out.bin`,
        into,
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, AGENTLAB_SOCKET: "" } },
    );
    let stderr = "";
    await new Promise<void>((resolve) =>
      child.stderr?.on("data", (chunk) => {
        stderr += chunk;
        if (/copied .* \/ 48\.0 MiB \(1\d%\)/.test(stderr)) resolve();
      }),
    );
    child.kill("SIGINT");
    const code = await new Promise((resolve) => child.on("close", resolve));
    assert.equal(code, 130, stderr);
    assert.equal(readFileSync(target, "utf8"), "before\n");
    assert.deepEqual(readdirSync(into), ["huge-out.bin"]);
  });

  test("through agentlab connect: an operate token copies both ways, a read token is refused", async () => {
    const operate = await rig.remote("operate", "cp-operate");
    const data = randomBytes(1024 * 1024 + 3);
    writeFileSync(join(local, "remote.bin"), data);
    const up = await operate([
      "sandbox",
      "cp",
      "--user",
      "root",
      join(local, "remote.bin"),
      `${vmid}:${guest}/remote.bin`,
    ]);
    assert.equal(up.code, 0, up.stderr);
    assert.equal(sha256(readFileSync(join(guest, "remote.bin"))), sha256(data));
    const down = await operate([
      "sandbox",
      "cp",
      "--user",
      "root",
      `${vmid}:${guest}/remote.bin`,
      join(local, "remote-back.bin"),
    ]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(sha256(readFileSync(join(local, "remote-back.bin"))), sha256(data));

    const read = await rig.remote("read", "cp-read");
    const refused = await read([
      "sandbox",
      "cp",
      "--user",
      "root",
      `${vmid}:${guest}/remote.bin`,
      join(local, "r.bin"),
    ]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      /error: sandbox\.file_stat needs a token with scope operate; token "cp-read" has scope read/,
    );
    assert.equal(existsSync(join(local, "r.bin")), false);
  });

  test("a wrong host key and a stopped sandbox: refused as exec refuses them", async () => {
    const other: SandboxBody = await rig.newSandbox(join(rig.dir, "other_host_key.pub"));
    writeFileSync(join(local, "k.txt"), "k\n");
    const run = await cp([join(local, "k.txt"), `${other.vmid}:${guest}/k.txt`]);
    assert.equal(run.code, 1);
    assert.match(
      run.stderr,
      new RegExp(
        `error: sandbox ${other.vmid}: the SSH host key at .* is not one the guest reported when it booted; refusing to connect`,
      ),
    );
    assert.equal(existsSync(join(guest, "k.txt")), false);

    assert.equal((await rig.cli(["sandbox", "stop", String(other.vmid)])).code, 0);
    const stopped = await cp([join(local, "k.txt"), `${other.vmid}:${guest}/k.txt`]);
    assert.equal(stopped.code, 1);
    assert.match(
      stopped.stderr,
      /error: cannot copy files to or from sandbox in STOPPED state\. Valid states: RUNNING, READY/,
    );
    assert.match(stopped.stderr, new RegExp(`hint: start it first: agentlab sandbox start ${other.vmid}`));
  });
});
