/**
 * The host scripts under scripts/net, run for real with sh against a temporary root directory: nothing
 * here touches the machine's network (apply.sh gets a fake nft; smoke_test.sh a fake sandbox).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { renderRuleset } from "../../src/daemon/network/nft.js";
import { REPO_ROOT } from "../helpers/paths.js";

const SETUP = join(REPO_ROOT, "scripts/net/setup_vmbr1.sh");
const APPLY = join(REPO_ROOT, "scripts/net/apply.sh");
const SMOKE = join(REPO_ROOT, "scripts/net/smoke_test.sh");
const AGENT_NAT = join(REPO_ROOT, "scripts/net/agent_nat.nft");
const IS_ROOT = process.getuid?.() === 0;

function sh(script: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  const result = spawnSync("sh", [script, ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { PATH: process.env["PATH"], HOME: process.env["HOME"], TMPDIR: tmpdir(), ...env },
  });
  if (result.error) throw result.error;
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

const STANZA = `# Managed by agentlab (scripts/net/setup_vmbr1.sh): the sandbox bridge. It has no ports; sandboxes
# reach the outside only through this host (NAT and the agentlab nftables ruleset, scripts/net/apply.sh).
auto vmbr1
iface vmbr1 inet static
\taddress 10.77.0.1/16
\tbridge-ports none
\tbridge-stp off
\tbridge-fd 0
`;
const SYSCTL = `# Managed by agentlab (scripts/net/setup_vmbr1.sh): this host routes (NATs) the sandboxes' traffic.
net.ipv4.ip_forward = 1
`;
const PVE_INTERFACES = `auto lo
iface lo inet loopback

iface eno1 inet manual

auto vmbr0
iface vmbr0 inet static
\taddress 192.168.1.10/24
\tgateway 192.168.1.1
\tbridge-ports eno1
\tbridge-stp off
\tbridge-fd 0

source /etc/network/interfaces.d/*
`;

describe("network scripts: setup_vmbr1.sh", () => {
  let dir = "";
  let n = 0;
  /** A fresh fake root with /etc/network/interfaces. */
  function root(interfaces = PVE_INTERFACES): string {
    const path = join(dir, `root${++n}`);
    mkdirSync(join(path, "etc/network"), { recursive: true });
    writeFileSync(join(path, "etc/network/interfaces"), interfaces);
    return path;
  }
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-setup-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("dry run by default: prints the stanza and the sysctl file, writes nothing", () => {
    const r = root();
    const result = sh(SETUP, [], { AGENTLAB_ROOT: r });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /would write .*\/etc\/network\/interfaces\.d\/agentlab-vmbr1\.cfg:/);
    assert.match(result.stdout, /^ {4}\taddress 10\.77\.0\.1\/16$/m);
    assert.match(result.stdout, /would write .*\/etc\/sysctl\.d\/99-agentlab\.conf:/);
    assert.match(result.stdout, /dry run: nothing changed \(rerun with --apply\)/);
    assert.equal(existsSync(join(r, "etc/network/interfaces.d")), false);
    assert.equal(existsSync(join(r, "etc/sysctl.d")), false);
  });

  it("--apply writes interfaces.d/agentlab-vmbr1.cfg and 99-agentlab.conf; a second run changes nothing", () => {
    const r = root();
    const first = sh(SETUP, ["--apply", "--root", r]);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(readFileSync(join(r, "etc/network/interfaces.d/agentlab-vmbr1.cfg"), "utf8"), STANZA);
    assert.equal(readFileSync(join(r, "etc/sysctl.d/99-agentlab.conf"), "utf8"), SYSCTL);
    assert.equal(readFileSync(join(r, "etc/network/interfaces"), "utf8"), PVE_INTERFACES);
    assert.match(first.stdout, /not touching the running system/);
    const second = sh(SETUP, ["--apply"], { AGENTLAB_ROOT: r });
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /bridge stanza .*: unchanged/);
    assert.match(second.stdout, /sysctl .*: unchanged/);
    assert.doesNotMatch(second.stdout, /wrote/);
  });

  it("refuses to overwrite differing content without --force, and shows the difference", () => {
    const r = root();
    assert.equal(sh(SETUP, ["--apply", "--root", r]).code, 0);
    const refused = sh(SETUP, ["--apply", "--root", r, "--address", "10.78.0.1/16"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /refusing: .*agentlab-vmbr1\.cfg differs .*--force/);
    assert.match(refused.stderr, /^-\taddress 10\.77\.0\.1\/16$/m);
    assert.match(refused.stderr, /^\+\taddress 10\.78\.0\.1\/16$/m);
    assert.equal(readFileSync(join(r, "etc/network/interfaces.d/agentlab-vmbr1.cfg"), "utf8"), STANZA);

    const forced = sh(SETUP, ["--apply", "--root", r, "--address", "10.78.0.1/16", "--force"]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(
      readFileSync(join(r, "etc/network/interfaces.d/agentlab-vmbr1.cfg"), "utf8"),
      /address 10\.78\.0\.1\/16/,
    );

    writeFileSync(join(r, "etc/sysctl.d/99-agentlab.conf"), "net.ipv4.ip_forward = 0\n");
    const sysctl = sh(SETUP, ["--apply", "--root", r, "--address", "10.78.0.1/16"]);
    assert.equal(sysctl.code, 1);
    assert.match(sysctl.stderr, /99-agentlab\.conf differs/);
  });

  it("appends a marked block when interfaces does not source interfaces.d, and replaces only that block", () => {
    const plain = PVE_INTERFACES.replace("source /etc/network/interfaces.d/*\n", "");
    const r = root(plain);
    const first = sh(SETUP, ["--apply", "--root", r]);
    assert.equal(first.code, 0, first.stderr);
    const appended = readFileSync(join(r, "etc/network/interfaces"), "utf8");
    assert.equal(
      appended,
      `${plain}\n# BEGIN agentlab-managed vmbr1\n${STANZA}# END agentlab-managed vmbr1\n`,
    );
    assert.equal(existsSync(join(r, "etc/network/interfaces.d/agentlab-vmbr1.cfg")), false);
    assert.match(sh(SETUP, ["--root", r]).stdout, /unchanged[\s\S]*nothing to write/);

    assert.equal(sh(SETUP, ["--apply", "--root", r, "--address", "10.78.0.1/16"]).code, 1);
    const forced = sh(SETUP, ["--apply", "--root", r, "--address", "10.78.0.1/16", "--force"]);
    assert.equal(forced.code, 0, forced.stderr);
    const replaced = readFileSync(join(r, "etc/network/interfaces"), "utf8");
    assert.equal(replaced, appended.replace("address 10.77.0.1/16", "address 10.78.0.1/16"));
  });

  it("a bridge defined elsewhere is left alone with the same address, refused with another (even --force)", () => {
    const same = root(
      `${PVE_INTERFACES}\nauto vmbr1\niface vmbr1 inet static\n\taddress 10.77.0.1/16\n\tbridge-ports none\n`,
    );
    const ok = sh(SETUP, ["--apply", "--root", same]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /already defined in .*\/etc\/network\/interfaces \(address 10\.77\.0\.1\/16\)/);
    assert.match(ok.stdout, /defined elsewhere with the same address: left alone/);
    assert.equal(existsSync(join(same, "etc/network/interfaces.d/agentlab-vmbr1.cfg")), false);
    assert.equal(readFileSync(join(same, "etc/sysctl.d/99-agentlab.conf"), "utf8"), SYSCTL);

    const other = root();
    mkdirSync(join(other, "etc/network/interfaces.d"));
    writeFileSync(
      join(other, "etc/network/interfaces.d/bridges"),
      "auto vmbr1\niface vmbr1 inet static\n\taddress 10.99.0.1/24\n",
    );
    const refused = sh(SETUP, ["--apply", "--force", "--root", other]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /bridge vmbr1 is defined elsewhere with a different address/);
    assert.equal(
      existsSync(join(other, "etc/sysctl.d")),
      false,
      "nothing is written when anything is refused",
    );
  });

  it("usage errors exit 2; a host without ifupdown exits 1", () => {
    const r = root();
    for (const args of [
      ["--bridge", "vmbr 1"],
      ["--bridge", "a-very-long-bridge"],
      ["--address", "10.77.0.1"],
      ["--address", "10.77.0.300/16"],
      ["--what"],
    ]) {
      const result = sh(SETUP, [...args, "--root", r]);
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, /see --help/);
    }
    const help = sh(SETUP, ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^ {2}scripts\/net\/setup_vmbr1\.sh \[--bridge vmbr1\]/m);
    const empty = mkdtempSync(join(dir, "empty-"));
    const missing = sh(SETUP, ["--root", empty]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /does not use ifupdown/);
  });
});

