import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { promisify } from "node:util";
import { load } from "js-yaml";
import { pino } from "pino";
import {
  BOOTSTRAP_JSON_PATH,
  ENSURE_PACKAGES_SCRIPT,
  GUEST_AGENT_START_SCRIPT,
  REPORT_READY_PATH,
  REPORT_READY_SCRIPT,
  renderUserData,
} from "../../src/daemon/guest/cloud-init.js";
import { GuestListener, parseReadyReport } from "../../src/daemon/guest/listener.js";
import { GuestReadiness } from "../../src/daemon/guest/ready-waiters.js";
import { BootstrapTokens } from "../../src/daemon/guest/tokens.js";
import {
  WORKSPACE_FIRST_BOOT_SCRIPT,
  WORKSPACE_FORMAT_SCRIPT,
  WORKSPACE_FORMAT_SCRIPT_PATH,
  WORKSPACE_FORMAT_UNIT,
  WORKSPACE_FORMAT_UNIT_PATH,
  WORKSPACE_MOUNT_UNIT,
  WORKSPACE_MOUNT_UNIT_PATH,
  WORKSPACE_OWNER_UNIT,
  WORKSPACE_OWNER_UNIT_PATH,
  WORKSPACE_UDEV_RULE,
  WORKSPACE_UDEV_RULE_PATH,
} from "../../src/daemon/guest/workspace-units.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore } from "../../src/daemon/store/db.js";
import { snippetBootstrap } from "../pvesim/guest.js";

const run = promisify(execFile);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentlab-cloudinit-"));
const cleanups: Array<() => Promise<void> | void> = [() => fs.rmSync(dir, { recursive: true, force: true })];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface UserData {
  hostname: string;
  users: unknown[];
  packages?: string[];
  runcmd: string[][];
  write_files?: Array<{ path: string; content: string; owner: string; permissions: string; defer?: boolean }>;
}

const TOKEN = "0123456789abcdef0123456789abcdef";

describe("cloud-init user-data", () => {
  it("without a bootstrap token: agent user, guest agent installed only if missing, the workspace units", () => {
    const text = renderUserData({ vmid: 101, hostname: "sandbox-101", sshPublicKey: "ssh-ed25519 AAAA me" });
    assert.ok(text.startsWith("#cloud-config\n# agentlab sandbox 101\n"));
    const doc = load(text) as UserData;
    assert.equal(doc.hostname, "sandbox-101");
    // No cloud-init `packages`: it would run apt-get update even on a template that has everything.
    assert.equal(doc.packages, undefined);
    assert.deepEqual(doc.runcmd, [
      ["sh", "-c", ENSURE_PACKAGES_SCRIPT, "agentlab-packages", "qemu-guest-agent:qemu-ga"],
      ["sh", "-c", GUEST_AGENT_START_SCRIPT],
      ["sh", "-c", WORKSPACE_FIRST_BOOT_SCRIPT],
    ]);
    assert.deepEqual(
      doc.write_files?.map((f) => [f.path, f.owner, f.permissions, f.content]),
      [
        [WORKSPACE_MOUNT_UNIT_PATH, "root:root", "0644", WORKSPACE_MOUNT_UNIT],
        [WORKSPACE_OWNER_UNIT_PATH, "root:root", "0644", WORKSPACE_OWNER_UNIT],
        [WORKSPACE_FORMAT_UNIT_PATH, "root:root", "0644", WORKSPACE_FORMAT_UNIT],
        [WORKSPACE_FORMAT_SCRIPT_PATH, "root:root", "0755", WORKSPACE_FORMAT_SCRIPT],
        [WORKSPACE_UDEV_RULE_PATH, "root:root", "0644", WORKSPACE_UDEV_RULE],
      ],
    );
    assert.ok(!doc.write_files?.some((f) => f.path === BOOTSTRAP_JSON_PATH));
  });

  it("with a token writes bootstrap.json for agent (0600) and reports readiness from runcmd", () => {
    const text = renderUserData({
      vmid: 101,
      hostname: "sandbox-101",
      bootstrap: { token: TOKEN, controllerUrl: "http://10.77.0.1:8844/" },
    });
    const doc = load(text) as UserData;
    const bootstrap = doc.write_files?.find((f) => f.path === BOOTSTRAP_JSON_PATH);
    assert.ok(bootstrap);
    assert.equal(bootstrap.owner, "agent:agent");
    assert.equal(bootstrap.permissions, "0600");
    assert.equal(bootstrap.defer, true);
    assert.deepEqual(JSON.parse(bootstrap.content), {
      token: TOKEN,
      controller: "http://10.77.0.1:8844/",
      vmid: 101,
    });
    const script = doc.write_files?.find((f) => f.path === REPORT_READY_PATH);
    assert.equal(script?.content, REPORT_READY_SCRIPT);
    assert.equal(script?.permissions, "0755");
    // The guest agent and the workspace come first, so READY means both are up; the report goes last,
    // in the background.
    assert.deepEqual(doc.runcmd[1], ["sh", "-c", GUEST_AGENT_START_SCRIPT]);
    assert.deepEqual(doc.runcmd[2], ["sh", "-c", WORKSPACE_FIRST_BOOT_SCRIPT]);
    assert.deepEqual(doc.runcmd[3], [
      "sh",
      "-c",
      `nohup ${REPORT_READY_PATH} "$1" "$2" >/dev/null 2>&1 &`,
      "agentlab-report-ready",
      "http://10.77.0.1:8844/v1/guest/ready",
      `{"vmid":101,"token":"${TOKEN}"}`,
    ]);
    // What the simulator's guest reads back out of the snippet.
    assert.deepEqual(snippetBootstrap(text), {
      token: TOKEN,
      controller: "http://10.77.0.1:8844/",
      vmid: 101,
    });
  });
});

