import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { applyFixes, checksText, requireRoot, socketCheck } from "../../src/cli/commands/init.js";
import {
  bridgeCheck,
  type CommandRunner,
  diskSpaceCheck,
  type HostEnv,
  type HostSettings,
  hostChecks,
  ipForwardCheck,
  nftablesCheck,
  nftCommand,
  setupCommand,
  unscriptableSettings,
} from "../../src/cli/init/host-checks.js";
import { AgentlabError } from "../../src/protocol/index.js";

const SETTINGS: HostSettings = {
  bridge: "vmbr1",
  bridge_address: "10.77.0.1/16",
  agent_subnet: "10.77.0.0/16",
  guest_ports: [8844, 8846],
  data_dir: "/var/lib/agentlab",
  socket_path: "/run/agentlab/agentlabd.sock",
};

const roots: string[] = [];
after(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

function tempRoot(ipForward?: string): string {
  const root = mkdtempSync(join(tmpdir(), "agentlab-init-"));
  roots.push(root);
  if (ipForward !== undefined) {
    mkdirSync(join(root, "proc/sys/net/ipv4"), { recursive: true });
    writeFileSync(join(root, "proc/sys/net/ipv4/ip_forward"), `${ipForward}\n`);
  }
  return root;
}

const IP_OK = JSON.stringify([
  { ifname: "vmbr1", addr_info: [{ family: "inet", local: "10.77.0.1", prefixlen: 16 }] },
]);
const TABLES = "table inet agentlab\ntable ip agentlab_nat\ntable bridge agentlab_l2\n";

/** A runner that answers ip and nft from a table, and records what was run. */
function fakeRunner(answers: { ip?: Partial<ReturnType<typeof ok>>; nft?: Partial<ReturnType<typeof ok>> }) {
  const calls: string[] = [];
  const run: CommandRunner = async (command, args) => {
    calls.push([command, ...args].join(" "));
    const answer = command === "ip" ? answers.ip : answers.nft;
    return { code: 0, stdout: "", stderr: "", ...answer };
  };
  return { run, calls };
}
function ok(stdout: string) {
  return { code: 0, stdout, stderr: "" };
}

function hostEnv(
  root: string,
  run: CommandRunner,
  free = { bsize: 4096, blocks: 1e8, bavail: 5e7 },
): HostEnv {
  return {
    root,
    ip: "ip",
    nft: "nft",
    run,
    statfs: () => free,
    scriptsDir: "/opt/agentlab/scripts/net",
    cwd: "/opt/agentlab",
  };
}

describe("agentlab init host checks", () => {
  test("ip_forward reads proc/sys under the root: 1 is ok, 0 fails with the setup script as fix", () => {
    const on = ipForwardCheck(hostEnv(tempRoot("1"), fakeRunner({}).run), SETTINGS);
    assert.equal(on.status, "ok");
    const off = ipForwardCheck(hostEnv(tempRoot("0"), fakeRunner({}).run), SETTINGS);
    assert.equal(off.status, "fail");
    assert.match(off.detail, /ip_forward = 0/);
    assert.equal(off.fix, "sudo scripts/net/setup_vmbr1.sh --apply");
    const missing = ipForwardCheck(hostEnv(tempRoot(), fakeRunner({}).run), SETTINGS);
    assert.equal(missing.status, "fail");
    assert.match(missing.detail, /ENOENT/);
  });

  test("bridge_vmbr1: missing device, wrong address and the right address", async () => {
    const root = tempRoot("1");
    const missing = fakeRunner({ ip: { code: 1, stderr: 'Device "vmbr1" does not exist.\n' } });
    const gone = await bridgeCheck(hostEnv(root, missing.run), SETTINGS);
    assert.deepEqual(missing.calls, ["ip -j addr show vmbr1"]);
    assert.equal(gone.name, "bridge_vmbr1");
    assert.equal(gone.status, "fail");
    assert.match(gone.detail, /Device "vmbr1" does not exist/);
    assert.equal(gone.fix, "sudo scripts/net/setup_vmbr1.sh --apply");

    const other = JSON.stringify([
      { ifname: "vmbr1", addr_info: [{ family: "inet", local: "192.168.5.1", prefixlen: 24 }] },
    ]);
    const wrong = await bridgeCheck(hostEnv(root, fakeRunner({ ip: ok(other) }).run), SETTINGS);
    assert.equal(wrong.status, "fail");
    assert.match(wrong.detail, /192\.168\.5\.1\/24, expected 10\.77\.0\.1\/16/);

    const custom = { ...SETTINGS, bridge_address: "10.88.0.1/16", agent_subnet: "10.88.0.0/16" };
    const customCheck = await bridgeCheck(hostEnv(root, fakeRunner({ ip: ok(IP_OK) }).run), custom);
    assert.equal(customCheck.fix, "sudo scripts/net/setup_vmbr1.sh --apply --address 10.88.0.1/16");

    const good = await bridgeCheck(hostEnv(root, fakeRunner({ ip: ok(IP_OK) }).run), SETTINGS);
    assert.equal(good.status, "ok");
  });

  test("a command that is not installed says which package to install", async () => {
    const run: CommandRunner = async () => ({ code: 127, stdout: "", stderr: "", spawnError: "ENOENT" });
    const bridge = await bridgeCheck(hostEnv(tempRoot("1"), run), SETTINGS);
    assert.equal(bridge.fix, "apt-get install iproute2");
    const nft = await nftablesCheck(hostEnv(tempRoot("1"), run), SETTINGS);
    assert.equal(nft.fix, "apt-get install nftables");
  });

  test("nftables: every table present is ok, a missing one fails with apply.sh, non-root only warns", async () => {
    const root = tempRoot("1");
    const all = await nftablesCheck(hostEnv(root, fakeRunner({ nft: ok(TABLES) }).run), SETTINGS);
    assert.equal(all.status, "ok");
    const partial = await nftablesCheck(
      hostEnv(root, fakeRunner({ nft: ok("table inet agentlab\ntable inet filter\n") }).run),
      SETTINGS,
    );
    assert.equal(partial.status, "fail");
    assert.equal(partial.detail, "missing table ip agentlab_nat, bridge agentlab_l2");
    assert.equal(partial.fix, "sudo scripts/net/apply.sh --apply");
    const denied = await nftablesCheck(
      hostEnv(root, fakeRunner({ nft: { code: 1, stderr: "Error: Operation not permitted\n" } }).run),
      SETTINGS,
    );
    assert.equal(denied.status, "warn");
    assert.equal(denied.fix, "sudo agentlab init");
  });

  test("disk_space warns under 5 GiB or 10% free", () => {
    const root = tempRoot("1");
    const plenty = diskSpaceCheck(hostEnv(root, fakeRunner({}).run), SETTINGS);
    assert.equal(plenty.status, "ok");
    const low = diskSpaceCheck(
      hostEnv(root, fakeRunner({}).run, { bsize: 4096, blocks: 1e8, bavail: 1e6 }),
      SETTINGS,
    );
    assert.equal(low.status, "warn");
    assert.match(low.detail, /under 10% or 5 GiB/);
  });

  test("hostChecks runs them in order; a script outside the current directory is shown by its full path", async () => {
    const host = {
      ...hostEnv(tempRoot("1"), fakeRunner({ ip: ok(IP_OK), nft: ok("") }).run),
      cwd: "/home/me",
    };
    const checks = await hostChecks(host, SETTINGS);
    assert.deepEqual(
      checks.map((c) => `${c.name}:${c.status}`),
      ["bridge_vmbr1:ok", "ip_forward:ok", "nftables:fail", "disk_space:ok"],
    );
    assert.equal(checks[2]!.fix, "sudo /opt/agentlab/scripts/net/apply.sh --apply");
  });

  test("socket check: an unreachable daemon fails with the invalid-socket explanation", () => {
    const failure = new AgentlabError(
      "DAEMON_UNREACHABLE",
      "invalid socket path /x.sock: no such socket file",
    );
    const check = socketCheck("/x.sock", failure);
    assert.equal(check.status, "fail");
    assert.match(check.detail, /invalid socket path/);
    assert.equal(check.fix, "systemctl start agentlabd");
    const stat = () => ({ mode: 0o140666, gid: 0 }) as never;
    const loose = socketCheck("/x.sock", undefined, stat, 995);
    assert.equal(loose.status, "warn");
    assert.match(loose.detail, /mode 0666, expected 0660; group 0, expected agentlab/);
    const good = socketCheck("/x.sock", undefined, () => ({ mode: 0o140660, gid: 995 }) as never, 995);
    assert.equal(good.status, "ok");
  });

  test("--apply refuses a non-root user on the real root, and allows a temp root", () => {
    const real = hostEnv("/", fakeRunner({}).run);
    assert.throws(
      () => requireRoot(real, 1000),
      (error: AgentlabError) => {
        assert.equal(error.code, "ROOT_REQUIRED");
        assert.match(error.message, /must run as root/);
        assert.match(error.hint, /sudo agentlab init --apply/);
        return true;
      },
    );
    requireRoot(real, 0);
    requireRoot(hostEnv(tempRoot(), fakeRunner({}).run), 1000);
  });

  test("applyFixes runs setup_vmbr1 for bridge/ip_forward and apply.sh for nftables, passing --force", async () => {
    const ran: string[] = [];
    const run = async (script: string, args: string[]) => {
      ran.push([script, ...args].join(" "));
      return 0;
    };
    const host = hostEnv("/", fakeRunner({}).run);
    const failing = [
      { name: "bridge_vmbr1", status: "ok" as const, detail: "" },
      { name: "ip_forward", status: "fail" as const, detail: "" },
      { name: "nftables", status: "fail" as const, detail: "" },
      { name: "templates", status: "fail" as const, detail: "" },
    ];
    const steps = await applyFixes(failing, SETTINGS, host, true, false, run);
    assert.deepEqual(ran, [
      "/opt/agentlab/scripts/net/setup_vmbr1.sh --apply --force",
      "/opt/agentlab/scripts/net/apply.sh --apply --force",
    ]);
    assert.deepEqual(
      steps.map((s) => s.step),
      ["setup_vmbr1", "apply_nftables"],
    );
    ran.length = 0;
    assert.deepEqual(await applyFixes([failing[0]!, failing[3]!], SETTINGS, host, false, false, run), []);
    assert.deepEqual(ran, []);
  });

  test("settings the scripts would reject get a config fix, not a command, and --apply refuses them", async () => {
    // What a development config derives: bootstrap_listen 127.0.0.1:0, agent_subnet 0.0.0.0/1.
    const dev: HostSettings = {
      ...SETTINGS,
      bridge_address: "127.0.0.1/1",
      agent_subnet: "0.0.0.0/1",
      guest_ports: [0, 8846],
    };
    assert.deepEqual(unscriptableSettings(SETTINGS), []);
    assert.deepEqual(unscriptableSettings(dev), [
      "bridge address 127.0.0.1/1 is not an IPv4 address with a prefix length 8-30",
      "guest-ports: 0 is not a TCP port (1-65535)",
    ]);
    assert.deepEqual(
      unscriptableSettings({ ...SETTINGS, bridge_address: "127.0.0.1/8", agent_subnet: "127.0.0.0/8" }),
      ["bridge address 127.0.0.1 is a loopback address"],
    );
    const host = hostEnv("/", fakeRunner({}).run);
    for (const fix of [setupCommand(host, dev), nftCommand(host, dev)]) {
      assert.doesNotMatch(fix, /--address|--guest-ports|\.sh/, "no script command the script would reject");
      assert.match(
        fix,
        /^config\.yaml does not describe a sandbox bridge .*set bootstrap_listen: 10\.77\.0\.1:8844 and agent_subnet: 10\.77\.0\.0\/16/,
      );
    }
    assert.match(setupCommand(host, SETTINGS), /^sudo \S*scripts\/net\/setup_vmbr1\.sh --apply$/);
    const ran: string[] = [];
    const run = async (script: string) => {
      ran.push(script);
      return 0;
    };
    await assert.rejects(
      applyFixes([{ name: "nftables", status: "fail", detail: "" }], dev, host, false, false, run),
      (error: AgentlabError) => {
        assert.equal(error.code, "USAGE");
        assert.match(
          error.message,
          /^init --apply: the config's network settings cannot be applied: bridge address 127\.0\.0\.1\/1/,
        );
        assert.match(error.hint ?? "", /nothing was changed$/);
        return true;
      },
    );
    assert.deepEqual(ran, [], "no script ran");
  });

  test("checksText prints one line per check and a fix line for each non-ok one", () => {
    const text = checksText([
      { name: "ip_forward", status: "ok", detail: "net.ipv4.ip_forward = 1" },
      {
        name: "templates",
        status: "fail",
        detail: "VM 9000 has no guest agent",
        fix: "qm set 9000 --agent 1",
      },
    ]);
    assert.equal(
      text,
      [
        "ok    ip_forward  net.ipv4.ip_forward = 1",
        "fail  templates   VM 9000 has no guest agent",
        "      fix: qm set 9000 --agent 1",
        "1 ok, 0 warn, 1 fail",
        "",
      ].join("\n"),
    );
  });
});
