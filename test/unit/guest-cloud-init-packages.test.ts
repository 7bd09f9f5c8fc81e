/**
 * The package step of a sandbox's first boot (real sh, with stand-ins for apt-get and the programs on
 * PATH): only what the template lacks is installed. The whole boot in a real guest is
 * test/real-guest/cloud-init.test.ts.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { promisify } from "node:util";
import { load } from "js-yaml";
import { ENSURE_PACKAGES_SCRIPT, renderUserData } from "../../src/daemon/guest/cloud-init.js";
import { runnerScript } from "../../src/daemon/guest/runner-script.js";

const run = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-cloudinit-packages-"));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The runcmd entry of the package step in a rendered snippet. */
function packageStep(job: boolean): string[] {
  const doc = load(
    renderUserData({
      vmid: 7,
      hostname: "h",
      bootstrap: { token: "t".repeat(32), controllerUrl: "http://10.77.0.1:8844" },
      ...(job ? { job: { token: "j".repeat(32), runnerScript: runnerScript() } } : {}),
    }),
  ) as { runcmd: string[][] };
  const step = doc.runcmd.find((cmd) => cmd[3] === "agentlab-packages");
  assert.ok(step, "the snippet has a package step");
  return step;
}

describe("the package step: installs only what the template lacks", () => {
  /** A PATH holding only stand-ins: the programs named, and an apt-get that logs how it was called. */
  function fakePath(name: string, programs: string[]): { bin: string; log: string } {
    const bin = path.join(dir, name);
    fs.mkdirSync(bin);
    const log = path.join(dir, `${name}.log`);
    for (const program of programs)
      fs.writeFileSync(path.join(bin, program), "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    fs.writeFileSync(path.join(bin, "apt-get"), `#!/bin/sh\necho "apt-get $*" >> ${log}\n`, { mode: 0o755 });
    return { bin, log };
  }

  async function runStep(step: string[], bin: string): Promise<string> {
    const [sh, c, script, ...args] = step;
    assert.deepEqual([sh, c, script], ["sh", "-c", ENSURE_PACKAGES_SCRIPT]);
    const { stdout } = await run("/bin/sh", ["-c", script!, ...args], { env: { PATH: bin } });
    return stdout;
  }

  it("a template with the guest agent (and the runner's tools): no apt-get at all", async () => {
    const { bin, log } = fakePath("complete", ["qemu-ga", "git", "curl", "jq"]);
    assert.equal(await runStep(packageStep(true), bin), "");
    assert.equal(fs.existsSync(log), false, "apt-get ran");
  });

  it("a template without them: one apt-get update, then an install of exactly the missing ones", async () => {
    const { bin, log } = fakePath("bare", ["curl"]);
    const out = await runStep(packageStep(true), bin);
    assert.match(out, /installing qemu-guest-agent git jq \(missing from the template\)/);
    assert.deepEqual(fs.readFileSync(log, "utf8").trim().split("\n"), [
      "apt-get update -q",
      "apt-get install -y -q qemu-guest-agent git jq",
    ]);
  });

  it("a plain sandbox asks only for the guest agent", async () => {
    const { bin, log } = fakePath("plain", []);
    await runStep(packageStep(false), bin);
    assert.deepEqual(fs.readFileSync(log, "utf8").trim().split("\n"), [
      "apt-get update -q",
      "apt-get install -y -q qemu-guest-agent",
    ]);
  });
});
