import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { smokeOptions } from "../../src/cli/commands/init.js";
import {
  type ChainRule,
  closeHole,
  holeComment,
  holeRuleArgs,
  type NftCall,
  openHole,
  parseChainRules,
} from "../../src/cli/init/firewall-hole.js";
import type { RunResult } from "../../src/cli/init/host-checks.js";
import {
  checkExecTemplate,
  chooseProfile,
  guestEndpoint,
  judgeJob,
  parseSmokeTimeout,
  smokeRunScript,
  smokeTestArgs,
  smokeTtlMinutes,
  substituteExec,
} from "../../src/cli/init/smoke-plan.js";
import { AgentlabError, type JobDetail } from "../../src/protocol/index.js";

const HEAD = "0123456789abcdef0123456789abcdef01234567";
const MARKER = "agentlab-smoke-00112233aabbccdd";

function job(overrides: Partial<JobDetail> = {}): JobDetail {
  return {
    id: "job_0123456789abcdef",
    repo_url: "git://10.77.0.1:9418/smoke.git",
    ref: "main",
    profile: "yolo-ephemeral",
    keepalive: true,
    status: "COMPLETED",
    sandbox_vmid: 1001,
    result: {
      status: "COMPLETED",
      message: "agent finished",
      result: {
        exit_code: 0,
        commit: HEAD,
        output_tail: `agentlab smoke marker: ${MARKER}\nwrote /work/repo\n`,
      },
      reported_at: "2025-01-01T00:00:00Z",
    },
    created_at: "2025-01-01T00:00:00Z",
    updated_at: "2025-01-01T00:00:00Z",
    ...overrides,
  };
}

function usage(fn: () => unknown, message: RegExp) {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof AgentlabError);
    assert.equal(error.code, "USAGE");
    assert.match(error.message, message);
    assert.ok(error.hint.length > 0);
    return true;
  });
}

describe("smoke test options", () => {
  test("--smoke-timeout: whole seconds, default 600", () => {
    assert.equal(parseSmokeTimeout(undefined), 600);
    assert.equal(parseSmokeTimeout("90"), 90);
    assert.equal(parseSmokeTimeout(" 5 "), 5);
    for (const bad of ["0", "-3", "1.5", "10m", ""]) usage(() => parseSmokeTimeout(bad), /--smoke-timeout/);
  });

  test("--smoke-exec: {ip} and {vmid} are replaced everywhere, other placeholders are refused", () => {
    assert.equal(
      substituteExec("ip netns exec sb{vmid} env IP={ip} {ip}", { ip: "10.77.4.3", vmid: 1001 }),
      "ip netns exec sb1001 env IP=10.77.4.3 10.77.4.3",
    );
    assert.doesNotThrow(() => checkExecTemplate("ssh -i key root@{ip}"));
    usage(() => checkExecTemplate("ssh {host}"), /unknown placeholder \{host\}/);
    usage(() => checkExecTemplate("   "), /empty/);
  });

  test("init's flags become SmokeOptions; a repeated --smoke-net-arg keeps its order", () => {
    assert.deepEqual(
      smokeOptions({
        apply: false,
        force: false,
        "smoke-test": true,
        "smoke-profile": "p",
        "smoke-exec": "ip netns exec x",
        "smoke-net-arg": ["--no-dns", "--egress", "203.0.113.2:8080"],
        "smoke-timeout": "30",
      }),
      {
        profile: "p",
        exec: "ip netns exec x",
        netArgs: ["--no-dns", "--egress", "203.0.113.2:8080"],
        timeoutSeconds: 30,
        repo: undefined,
      },
    );
    assert.deepEqual(
      smokeOptions({ apply: false, force: false, "smoke-test": true, "smoke-net-arg": "--no-dns" }).netArgs,
      ["--no-dns"],
    );
    usage(
      () => smokeOptions({ apply: false, force: false, "smoke-test": true, "smoke-net-arg": "" }),
      /--smoke-net-arg: an empty argument/,
    );
  });
});

