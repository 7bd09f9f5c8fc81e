import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { REPO_ROOT } from "../helpers/paths.js";
import { FAST_KNOBS, type SimHost, startSimHost } from "../helpers/simhost.js";
import { setControl } from "../pvesim/harness.js";

/**
 * Shell completion asks the daemon for the names only it knows (issue 16 item 10): VMIDs after
 * `sandbox show`, workspace names, profile names after --profile; and stays silent when it is down.
 */
describe("shell completion with the daemon's names", () => {
  let h: SimHost;
  let vmid = 0;
  before(async () => {
    h = await startSimHost("shell");
    await setControl(h.sim.dir, FAST_KNOBS);
    const made = await h.json<{ vmid: number }>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(made.code, 0, made.stderr);
    vmid = made.body.vmid;
    const ws = await h.json(["workspace", "create", "--name", "compl-ws", "--size", "1G"]);
    assert.equal(ws.code, 0, ws.stderr);
  });
  after(async () => {
    await h.stop();
  });

  const complete = async (...words: string[]) => {
    const result = await h.cli(["--get-yargs-completions", "agentlab", ...words]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stderr, "");
    return result.stdout.split("\n").filter((line) => line !== "");
  };

  test("VMIDs after a command that takes one, filtered by what is typed", async () => {
    assert.ok((await complete("sandbox", "show", "")).includes(String(vmid)));
    assert.ok((await complete("ssh", "")).includes(String(vmid)));
    assert.ok((await complete("sandbox", "show", String(vmid).slice(0, 2))).includes(String(vmid)));
    assert.ok(!(await complete("sandbox", "show", "9")).includes(String(vmid)));
    // Once the VMID is there, the next word is not another VMID.
    assert.ok(!(await complete("sandbox", "show", String(vmid), "")).includes(String(vmid)));
  });

  test("completing a whole command line never runs it", async () => {
    const words = await complete("sandbox", "destroy", String(vmid));
    assert.ok(!words.some((w) => /DESTROYED|destroyed/.test(w)), words.join("\n"));
    const shown = await h.json<{ state: string }>(["sandbox", "show", String(vmid)]);
    assert.equal(shown.body.state, "RUNNING", "the sandbox is still there");
    const show = await complete("sandbox", "show", String(vmid));
    assert.ok(!show.some((w) => w.startsWith("state:")), show.join("\n"));
  });

  test("workspace names, and profile names after --profile", async () => {
    assert.ok((await complete("workspace", "show", "")).includes("compl-ws"));
    assert.ok((await complete("sandbox", "new", "--workspace", "")).includes("compl-ws"));
    const profiles = await complete("sandbox", "new", "--profile", "");
    for (const name of ["yolo-ephemeral", "yolo-workspace"]) assert.ok(profiles.includes(name), name);
  });

  test("a daemon that is down gives no names, no error and exit 0", async () => {
    const result = await h.cli([
      "--socket",
      "/tmp/agentlab-no-such.sock",
      "--get-yargs-completions",
      "agentlab",
      "sandbox",
      "show",
      "",
    ]);
    assert.equal(result.code, 0);
    assert.equal(result.stderr, "");
    assert.ok(!result.stdout.split("\n").includes(String(vmid)));
  });

  test("the fish script completes through the same names", async (t) => {
    if (spawnSync("fish", ["--version"]).status !== 0) return t.skip("fish is not installed");
    const dir = mkdtempSync(join(tmpdir(), "agentlab-fish-"));
    try {
      // `agentlab` on PATH pointing at the daemon under test.
      writeFileSync(
        join(dir, "agentlab"),
        `#!/bin/sh\nexec ${process.execPath} ${join(REPO_ROOT, "bin/agentlab")} --socket ${h.host.socketPath} "$@"\n`,
        { mode: 0o755 },
      );
      symlinkSync(process.execPath, join(dir, "node"));
      const script = (await h.cli(["completion", "fish"])).stdout;
      const run = spawnSync(
        "fish",
        [
          "--no-config",
          "-c",
          `${script}\ncomplete -C 'agentlab sandbox show '\ncomplete -C 'agentlab sandbox sh'`,
        ],
        { encoding: "utf8", env: { ...process.env, PATH: `${dir}:${process.env.PATH}` } },
      );
      assert.equal(run.status, 0, run.stderr);
      const lines = run.stdout.split("\n");
      assert.ok(lines.includes(String(vmid)), run.stdout);
      assert.ok(lines.includes("show"), run.stdout);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
