import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type HostDir, type RunningDaemon, runCli, startDaemon, writeConfig } from "../helpers/daemon.js";
import { PROFILES_DIR, REPO_ROOT } from "../helpers/paths.js";
import { jsonCli } from "../helpers/simhost.js";
import { createSim, type Sim } from "../pvesim/harness.js";
import { makeHostLayout } from "../pvesim/host-files.js";
import { namespaceCommand, parseService, readUnit, type ServiceSettings } from "./unit-namespace.js";

/**
 * Defect 1 of issue 11: the shipped systemd unit must let the shell backend work. The REAL daemon runs
 * with the shell backend inside a mount namespace and capability bounding set built from the unit
 * file's own settings (unit-namespace.ts), the simulator's pvesh/qm run inside it as its children and
 * write the node's files (task logs, qemu-server lock and run files, cloud-init run dir) below the
 * mapped host root, and `sandbox new`, `workspace create` and `sandbox destroy` must pass. The unit as
 * it was at commit 1e1de3b (a fixture copy: CI may clone shallowly) must fail there with Proxmox's
 * read-only-file-system error, and so must the shell backend under the api backend's sandbox drop-in.
 */

const UNIT = join(REPO_ROOT, "systemd", "agentlabd.service");
const API_DROPIN = join(REPO_ROOT, "systemd", "agentlabd-api-backend.conf");
const OLD_UNIT = join(REPO_ROOT, "test", "system", "fixtures", "agentlabd.service.1e1de3b");

/** The real paths the daemon and the simulator's pvesh/qm write, mapped below the host root. */
const HOST_PATHS = [
  "/var/log/pve",
  "/run/lock/qemu-server",
  "/run/qemu-server",
  "/run/pve",
  "/var/lib/agentlab",
  "/run/agentlab",
  "/var/log/agentlab",
  "/tmp",
  "/var/tmp",
];

function whyNotRunnable(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (mount namespaces)";
  for (const tool of ["unshare", "setpriv", "findmnt"]) {
    if (spawnSync(tool, ["--version"]).status !== 0) return `${tool} (util-linux) is not installed`;
  }
  const probe = spawnSync("unshare", ["--mount", "--propagation", "private", "true"], { encoding: "utf8" });
  if (probe.status !== 0) return `unshare --mount does not work here: ${probe.stderr.trim()}`;
  return undefined;
}

interface UnitRig {
  sim: Sim;
  daemon: RunningDaemon;
  host: HostDir;
  root: string;
  json<T = Record<string, unknown>>(
    args: string[],
  ): Promise<{ code: number | null; body: T; stderr: string }>;
  stop(): Promise<void>;
}

