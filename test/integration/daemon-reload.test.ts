/**
 * `kill -HUP agentlabd` (`systemctl reload agentlabd`): config.yaml and the profiles are read again.
 * Before, SIGHUP ended the daemon silently and left its socket behind.
 */
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type HostDir,
  makeHostDir,
  type RunningDaemon,
  runCli,
  startDaemon,
  writeConfig,
} from "../helpers/daemon.js";

async function logLine(daemon: RunningDaemon, pattern: RegExp, from: number): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const line = daemon
      .output()
      .stdout.slice(from)
      .split("\n")
      .find((l) => pattern.test(l));
    if (line) return line;
    await sleep(25);
  }
  throw new Error(`no log line matching ${pattern}:\n${daemon.output().stdout.slice(from)}`);
}

describe("agentlabd SIGHUP reloads config.yaml and the profiles", () => {
  let host: HostDir;
  let daemon: RunningDaemon;
  const profiles = async () =>
    (
      JSON.parse((await runCli(["--json", "--socket", host.socketPath, "profile", "list"])).stdout) as {
        profiles: { name: string }[];
      }
    ).profiles.map((p) => p.name);
  const hup = () => {
    const from = daemon.output().stdout.length;
    daemon.proc.kill("SIGHUP");
    return from;
  };

  before(async () => {
    host = makeHostDir();
    daemon = await startDaemon(host);
  });
  after(async () => {
    await daemon.stop();
    host.cleanup();
  });

  test("a new profile is served after SIGHUP; the daemon keeps running on its socket", async () => {
    const before = await profiles();
    const source = readFileSync(join(host.profilesDir, "yolo-ephemeral.yaml"), "utf8");
    writeFileSync(join(host.profilesDir, "reloaded.yaml"), source.replace(/^name: .*$/m, "name: reloaded"));
    const from = hup();
    const line = await logLine(daemon, /reloaded config\.yaml and profiles/, from);
    assert.match(line, /"profiles":\[[^\]]*"reloaded"/);
    assert.deepEqual(await profiles(), [...before, "reloaded"].sort());
    assert.equal(daemon.proc.exitCode, null, "still running");
  });

  test("a broken profile keeps the old ones, and the log says why", async () => {
    const before = await profiles();
    writeFileSync(join(host.profilesDir, "broken.yaml"), "name: broken\nresources: [unclosed\n");
    try {
      const from = hup();
      const line = await logLine(daemon, /reload refused/, from);
      assert.match(line, /"level":"error"/);
      assert.match(line, /reload refused, nothing changed: .*broken\.yaml/);
      assert.deepEqual(await profiles(), before, "the profiles in use are unchanged");
    } finally {
      rmSync(join(host.profilesDir, "broken.yaml"));
    }
  });

  test("a live setting applies at once; one read only at start-up is named as needing a restart", async () => {
    const config = readFileSync(host.configPath, "utf8");
    writeConfig(host.configPath, `${config}provisioning_timeout: 7m\nbootstrap_listen: 127.0.0.1:1\n`);
    const from = hup();
    const line = await logLine(daemon, /reloaded config\.yaml and profiles/, from);
    // Derived settings follow their source: the orphan grace from the provisioning timeout, the agent
    // subnet and the controller URL from bootstrap_listen.
    assert.match(line, /"applied":\["provisioning_timeout_ms","orphan_grace_period_ms"\]/);
    assert.match(line, /"restart_needed":\["bootstrap_listen","agent_subnet","controller_url"\]/);
    const warn = await logLine(daemon, /only read at start-up/, from);
    assert.match(
      warn,
      /bootstrap_listen, agent_subnet, controller_url \(systemctl restart agentlabd applies them\)/,
    );
    const status = await runCli(["--socket", host.socketPath, "status"]);
    assert.equal(status.code, 0, status.stderr);
    writeConfig(host.configPath, config);
  });

  test("an invalid config.yaml changes nothing", async () => {
    const config = readFileSync(host.configPath, "utf8");
    writeConfig(host.configPath, `${config}provisioning_timeout: soon\n`);
    const from = hup();
    const line = await logLine(daemon, /reload refused/, from);
    assert.match(line, /provisioning_timeout/);
    assert.equal(daemon.proc.exitCode, null);
    writeConfig(host.configPath, config);
  });
});