describe("network scripts: apply.sh", () => {
  let dir = "";
  let fakeNft = "";
  let log = "";
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-apply-"));
    fakeNft = join(dir, "nft");
    log = join(dir, "nft.log");
    // Records every call; answers `list table` as if the tables were loaded.
    writeFileSync(fakeNft, `#!/bin/sh\nprintf '%s\\n' "$*" >>"${log}"\nexit 0\n`);
    chmodSync(fakeNft, 0o755);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("--print with default parameters prints the checked-in agent_nat.nft", () => {
    const result = sh(APPLY, ["--print", "--bridge-meta", "off"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, readFileSync(AGENT_NAT, "utf8"));
  });

  it("--print with parameters renders through the daemon's renderer", () => {
    const result = sh(APPLY, [
      "--print",
      "--bridge-meta",
      "on",
      "--wan",
      "eno1",
      "--guest-ports=9000",
      "--tailscale-if",
      "",
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout,
      renderRuleset({
        bridge: "vmbr1",
        wan: "eno1",
        subnet: "10.77.0.0/16",
        bridgeAddress: "10.77.0.1",
        guestPorts: [9000],
        tailscaleIf: "",
        tailnetV4: "100.64.0.0/10",
        tailnetV6: "fd7a:115c:a1e0::/48",
        bridgeMeta: true,
      }),
    );
  });

  it("bad parameters exit 2 with the renderer's message", () => {
    const result = sh(APPLY, ["--print", "--bridge-meta", "off", "--bridge-addr", "10.78.0.1"]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /^apply: bridge-addr: 10\.78\.0\.1 is outside the subnet 10\.77\.0\.0\/16$/m);
    assert.equal(sh(APPLY, ["--bogus"]).code, 2);
    assert.equal(sh(APPLY, ["--bridge-meta", "maybe"]).code, 2);
  });

  it("dry run under --root writes nothing and says what it would do", () => {
    const r = mkdtempSync(join(dir, "root-"));
    const result = sh(APPLY, ["--root", r, "--bridge-meta", "off"], { AGENTLAB_NFT: fakeNft });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /ruleset .*\/etc\/nftables\.d\/agentlab\.nft: new/);
    assert.match(result.stderr, /unit .*\/etc\/systemd\/system\/agentlab-nftables\.service: new/);
    assert.match(result.stderr, /would run: nft -f .*agentlab\.nft/);
    assert.equal(existsSync(join(r, "etc")), false);
  });

  it("--apply installs the files, loads with nft -f, refuses differing files without --force", {
    skip: IS_ROOT ? false : "--apply needs root (the fake nft keeps it off the real ruleset)",
  }, () => {
    const r = mkdtempSync(join(dir, "root-"));
    writeFileSync(log, "");
    const env = { AGENTLAB_NFT: fakeNft };
    const first = sh(APPLY, ["--apply", "--root", r, "--bridge-meta", "off"], env);
    assert.equal(first.code, 0, first.stderr);
    const rules = join(r, "etc/nftables.d/agentlab.nft");
    assert.equal(readFileSync(rules, "utf8"), readFileSync(AGENT_NAT, "utf8"));
    const unit = readFileSync(join(r, "etc/systemd/system/agentlab-nftables.service"), "utf8");
    assert.match(unit, new RegExp(`^ExecStart=${fakeNft} -f /etc/nftables.d/agentlab.nft$`, "m"));
    assert.doesNotMatch(unit, /^ExecStop/m);
    const calls = readFileSync(log, "utf8");
    assert.match(calls, /^-c -f .*agentlab\.nft$/m);
    assert.match(calls, new RegExp(`^-f ${rules}$`, "m"));

    const refused = sh(APPLY, ["--apply", "--root", r, "--bridge-meta", "off", "--wan", "eno1"], env);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /refusing: .*agentlab\.nft differs/);
    assert.match(refused.stderr, /^\+\t\toifname "eno1" accept/m);
    assert.equal(readFileSync(rules, "utf8"), readFileSync(AGENT_NAT, "utf8"));

    const forced = sh(
      APPLY,
      ["--apply", "--root", r, "--bridge-meta", "off", "--wan", "eno1", "--force", "--replace"],
      env,
    );
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(readFileSync(rules, "utf8"), /oifname "eno1" accept/);
    assert.match(forced.stderr, /replaced tables/);
  });

  it("--apply without root is refused", { skip: IS_ROOT ? "running as root" : false }, () => {
    const result = sh(APPLY, ["--apply", "--root", mkdtempSync(join(dir, "root-"))]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /--apply needs root/);
  });
});