async function startUnderUnit(settings: ServiceSettings): Promise<UnitRig> {
  const sim = createSim({
    knobs: { clone_ms: 50, start_ms: 30, stop_ms: 20, shutdown_ms: 20, agent_ready_ms: 60, task_ms: 20 },
  });
  const root = mkdtempSync(join(tmpdir(), "agentlab-unitns-"));
  for (const p of HOST_PATHS) mkdirSync(join(root, p), { recursive: true });
  makeHostLayout(root);
  const etc = join(root, "etc/agentlab");
  mkdirSync(etc, { recursive: true });
  cpSync(PROFILES_DIR, join(etc, "profiles"), { recursive: true });
  const configPath = join(etc, "config.yaml");
  writeConfig(
    configPath,
    [
      `profiles_dir: ${join(etc, "profiles")}`,
      `data_dir: ${join(root, "var/lib/agentlab")}`,
      `run_dir: ${join(root, "run/agentlab")}`,
      "log_level: debug",
      "proxmox_backend: shell",
      `snippets_dir: ${join(sim.dir, "storage", "local", "snippets")}`,
      "snippet_storage: local",
      "provisioning_timeout: 60s",
      "proxmox_command_timeout: 60s",
      "",
    ].join("\n"),
  );
  const host: HostDir = {
    root,
    configPath,
    socketPath: join(root, "run/agentlab/agentlabd.sock"),
    dbPath: join(root, "var/lib/agentlab/agentlab.db"),
    profilesDir: join(etc, "profiles"),
    env: {
      PATH: sim.env.PATH,
      PVESIM_DIR: sim.dir,
      PVESIM_NODE_BIN: process.execPath,
      PVESIM_HOST_ROOT: root,
      TMPDIR: join(root, "tmp"),
    },
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
  // The simulator's directory is Proxmox's own state: pmxcfs (/etc/pve) and the storages (/var/lib/vz).
  const plan = namespaceCommand(
    settings,
    root,
    HOST_PATHS,
    [{ dir: sim.dir, standsFor: ["/etc/pve", "/var/lib/vz"] }],
    [],
  );
  let daemon: RunningDaemon;
  try {
    daemon = await startDaemon(host, [], undefined, plan.command);
  } catch (err) {
    host.cleanup();
    sim.cleanup();
    throw err;
  }
  const cli = (args: string[]) => runCli(["--socket", host.socketPath, ...args]);
  return {
    sim,
    daemon,
    host,
    root,
    json: jsonCli(cli),
    async stop() {
      await daemon.stop();
      host.cleanup();
      sim.cleanup();
    },
  };
}

describe("the shipped unit leaves a VM started through pvesh an ordinary host process", () => {
  test("the shell backend's unit has no mount namespace, capability, no_new_privs or seccomp restriction", () => {
    assert.deepEqual(readUnit(UNIT).restrictions, []);
  });

  test("the api backend's drop-in sandboxes (and the unit at 1e1de3b did, for both backends)", () => {
    assert.ok(readUnit(UNIT, API_DROPIN).restrictions.includes("ProtectSystem=strict"));
    assert.ok(readUnit(OLD_UNIT).restrictions.includes("ProtectSystem=strict"));
  });

  test("a unit setting the namespace model does not know is refused, not ignored", () => {
    assert.throws(
      () => parseService("[Service]\nProtectProc=invisible\n"),
      /unit setting ProtectProc= is not modelled/,
    );
  });
});

interface SandboxBody {
  vmid: number;
  state: string;
}

const skip = whyNotRunnable();

describe("the shell-backend daemon in a namespace built from the shipped unit", { skip }, () => {
  let rig: UnitRig;
  before(async () => {
    rig = await startUnderUnit(readUnit(UNIT));
  });
  after(async () => rig?.stop());

  test("sandbox new, workspace create and sandbox destroy pass, and pvesh wrote the node's files", async () => {
    const made = await rig.json<SandboxBody>(["sandbox", "new", "--profile", "yolo-ephemeral"]);
    assert.equal(
      made.code,
      0,
      `${JSON.stringify(made.body)}\n${made.stderr}\n${rig.daemon.output().stdout.slice(-3000)}`,
    );
    assert.equal(made.body.state, "RUNNING");
    const vmid = made.body.vmid;

    const ws = await rig.json(["workspace", "create", "--name", "w1", "--size", "1G"]);
    assert.equal(ws.code, 0, JSON.stringify(ws.body));

    const destroyed = await rig.json<SandboxBody>(["sandbox", "destroy", String(vmid)]);
    assert.equal(destroyed.code, 0, JSON.stringify(destroyed.body));
    assert.equal(destroyed.body.state, "DESTROYED");

    // The writes really happened where Proxmox makes them, through the namespace's mapped paths.
    const logs = readdirSync(join(rig.root, "var/log/pve/tasks")).flatMap((d) =>
      readdirSync(join(rig.root, "var/log/pve/tasks", d)),
    );
    assert.ok(
      logs.some((l) => l.includes(":qmclone:")),
      `a clone task log among ${logs.join(", ")}`,
    );
    assert.ok(
      logs.some((l) => l.includes(":qmstart:")),
      "a start task log",
    );
    assert.ok(existsSync(join(rig.root, `run/lock/qemu-server/lock-${vmid}.conf`)));
    // The pid file itself goes when the VM stops (QEMU removes its -pidfile at exit); its directory stays.
    assert.ok(existsSync(join(rig.root, "run/qemu-server")));
    assert.ok(existsSync(join(rig.root, `run/pve/cloudinit/${vmid}`)));
  });
});

/** `sandbox new` under a unit that sandboxes the shell backend fails with Proxmox's read-only error. */
async function assertReadOnlyFailure(settings: ServiceSettings): Promise<void> {
  const rig = await startUnderUnit(settings);
  try {
    const made = await rig.json<{ error?: { message?: string }; message?: string }>([
      "sandbox",
      "new",
      "--profile",
      "yolo-ephemeral",
    ]);
    assert.notEqual(made.code, 0, `sandbox new passed: ${JSON.stringify(made.body)}`);
    const everything = `${JSON.stringify(made.body)}\n${made.stderr}\n${rig.daemon.output().stdout}`;
    assert.match(
      everything,
      /unable to create file '\/var\/log\/pve\/tasks\/[0-9A-F]\/UPID:[^']+' - Read-only file system/,
    );
    assert.equal(
      readdirSync(join(rig.root, "var/log/pve/tasks")).flatMap((d) =>
        readdirSync(join(rig.root, "var/log/pve/tasks", d)),
      ).length,
      0,
      "no task log could be written",
    );
  } finally {
    await rig.stop();
  }
}

describe("the regression guard: units that sandbox the shell backend fail it", { skip }, () => {
  test("the unit as shipped at 1e1de3b (fixture copy): the first clone fails on /var/log/pve/tasks", async () => {
    await assertReadOnlyFailure(readUnit(OLD_UNIT));
  });

  test("the shipped unit with the api backend's drop-in, used with the shell backend, fails the same way", async () => {
    await assertReadOnlyFailure(readUnit(UNIT, API_DROPIN));
  });

  test("the fixture is the unit of 1e1de3b, byte for byte where it matters", () => {
    const text = readFileSync(OLD_UNIT, "utf8");
    assert.match(text, /^ProtectSystem=strict$/m);
    assert.match(
      text,
      /^ReadWritePaths=\/etc\/pve \/var\/lib\/vz \/var\/lib\/agentlab \/run\/agentlab \/var\/log\/agentlab$/m,
    );
  });
});
