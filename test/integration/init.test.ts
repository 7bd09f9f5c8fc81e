import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runCli } from "../helpers/daemon.js";
import { type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect } from "../pvesim/harness.js";

interface Check {
  name: string;
  status: "ok" | "warn" | "fail";
  detail: string;
  fix?: string;
}
interface Report {
  checks: Check[];
  ok: boolean;
  applied?: { step: string; command: string; exit_code: number }[];
}

/**
 * A fake host for the CLI's host-side checks: AGENTLAB_ROOT with proc/sys and etc/network, and `ip` and
 * `nft` stand-ins (AGENTLAB_IP, AGENTLAB_NFT) whose answers FAKE_BRIDGE / FAKE_NFT choose.
 */
function fakeHost() {
  const root = mkdtempSync(join(tmpdir(), "agentlab-init-it-"));
  mkdirSync(join(root, "proc/sys/net/ipv4"), { recursive: true });
  mkdirSync(join(root, "etc/network/interfaces.d"), { recursive: true });
  writeFileSync(
    join(root, "etc/network/interfaces"),
    "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n",
  );
  const bin = join(root, "fakebin");
  mkdirSync(bin);
  writeFileSync(
    join(bin, "ip"),
    `#!/bin/sh
if [ "\${FAKE_BRIDGE:-up}" = missing ]; then echo 'Device "vmbr1" does not exist.' >&2; exit 1; fi
echo '[{"ifname":"vmbr1","operstate":"UNKNOWN","addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":16}]}]'
`,
  );
  writeFileSync(
    join(bin, "nft"),
    `#!/bin/sh
echo "$*" >>"${root}/nft.log"
if [ "$1" = list ] && [ "\${FAKE_NFT:-loaded}" = loaded ]; then
  printf 'table inet filter\\ntable inet agentlab\\ntable ip agentlab_nat\\ntable bridge agentlab_l2\\n'
fi
exit 0
`,
  );
  chmodSync(join(bin, "ip"), 0o755);
  chmodSync(join(bin, "nft"), 0o755);
  const setForward = (value: string) =>
    writeFileSync(join(root, "proc/sys/net/ipv4/ip_forward"), `${value}\n`);
  setForward("1");
  return {
    root,
    setForward,
    env: (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
      AGENTLAB_ROOT: root,
      AGENTLAB_IP: join(bin, "ip"),
      AGENTLAB_NFT: join(bin, "nft"),
      FAKE_BRIDGE: "up",
      FAKE_NFT: "loaded",
      ...extra,
    }),
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}