describe("the guest's report-ready script (real sh and curl)", () => {
  const scriptPath = path.join(dir, "report-ready");
  fs.writeFileSync(scriptPath, REPORT_READY_SCRIPT, { mode: 0o755 });

  /**
   * Run it the way runcmd does, with the URL and body from the rendered snippet; the host keys from
   * `keyDir` (by default a missing one, not this machine's /etc/ssh). Returns the seconds of each wait
   * before it tried again.
   */
  async function reportReady(
    controllerUrl: string,
    token: string,
    keyDir = path.join(dir, "no-host-keys"),
  ): Promise<string[]> {
    const doc = load(
      renderUserData({ vmid: 101, hostname: "h", bootstrap: { token, controllerUrl } }),
    ) as UserData;
    const [, , , , url, body] = doc.runcmd.find((cmd) => cmd[3] === "agentlab-report-ready")!;
    // A `sleep` of our own first on PATH records each wait between attempts (and waits for nothing): the
    // number of retries the script made, without timing it.
    const bin = path.join(dir, "fake-sleep-bin");
    const sleeps = path.join(dir, `sleeps-${Math.random().toString(36).slice(2)}`);
    fs.mkdirSync(bin, { recursive: true });
    fs.writeFileSync(path.join(bin, "sleep"), '#!/bin/sh\necho "$1" >> "$SLEEP_LOG"\n', { mode: 0o755 });
    await run("sh", [scriptPath, url!, body!, keyDir], {
      timeout: 20_000,
      env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}`, SLEEP_LOG: sleeps },
    });
    return fs.existsSync(sleeps) ? fs.readFileSync(sleeps, "utf8").split("\n").filter(Boolean) : [];
  }

  it("reaches a real guest listener: the token is used and the waiter gets the guest's address", async () => {
    const now = () => new Date();
    const store = openStore(path.join(dir, "agentlab.db"), { now });
    const readiness = new GuestReadiness({
      tokens: new BootstrapTokens(createBootstrapTokenRepo(store), { now }),
      clock: { now },
      controllerUrl: "http://127.0.0.1:0",
      listenAddress: "127.0.0.1:0",
      log: pino({ level: "silent" }),
    });
    const listener = new GuestListener({
      listen: "127.0.0.1:0",
      agentSubnet: "127.0.0.0/8",
      readiness,
      log: pino({ level: "silent" }),
    });
    await listener.start();
    cleanups.push(async () => {
      await listener.close();
      store.close();
    });
    const issued = readiness.issue(101);
    const waiting = readiness.wait(101, AbortSignal.timeout(10_000));
    await reportReady(issued.controllerUrl, issued.token);
    assert.deepEqual(await waiting.then((r) => [r.ip, r.via]), ["127.0.0.1", "phone-home"]);

    // A refusal (here: the token is used up) ends the script at once instead of retrying for minutes.
    assert.deepEqual(await reportReady(issued.controllerUrl, issued.token), [], "no attempt was retried");
  });

  it("sends the guest's SSH host keys from KEYDIR as type and base64 only; the daemon accepts them", async () => {
    const keyDir = path.join(dir, "etc-ssh");
    fs.mkdirSync(keyDir);
    // Real keys as the guest's cloud-init makes them; the comment is free text that must not reach JSON.
    for (const type of ["ed25519", "ecdsa"]) {
      await run("ssh-keygen", [
        "-q",
        "-t",
        type,
        "-N",
        "",
        "-C",
        'root@guest "quoted" \\',
        "-f",
        path.join(keyDir, `ssh_host_${type}_key`),
      ]);
    }
    // A damaged file is skipped, not sent: a quote in it would otherwise break the JSON.
    fs.writeFileSync(path.join(keyDir, "ssh_host_rsa_key.pub"), 'ssh-rsa AAAA"broken\n');
    const expected = ["ecdsa", "ed25519"].map((type) => {
      const [kind, blob] = fs.readFileSync(path.join(keyDir, `ssh_host_${type}_key.pub`), "utf8").split(" ");
      return `${kind} ${blob}`;
    });
    const bodies: string[] = [];
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        bodies.push(body);
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as { port: number }).port;
    await reportReady(`http://127.0.0.1:${port}`, TOKEN, keyDir);
    assert.equal(bodies.length, 1);
    assert.deepEqual(JSON.parse(bodies[0]!), { vmid: 101, token: TOKEN, host_keys: expected });
    // What the daemon's parser makes of it: the same keys, nothing refused.
    assert.deepEqual(parseReadyReport(bodies[0]!), {
      report: { vmid: 101, token: TOKEN, host_keys: expected },
    });
  });

  it("retries with backoff while the daemon is busy or rate-limits, then stops at the first success", async () => {
    const answers = [503, 429, 200, 200];
    const seen: Array<{ at: number; body: string; type: string | undefined }> = [];
    const server = http.createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        seen.push({ at: Date.now(), body, type: req.headers["content-type"] });
        res.writeHead(answers[seen.length - 1] ?? 500).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as { port: number }).port;
    const waits = await reportReady(`http://127.0.0.1:${port}`, TOKEN);
    assert.equal(seen.length, 3);
    assert.deepEqual(JSON.parse(seen[0]!.body), { vmid: 101, token: TOKEN });
    assert.equal(seen[0]!.type, "application/json");
    assert.deepEqual(waits, ["1", "2"], "it waited 1 s, then 2 s, and not after the success");
  });
});