describe("network scripts: smoke_test.sh (reporting, with a fake sandbox)", () => {
  let dir = "";
  let fake = "";
  let sshLike = "";
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "agentlab-smoke-"));
    fake = join(dir, "fake-sandbox.mjs");
    // What ssh does to a command: its words joined by spaces and parsed again by the sandbox's login
    // shell. A separator a shell gives meaning to (";") would end the command there.
    sshLike = join(dir, "ssh-like.sh");
    writeFileSync(sshLike, 'exec sh -c "$*"\n');
    // Stands in for `ssh ... bash -s -- <timeout> <probe words> , ...`: answers each probe from a table.
    writeFileSync(
      fake,
      `import { readFileSync } from "node:fs";
readFileSync(0);
const answers = JSON.parse(process.env.FAKE_ANSWERS);
const args = process.argv.slice(2);
if (args[0] !== "bash" || args[1] !== "-s" || args[2] !== "--") process.exit(99);
const words = args.slice(4);
let n = 0, probe = [];
for (const w of words) {
  if (w !== ",") { probe.push(w); continue; }
  n++;
  const key = probe.join(" ");
  console.log(n + " " + (answers[key] ?? answers[probe[0]] ?? "timeout"));
  probe = [];
}
`,
    );
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const base = [
    "--ip",
    "10.77.0.10",
    "--gateway",
    "10.77.0.1",
    "--egress",
    "203.0.113.2:443",
    "--lan",
    "192.168.50.2",
    "--tailnet",
    "100.100.1.2:22",
    "--no-dns",
    "--timeout",
    "1",
  ];

  it("PASS when the Internet and the bootstrap port answer and everything else times out", () => {
    const answers = { "tcp 203.0.113.2 443": "open", "tcp 10.77.0.1 8844": "open" };
    const result = sh(SMOKE, [...base, "--exec", `sh ${sshLike} ${process.execPath} ${fake}`], {
      FAKE_ANSWERS: JSON.stringify(answers),
    });
    assert.equal(result.code, 0, result.stdout + result.stderr);
    const lines = result.stdout.trim().split("\n");
    assert.deepEqual(
      lines.map((line) => line.split(/ +/).slice(0, 3).join(" ")),
      [
        "PASS exec probes",
        "PASS egress 203.0.113.2:443",
        "PASS host-bootstrap-reach 10.77.0.1:8844",
        "PASS host-block-8006 10.77.0.1:8006",
        "PASS host-block-22 10.77.0.1:22",
        "PASS lan-block 192.168.50.2:22",
        "PASS tailnet-block 100.100.1.2:22",
        "PASS (7 passed)",
      ],
    );
  });

  it("FAIL when a block check connects or is refused (the packet got through), or egress is down", () => {
    const answers = {
      "tcp 10.77.0.1 8006": "open",
      "tcp 192.168.50.2 22": "refused",
      "tcp 10.77.0.1 8844": "open",
    };
    const result = sh(SMOKE, [...base, "--exec", `sh ${sshLike} ${process.execPath} ${fake}`], {
      FAKE_ANSWERS: JSON.stringify(answers),
    });
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^FAIL egress +203\.0\.113\.2:443 not reachable \(timeout\)$/m);
    assert.match(result.stdout, /^FAIL host-block-8006 +10\.77\.0\.1:8006 reachable: it must be blocked$/m);
    assert.match(
      result.stdout,
      /^FAIL lan-block +192\.168\.50\.2:22 answered \(connection refused\): the packet got through$/m,
    );
    assert.match(result.stdout, /^FAIL \(3 failed, 4 passed\)$/m);
  });

  it("FAIL with one line when the probes cannot run in the sandbox", () => {
    const result = sh(SMOKE, [...base, "--exec", "false"]);
    assert.equal(result.code, 1);
    assert.match(result.stdout, /^FAIL exec +cannot run the probes in the sandbox with: false$/m);
    assert.match(result.stdout, /^FAIL \(1 failed, 0 passed\)$/m);
  });

  it("usage errors exit 2", () => {
    for (const args of [
      [],
      ["--ip", "10.77.0"],
      ["--ip", "10.77.0.10", "--timeout", "0"],
      ["--ip", "10.77.0.10", "--lan", "x;y"],
    ]) {
      const result = sh(SMOKE, args);
      assert.equal(result.code, 2, `${args.join(" ")}: ${result.stdout}${result.stderr}`);
    }
  });
});