describe("agentlab init through the CLI against the simulator daemon", () => {
  let h: SimHost;
  let host: ReturnType<typeof fakeHost>;
  before(async () => {
    h = await startSimHost("shell");
    host = fakeHost();
  });
  after(async () => {
    await h.stop();
    host.cleanup();
  });

  const init = (args: string[] = [], env: NodeJS.ProcessEnv = {}, socket = h.host.socketPath) =>
    runCli(["--socket", socket, "init", ...args], { env: host.env(env) });
  async function initJson(args: string[] = [], env: NodeJS.ProcessEnv = {}, socket?: string) {
    const result = await init(["--json", ...args], env, socket);
    return { code: result.code, report: JSON.parse(result.stdout) as Report, stderr: result.stderr };
  }
  const byName = (report: Report, name: string) => {
    const check = report.checks.find((c) => c.name === name);
    assert.ok(check, `check ${name} in ${JSON.stringify(report.checks.map((c) => c.name))}`);
    return check;
  };

  test("a ready host: every check in order, none failing, exit 0", async () => {
    const { code, report, stderr } = await initJson();
    assert.equal(code, 0, `${stderr}\n${JSON.stringify(report, null, 2)}`);
    assert.equal(report.ok, true);
    assert.deepEqual(
      report.checks.map((c) => c.name),
      [
        "bridge_vmbr1",
        "ip_forward",
        "nftables",
        "disk_space",
        "socket",
        "profiles",
        "templates",
        "snippets",
        "backend",
        "privileges",
        "database",
      ],
    );
    for (const name of [
      "bridge_vmbr1",
      "ip_forward",
      "nftables",
      "profiles",
      "templates",
      "snippets",
      "backend",
      "database",
    ]) {
      assert.equal(byName(report, name).status, "ok", JSON.stringify(byName(report, name)));
    }
    assert.match(byName(report, "backend").detail, /Proxmox VE 9\.1\.7/);
    // The shell backend has no token: pvesh runs as root@pam. Said so, not passed off as a check.
    assert.match(
      byName(report, "privileges").detail,
      /^not applicable: the shell backend runs pvesh as root@pam/,
    );
    assert.match(byName(report, "database").detail, /quick_check ok/);

    const text = await init();
    assert.equal(text.code, 0);
    assert.match(text.stdout, /^ok +bridge_vmbr1 +vmbr1 has 10\.77\.0\.1\/16$/m);
    assert.match(text.stdout, /^ok +templates +9000: template, guest agent on, cloud-init drive$/m);
    assert.doesNotMatch(text.stdout, /fix:/);
  });

  test("missing bridge, ip_forward 0 and no nftables tables: each fails with its script, exit 1", async () => {
    host.setForward("0");
    try {
      const result = await init([], { FAKE_BRIDGE: "missing", FAKE_NFT: "empty" });
      assert.equal(result.code, 1, result.stderr);
      assert.match(
        result.stdout,
        /^fail +bridge_vmbr1 +bridge vmbr1 is missing \(Device "vmbr1" does not exist\.\)\n +fix: sudo \S*scripts\/net\/setup_vmbr1\.sh --apply$/m,
      );
      assert.match(
        result.stdout,
        /^fail +ip_forward +net\.ipv4\.ip_forward = 0.*\n +fix: sudo \S*scripts\/net\/setup_vmbr1\.sh --apply$/m,
      );
      assert.match(
        result.stdout,
        /^fail +nftables +missing table inet agentlab, ip agentlab_nat, bridge agentlab_l2\n +fix: sudo \S*scripts\/net\/apply\.sh --apply$/m,
      );
    } finally {
      host.setForward("1");
    }
  });

  test("a template without the guest agent fails with qm set <vmid> --agent 1", async () => {
    await inspect(h.sim.dir, (ctx) => {
      delete ctx.state.vms["9000"]!.config["agent"];
    });
    try {
      const { code, report } = await initJson();
      assert.equal(code, 1);
      assert.equal(report.ok, false);
      const templates = byName(report, "templates");
      assert.equal(templates.status, "fail");
      assert.match(templates.detail, /VM 9000 has no guest agent enabled/);
      assert.equal(templates.fix, "qm set 9000 --agent 1");
      const text = await init();
      assert.match(text.stdout, /^fail +templates .*\n +fix: qm set 9000 --agent 1$/m);
    } finally {
      await inspect(h.sim.dir, (ctx) => {
        ctx.state.vms["9000"]!.config["agent"] = "1";
      });
    }
  });

  test("a snippet storage without snippets content fails with the pvesm set command", async () => {
    let before: string[] = [];
    await inspect(h.sim.dir, (ctx) => {
      const local = ctx.state.storages.find((s) => s.id === "local")!;
      before = [...local.content];
      local.content = local.content.filter((c) => c !== "snippets");
    });
    try {
      const { code, report } = await initJson();
      assert.equal(code, 1);
      const snippets = byName(report, "snippets");
      assert.equal(snippets.status, "fail");
      assert.match(snippets.detail, /storage local does not allow snippets/);
      const content = [...before.filter((c) => c !== "snippets"), "snippets"].join(",");
      assert.equal(snippets.fix, `pvesm set local --content ${content}`);
    } finally {
      await inspect(h.sim.dir, (ctx) => {
        ctx.state.storages.find((s) => s.id === "local")!.content = before;
      });
    }
  });

  test("daemon down: the socket check fails with the invalid-socket explanation, host checks still run", async () => {
    const socket = join(host.root, "no-such.sock");
    const { code, report } = await initJson([], {}, socket);
    assert.equal(code, 1);
    assert.equal(report.ok, false);
    assert.deepEqual(
      report.checks.map((c) => c.name),
      ["bridge_vmbr1", "ip_forward", "nftables", "disk_space", "socket"],
    );
    assert.equal(byName(report, "bridge_vmbr1").status, "ok");
    const socketCheck = byName(report, "socket");
    assert.equal(socketCheck.status, "fail");
    assert.match(socketCheck.detail, /invalid socket path .*no-such\.sock: no such socket file/);
    assert.equal(socketCheck.fix, "systemctl start agentlabd");
    const text = await init([], {}, socket);
    assert.match(text.stdout, /^fail +socket +invalid socket path .*\n +fix: systemctl start agentlabd$/m);
  });

  test("--apply on a temp root runs both scripts for the failing network checks, then checks again", async () => {
    const { code, report, stderr } = await initJson(["--apply"], {
      FAKE_BRIDGE: "missing",
      FAKE_NFT: "empty",
    });
    assert.ok(report.applied, stderr);
    assert.deepEqual(
      report.applied.map((s) => [s.step, s.exit_code]),
      [
        ["setup_vmbr1", 0],
        ["apply_nftables", 0],
      ],
      stderr,
    );
    assert.match(report.applied[0]!.command, /setup_vmbr1\.sh --apply$/);
    assert.ok(existsSync(join(host.root, "etc/network/interfaces.d/agentlab-vmbr1.cfg")));
    assert.match(
      readFileSync(join(host.root, "etc/sysctl.d/99-agentlab.conf"), "utf8"),
      /net\.ipv4\.ip_forward = 1/,
    );
    assert.ok(existsSync(join(host.root, "etc/nftables.d/agentlab.nft")));
    // The fakes still say "missing": the re-run reports it, and the exit status follows.
    assert.equal(code, 1);
    assert.equal(byName(report, "bridge_vmbr1").status, "fail");
    // Proxmox-side checks are never "applied".
    assert.equal(byName(report, "templates").status, "ok");
  });

  test("--force without --apply is a usage error", async () => {
    const result = await init(["--force"]);
    assert.equal(result.code, 2);
    assert.match(result.stderr + result.stdout, /--force only makes sense with --apply/);
  });
});