describe("smoke test plan", () => {
  test("the profile: the one asked for, the only one, or an error listing them", () => {
    assert.deepEqual(chooseProfile(["b", "a"], "a"), { profile: "a" });
    assert.deepEqual(chooseProfile(["only"], undefined), { profile: "only" });
    const unknown = chooseProfile(["yolo-ephemeral", "interactive-dev"], "nope");
    assert.deepEqual(unknown, {
      error: 'unknown profile "nope"',
      hint: "choose one of: interactive-dev, yolo-ephemeral (--smoke-profile NAME)",
    });
    const several = chooseProfile(["b", "a", "c"], undefined);
    assert.ok("error" in several);
    assert.equal(several.error, "the daemon has 3 profiles; say which one the smoke test uses");
    assert.equal(several.hint, "add --smoke-profile NAME, one of: a, b, c");
    assert.ok("error" in chooseProfile([], undefined));
  });

  test("the guest endpoint: the listener's address, the bridge address for a wildcard bind", () => {
    assert.deepEqual(
      guestEndpoint(
        { address: "10.77.0.1:8844", listening: true, url: "http://10.77.0.1:8844" },
        "10.77.0.1/16",
      ),
      { host: "10.77.0.1", port: 8844 },
    );
    assert.deepEqual(
      guestEndpoint({ address: "0.0.0.0:9000", listening: true, url: "http://0.0.0.0:9000" }, "10.80.0.1/16"),
      { host: "10.80.0.1", port: 9000 },
    );
    const down = guestEndpoint(
      { address: "10.77.0.1:8844", listening: false, error: "cannot listen: EADDRNOTAVAIL", hint: "fix it" },
      "10.77.0.1/16",
    );
    assert.ok("error" in down);
    assert.match(
      down.error,
      /not listening: cannot listen: EADDRNOTAVAIL; a job's runner cannot fetch its job/,
    );
    assert.equal(down.hint, "fix it");
  });

  test("smoke_test.sh arguments: ours first, then the operator's verbatim", () => {
    assert.deepEqual(
      smokeTestArgs({
        ip: "10.77.4.3",
        vmid: 1001,
        gateway: { host: "10.77.0.1", port: 8844 },
        bridge: "vmbr1",
        exec: "ip netns exec sb{vmid}",
        netArgs: ["--no-dns", "--egress", "203.0.113.2:8080"],
      }),
      [
        "--ip",
        "10.77.4.3",
        "--gateway",
        "10.77.0.1",
        "--bootstrap-port",
        "8844",
        "--bridge",
        "vmbr1",
        "--exec",
        "ip netns exec sb1001",
        "--no-dns",
        "--egress",
        "203.0.113.2:8080",
      ],
    );
    // No --exec: smoke_test.sh's own ssh agent@ip; a non-IPv4 gateway is left to the script's discovery.
    assert.deepEqual(
      smokeTestArgs({
        ip: "10.77.4.3",
        vmid: 1,
        gateway: { host: "fd00::1", port: 1 },
        bridge: "br0",
        netArgs: [],
      }),
      ["--ip", "10.77.4.3", "--bootstrap-port", "1", "--bridge", "br0"],
    );
  });

  test("run.sh prints the marker and writes a file; the ttl covers the timeout plus 5 minutes", () => {
    const script = smokeRunScript(MARKER);
    assert.match(script, /^#!\/bin\/sh\n/);
    assert.match(script, new RegExp(`echo "agentlab smoke marker: ${MARKER}"`));
    assert.match(script, new RegExp(`echo "${MARKER}" > agentlab-smoke.txt`));
    assert.equal(smokeTtlMinutes(600), 15);
    assert.equal(smokeTtlMinutes(61), 7);
  });

  test("the job verdict: COMPLETED on the served commit with the marker, else why not", () => {
    assert.equal(judgeJob(job(), { commit: HEAD, marker: MARKER }).ok, true);
    const failed = judgeJob(
      job({
        status: "FAILED",
        result: {
          status: "FAILED",
          message: "agent finished",
          result: { exit_code: 1, commit: HEAD, output_tail: "one\ntwo\nboom\n" },
          reported_at: "x",
        },
      }),
      { commit: HEAD, marker: MARKER },
    );
    assert.equal(failed.ok, false);
    assert.equal(failed.detail, "job_0123456789abcdef ended FAILED: agent finished (exit 1)");
    assert.match(failed.hint ?? "", /^agentlab job show job_0123456789abcdef; journalctl -u agentlabd -f/);
    assert.deepEqual(failed.tail, ["one", "two", "boom"]);

    const noReport = judgeJob(
      job({ status: "FAILED", result: undefined, failure_reason: "failed to provision sandbox" }),
      {
        commit: HEAD,
      },
    );
    assert.equal(noReport.detail, "job_0123456789abcdef ended FAILED: failed to provision sandbox");

    const otherCommit = judgeJob(job(), { commit: "f".repeat(40), marker: MARKER });
    assert.match(otherCommit.detail, /ran commit 0123456789abcdef.*HEAD is f{40}/);
    const noMarker = judgeJob(job(), { commit: HEAD, marker: "agentlab-smoke-other" });
    assert.match(noMarker.detail, /lacks the marker agentlab-smoke-other/);
    // An operator's repository (--smoke-repo) has no marker to look for.
    assert.equal(judgeJob(job(), { commit: HEAD }).ok, true);
  });
});

describe("the firewall hole", () => {
  const spec = { bridge: "vmbr1", subnet: "10.77.0.0/16", host: "10.77.0.1", port: 40123, pid: 4242 };

  test("the rule: bridge, subnet, address, port, commented with the pid", () => {
    assert.deepEqual(holeRuleArgs(spec), [
      "iifname",
      '"vmbr1"',
      "ip",
      "saddr",
      "10.77.0.0/16",
      "ip",
      "daddr",
      "10.77.0.1",
      "tcp",
      "dport",
      "40123",
      "accept",
      "comment",
      '"agentlab-smoke pid 4242"',
    ]);
    assert.ok(!holeRuleArgs({ ...spec, host: "fd00::1" }).includes("daddr"));
  });

  const LISTING = `table inet agentlab {
\tchain input { # handle 5
\t\ttype filter hook input priority -100; policy accept;
\t\tiifname "vmbr1" ip saddr 10.77.0.0/16 ip daddr 10.77.0.1 tcp dport 40000 accept comment "${holeComment(7)}" # handle 37
\t\tiifname != "vmbr1" accept comment "only traffic arriving from the sandbox bridge is policed here" # handle 8
\t\tcounter packets 0 bytes 0 drop comment "everything else" # handle 17
\t}
}
`;

  test("nft -a listings: each rule with its handle, ours recognised by the comment", () => {
    const rules: ChainRule[] = parseChainRules(LISTING);
    assert.deepEqual(
      rules.map((r) => [r.handle, r.smokePid]),
      [
        [37, 7],
        [8, undefined],
        [17, undefined],
      ],
    );
  });

  /** An nft that answers from a script of canned results and records what it was asked. */
  function recorder(answers: Array<Partial<RunResult>>): { nft: NftCall; calls: string[] } {
    const calls: string[] = [];
    const nft: NftCall = async (args) => {
      calls.push(args.join(" "));
      const next = answers.shift() ?? {};
      return { code: 0, stdout: "", stderr: "", ...next };
    };
    return { nft, calls };
  }

  test("no table: nothing opened, a reason; no nft: the same", async () => {
    const absent = recorder([
      { code: 1, stderr: "Error: No such file or directory\nlist chain inet agentlab input" },
    ]);
    const hole = await openHole(absent.nft, spec);
    assert.deepEqual(hole, {
      opened: false,
      reason: "nftables table inet agentlab (input chain) is not loaded: no firewall hole needed",
    });
    assert.equal(await closeHole(absent.nft, hole), "none");
    const missing = recorder([{ code: 127, spawnError: "ENOENT" }]);
    const none = await openHole(missing.nft, spec);
    assert.equal(none.opened, false);
  });

  test("not root: an error that says so and how to run it", async () => {
    const denied = recorder([{ code: 1, stderr: "Error: Operation not permitted" }]);
    await assert.rejects(openHole(denied.nft, spec), (error: Error & { hint?: string }) => {
      assert.match(error.message, /needs root: nft says Error: Operation not permitted/);
      assert.match(error.hint ?? "", /sudo agentlab init --smoke-test/);
      return true;
    });
  });

  test("not root but agentlabd says no ruleset is loaded: no hole needed, no error (issue 16 item 7)", async () => {
    const denied = recorder([{ code: 1, stderr: "Error: Operation not permitted" }]);
    assert.deepEqual(await openHole(denied.nft, spec, false), {
      opened: false,
      reason: "agentlabd reports the agentlab nftables ruleset is not loaded: no firewall hole needed",
    });
    // When agentlabd says it is loaded, a non-root user still cannot open it.
    const loaded = recorder([{ code: 1, stderr: "Error: Operation not permitted" }]);
    await assert.rejects(openHole(loaded.nft, spec, true), /needs root/);
  });

  test("opened: inserted at the top, stale rules of dead smoke tests removed, deleted by handle", async () => {
    // pid 7 is not a process of this test run's making; pick a pid that surely does not exist.
    const dead = 2 ** 22 + 17;
    const listing = LISTING.replace(holeComment(7), holeComment(dead));
    const { nft, calls } = recorder([
      { stdout: listing },
      {},
      {
        stdout: `insert rule inet agentlab input iifname "vmbr1" ip saddr 10.77.0.0/16 ip daddr 10.77.0.1 tcp dport 40123 accept comment "agentlab-smoke pid 4242" # handle 41\n# new generation 3 by process 1 (nft)\n`,
      },
    ]);
    const hole = await openHole(nft, spec);
    assert.ok(hole.opened);
    assert.equal(hole.handle, 41);
    assert.deepEqual(hole.staleRemoved, [37]);
    assert.match(hole.rule, /^inet agentlab input iifname "vmbr1" .* comment "agentlab-smoke pid 4242"$/);
    assert.deepEqual(calls, [
      "-a list chain inet agentlab input",
      "delete rule inet agentlab input handle 37",
      `--echo --handle insert rule inet agentlab input ${holeRuleArgs(spec).join(" ")}`,
    ]);

    const ours = `\t\tiifname "vmbr1" tcp dport 40123 accept comment "${holeComment(4242)}" # handle 41\n`;
    const closing = recorder([{ stdout: ours }, {}]);
    assert.equal(await closeHole(closing.nft, hole), "removed");
    assert.deepEqual(closing.calls, [
      "-a list chain inet agentlab input",
      "delete rule inet agentlab input handle 41",
    ]);

    // Reloaded ruleset: the handle is gone (or is no longer ours): nothing is deleted.
    const reloaded = recorder([{ stdout: LISTING }]);
    assert.equal(await closeHole(reloaded.nft, hole), "gone");
    assert.deepEqual(reloaded.calls, ["-a list chain inet agentlab input"]);
  });
});
