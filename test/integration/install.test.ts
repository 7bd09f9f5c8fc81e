import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type HostDir, makeHostDir, startDaemon } from "../helpers/daemon.js";
import { REPO_ROOT } from "../helpers/paths.js";

const INSTALL = join(REPO_ROOT, "scripts", "install.sh");
const HOUSEKEEPING_UNITS = [
  "agentlab-maintenance.service",
  "agentlab-maintenance.timer",
  "agentlab-backup.service",
  "agentlab-backup.timer",
];

function install(root: string, ...args: string[]): string {
  return execFileSync("sh", [INSTALL, "--root", root, ...args], { encoding: "utf8" });
}

describe("scripts/install.sh into a temporary root", () => {
  let root: string;
  let firstInstall: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), "agentlab-install-"));
    firstInstall = install(root);
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
    for (const unit of HOUSEKEEPING_UNITS)
      assert.ok(existsSync(join(root, "etc/systemd/system", unit)), unit);
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

  /** systemd-analyze verify of the installed unit, with a drop-in's lines appended (systemd merges them). */
  const verifyUnit = (dropin = ""): ReturnType<typeof spawnSync> => {
    // verify insists that ExecStart exists; point it at the installed launcher.
    const unit = readFileSync(join(root, "etc/systemd/system/agentlabd.service"), "utf8").replace(
      "/usr/local/bin/agentlabd",
      join(root, "opt/agentlab/bin/agentlabd"),
    );
    const path = join(root, "agentlabd.service");
    writeFileSync(path, `${unit}\n${dropin}`);
    return spawnSync("systemd-analyze", ["verify", path], { encoding: "utf8" });
  };

  test("the maintenance and backup timers and services pass systemd-analyze verify", (t) => {
    if (spawnSync("systemd-analyze", ["--version"]).status !== 0)
      return t.skip("systemd-analyze is not installed");
    const dir = join(root, "verify-timers");
    mkdirSync(dir, { recursive: true });
    for (const unit of HOUSEKEEPING_UNITS) {
      // verify insists that ExecStart exists; point it at the installed launcher.
      const text = readFileSync(join(root, "etc/systemd/system", unit), "utf8").replace(
        "/usr/local/bin/agentlab ",
        `${join(root, "opt/agentlab/bin/agentlab")} `,
      );
      writeFileSync(join(dir, unit), text);
    }
    // Requisite=/After=agentlabd.service: verify loads the daemon's unit from the same directory.
    const daemonUnit = readFileSync(join(root, "etc/systemd/system/agentlabd.service"), "utf8").replace(
      "/usr/local/bin/agentlabd",
      join(root, "opt/agentlab/bin/agentlabd"),
    );
    writeFileSync(join(dir, "agentlabd.service"), daemonUnit);
    const result = spawnSync("systemd-analyze", ["verify", ...HOUSEKEEPING_UNITS.map((u) => join(dir, u))], {
      encoding: "utf8",
    });
    assert.equal(result.status, 0, String(result.stderr));
    assert.equal(String(result.stderr).trim(), "");
    const maintenance = readFileSync(join(root, "etc/systemd/system/agentlab-maintenance.service"), "utf8");
    assert.match(maintenance, /^ExecStart=\/usr\/local\/bin\/agentlab maintenance run$/m);
    const backup = readFileSync(join(root, "etc/systemd/system/agentlab-backup.service"), "utf8");
    assert.match(
      backup,
      /^ExecStart=\/usr\/local\/bin\/agentlab db backup --out \/var\/backups\/agentlab\/ --keep 7$/m,
    );
  });

  test("the unit file passes systemd-analyze verify", (t) => {
    if (spawnSync("systemd-analyze", ["--version"]).status !== 0)
      return t.skip("systemd-analyze is not installed");
    const result = verifyUnit();
    assert.equal(result.status, 0, String(result.stderr));
    assert.equal(String(result.stderr).trim(), "");
  });

  test("the shell backend gets the unsandboxed unit; the api backend adds the sandbox drop-in, removed again on a switch back", (t) => {
    const dropin = join(root, "etc/systemd/system/agentlabd.service.d/api-backend.conf");
    assert.ok(!existsSync(dropin), "the default (shell) install has no drop-in");
    assert.match(firstInstall, /shell backend: agentlabd runs unsandboxed/);
    const config = join(root, "etc/agentlab/config.yaml");
    const before = readFileSync(config, "utf8");
    // An existing config.yaml decides; --backend may only agree with it (no key: shell).
    const contradicted = spawnSync("sh", [INSTALL, "--root", root, "--backend", "api"], { encoding: "utf8" });
    assert.equal(contradicted.status, 2);
    assert.match(contradicted.stderr, /--backend api contradicts proxmox_backend: shell/);
    assert.ok(!existsSync(dropin), "a refused install changes nothing");
    writeFileSync(config, "proxmox_backend: api\n");
    const api = install(root, "--backend", "api");
    assert.match(api, /api backend: agentlabd runs sandboxed/);
    assert.equal(
      readFileSync(dropin, "utf8"),
      readFileSync(join(REPO_ROOT, "systemd/agentlabd-api-backend.conf"), "utf8"),
    );
    if (spawnSync("systemd-analyze", ["--version"]).status === 0) {
      const result = verifyUnit(readFileSync(dropin, "utf8"));
      assert.equal(result.status, 0, String(result.stderr));
      assert.equal(String(result.stderr).trim(), "");
    } else t.diagnostic("systemd-analyze is not installed: the drop-in was not verified");
    writeFileSync(config, "proxmox_backend: shell\n");
    assert.match(install(root), /removed the api backend's sandbox drop-in/);
    assert.ok(!existsSync(dropin));
    writeFileSync(config, "proxmox_backend: vsphere\n");
    const bad = spawnSync("sh", [INSTALL, "--root", root], { encoding: "utf8" });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /proxmox_backend in .*config\.yaml is 'vsphere'; expected shell or api/);
    writeFileSync(config, before, { mode: 0o600 });
    const badFlag = spawnSync("sh", [INSTALL, "--root", root, "--backend", "pve"], { encoding: "utf8" });
    assert.equal(badFlag.status, 2);
    assert.match(badFlag.stderr, /--backend must be shell or api, not 'pve'/);
  });

  test("--help prints the whole header: every form of the command, the layout and --root", () => {
    const help = spawnSync("sh", [INSTALL, "--help"], { encoding: "utf8" });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /^Install agentlab on a Proxmox VE host/);
    assert.match(help.stdout, /--uninstall \[--purge\]/);
    assert.match(help.stdout, /^--root installs under another directory/m);
    assert.match(help.stdout, /^systemd is not touched\.$/m, "the last line of the header");
    assert.doesNotMatch(help.stdout, /set -eu/);
  });

  test("the man page is installed and renders without a roff warning", (t) => {
    const page = join(root, "usr/local/share/man/man1/agentlab.1");
    assert.equal(readFileSync(page, "utf8"), readFileSync(join(REPO_ROOT, "docs/agentlab.1"), "utf8"));
    if (spawnSync("groff", ["--version"]).status !== 0) return t.skip("groff is not installed");
    const render = spawnSync("groff", ["-man", "-Tutf8", "-ww", "-z", page], { encoding: "utf8" });
    assert.equal(render.status, 0);
    assert.equal(render.stderr, "");
  });

  test("uninstall keeps data unless --purge", () => {
    writeFileSync(join(root, "var/lib/agentlab/agentlab.db"), "data");
    const kept = install(root, "--uninstall");
    assert.match(kept, /kept .*etc\/agentlab and .*var\/lib\/agentlab/);
    assert.ok(!existsSync(join(root, "opt/agentlab")));
    assert.ok(!existsSync(join(root, "etc/systemd/system/agentlabd.service")));
    for (const unit of HOUSEKEEPING_UNITS)
      assert.ok(!existsSync(join(root, "etc/systemd/system", unit)), unit);
    assert.equal(readFileSync(join(root, "var/lib/agentlab/agentlab.db"), "utf8"), "data");
    assert.ok(!existsSync(join(root, "usr/local/share/man/man1/agentlab.1")));
    mkdirSync(join(root, "var/backups/agentlab"), { recursive: true });
    const purged = install(root, "--uninstall", "--purge");
    assert.match(purged, /kept the database backups in .*var\/backups\/agentlab/);
    assert.ok(existsSync(join(root, "var/backups/agentlab")));
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
