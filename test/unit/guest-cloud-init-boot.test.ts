/**
 * What a sandbox's first boot runs from our user-data besides the phone-home: the package step (real sh,
 * with stand-ins for apt-get and the programs on PATH) and the workspace mount (the units checked by the
 * real systemd-analyze, the device name by the real systemd-escape). The whole boot in a real guest is
 * test/system/real-guest-cloud-init.test.ts.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { promisify } from "node:util";
import { load } from "js-yaml";
import {
  ENSURE_PACKAGES_SCRIPT,
  renderUserData,
  WORKSPACE_LABEL,
  WORKSPACE_MOUNT_UNIT,
  WORKSPACE_OWNER_UNIT,
  WORKSPACE_UDEV_RULE,
} from "../../src/daemon/guest/cloud-init.js";
import { runnerScript } from "../../src/daemon/guest/runner-script.js";
import { WORKSPACE_FS_LABEL } from "../../src/daemon/services/workspaces/create.js";

const run = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-cloudinit-boot-"));
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

describe("the workspace mount: /work from the disk labelled AGENTLAB_WORK", () => {
  it("uses the label the daemon formats workspaces with", () => {
    assert.equal(WORKSPACE_LABEL, WORKSPACE_FS_LABEL);
  });

  it("names the device unit as systemd does", async () => {
    const { stdout } = await run("systemd-escape", ["--path", `/dev/disk/by-label/${WORKSPACE_LABEL}`]);
    const device = stdout.trim();
    assert.ok(WORKSPACE_MOUNT_UNIT.includes(`Requires=systemd-fsck@${device}.service\n`));
    assert.ok(WORKSPACE_MOUNT_UNIT.includes(`After=systemd-fsck@${device}.service\n`));
  });

  it("passes systemd-analyze verify (the mount unit's name matches /work; noatime)", async () => {
    const units = path.join(dir, "units");
    fs.mkdirSync(units);
    fs.writeFileSync(path.join(units, "work.mount"), WORKSPACE_MOUNT_UNIT);
    fs.writeFileSync(path.join(units, "agentlab-work-owner.service"), WORKSPACE_OWNER_UNIT);
    await run("systemd-analyze", [
      "verify",
      path.join(units, "work.mount"),
      path.join(units, "agentlab-work-owner.service"),
    ]);
    assert.match(WORKSPACE_MOUNT_UNIT, /^Where=\/work$/m);
    assert.match(WORKSPACE_MOUNT_UNIT, /^Options=noatime$/m);
  });

  it("is wanted by the disk's appearance (udev), so nothing waits for a disk that is not attached", () => {
    assert.match(
      WORKSPACE_UDEV_RULE,
      /^SUBSYSTEM=="block", ENV\{ID_FS_LABEL\}=="AGENTLAB_WORK", ENV\{SYSTEMD_WANTS\}\+="work\.mount agentlab-work-owner\.service"$/m,
    );
    // No [Install]: nothing enables the units, so no boot ordering can ever wait for the device.
    assert.doesNotMatch(WORKSPACE_MOUNT_UNIT, /\[Install\]|WantedBy|RequiredBy/);
    assert.doesNotMatch(WORKSPACE_OWNER_UNIT, /\[Install\]|WantedBy|RequiredBy/);
    assert.match(WORKSPACE_OWNER_UNIT, /^ExecStart=\/bin\/chown agent:agent \/work$/m);
  });
});
