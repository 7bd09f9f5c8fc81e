import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type HostDir, makeHostDir, startDaemon } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";

const INSTALL = join(REPO_ROOT, "scripts", "install.sh");

function install(root: string, ...args: string[]): string {
  return execFileSync("sh", [INSTALL, "--root", root, ...args], { encoding: "utf8" });
}

describe("scripts/install.sh into a temporary root", () => {
  let root: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), "agentlab-install-"));
    install(root);
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  test("lays out code, launchers, config (0600), profiles, data dir (0750) and the unit", () => {
    assert.ok(existsSync(join(root, "opt/agentlab/dist/src/daemon/main.js")));
    assert.ok(existsSync(join(root, "opt/agentlab/node_modules/better-sqlite3")));
    assert.ok(!existsSync(join(root, "opt/agentlab/node_modules/typescript")), "dev dependencies are pruned");
    assert.equal(statSync(join(root, "etc/agentlab/config.yaml")).mode & 0o777, 0o600);
    assert.equal(statSync(join(root, "etc/agentlab")).mode & 0o777, 0o750);
    assert.equal(statSync(join(root, "etc/agentlab/keys")).mode & 0o777, 0o700);
    assert.ok(
      existsSync(join(root, "opt/agentlab/scripts/guest/agent-runner.sh")),
      "the guest runner is installed",
    );
    assert.equal(statSync(join(root, "var/lib/agentlab")).mode & 0o777, 0o750);
    assert.ok(existsSync(join(root, "etc/agentlab/profiles/yolo-ephemeral.yaml")));
    assert.ok(existsSync(join(root, "etc/systemd/system/agentlabd.service")));
  });

  test("the installed binaries run: a daemon from the install answers the installed CLI", async () => {
    const host: HostDir = makeHostDir();
    try {
      const bin = join(root, "opt/agentlab/bin");
      const daemon = await startDaemon(host, [], join(bin, "agentlabd"));
      const status = spawnSync(
        process.execPath,
        [join(bin, "agentlab"), "--socket", host.socketPath, "--json", "status"],
        {
          encoding: "utf8",
        },
      );
      assert.equal(status.status, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).profiles, 3);
      await daemon.stop();
    } finally {
      host.cleanup();
    }
  });

  test("a reinstall keeps an operator's config and profiles", () => {
    writeFileSync(join(root, "etc/agentlab/config.yaml"), "log_level: debug\n", { mode: 0o600 });
    const out = install(root);
    assert.match(out, /kept existing .*config\.yaml/);
    assert.equal(readFileSync(join(root, "etc/agentlab/config.yaml"), "utf8"), "log_level: debug\n");
  });

  test("the unit file passes systemd-analyze verify", (t) => {
    if (spawnSync("systemd-analyze", ["--version"]).status !== 0)
      return t.skip("systemd-analyze is not installed");
    // verify insists that ExecStart exists; point it at the installed launcher.
    const unit = readFileSync(join(root, "etc/systemd/system/agentlabd.service"), "utf8").replace(
      "/usr/local/bin/agentlabd",
      join(root, "opt/agentlab/bin/agentlabd"),
    );
    const path = join(root, "agentlabd.service");
    writeFileSync(path, unit);
    const result = spawnSync("systemd-analyze", ["verify", path], { encoding: "utf8" });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stderr.trim(), "");
  });

  test("uninstall keeps data unless --purge", () => {
    writeFileSync(join(root, "var/lib/agentlab/agentlab.db"), "data");
    const kept = install(root, "--uninstall");
    assert.match(kept, /kept .*etc\/agentlab and .*var\/lib\/agentlab/);
    assert.ok(!existsSync(join(root, "opt/agentlab")));
    assert.ok(!existsSync(join(root, "etc/systemd/system/agentlabd.service")));
    assert.equal(readFileSync(join(root, "var/lib/agentlab/agentlab.db"), "utf8"), "data");
    install(root, "--uninstall", "--purge");
    assert.ok(!existsSync(join(root, "var/lib/agentlab")));
    assert.ok(!existsSync(join(root, "etc/agentlab")));
  });
});

test("install without --root refuses to run as non-root", (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root to drop to another user");
  const drop = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "sh", INSTALL], {
    encoding: "utf8",
  });
  assert.equal(drop.status, 1);
  assert.match(drop.stderr, /run as root/);
});
