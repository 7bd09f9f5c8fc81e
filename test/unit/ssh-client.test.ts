import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseHostKey, recordedHostKeys } from "../../src/cli/ssh/host-keys.js";
import { collectIdentities, unlock } from "../../src/cli/ssh/identities.js";
import { parseJumpHost, resolveJumpHost } from "../../src/cli/ssh/jump.js";
import { lookupKnownHosts } from "../../src/cli/ssh/known-hosts.js";
import { opensshArgv, writeSandboxKnownHosts } from "../../src/cli/ssh/openssh.js";
import { noRouteHint } from "../../src/cli/ssh/reach.js";
import { blobFingerprint } from "../../src/protocol/host-keys.js";
import type { AgentlabError } from "../../src/protocol/index.js";
import { keygenFingerprint, makeKey, sshdSkipReason } from "../helpers/sshd.js";

/**
 * The pieces of agentlab ssh that decide trust and what is printed, checked against OpenSSH's own
 * tools where it has one: fingerprints as ssh-keygen -l prints them, hashed known_hosts entries as
 * ssh-keygen -H writes them.
 */

const skip = sshdSkipReason();
let dir: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "agentlab-ssh-unit-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("host keys", { skip }, () => {
  test("fingerprints are ssh-keygen's, for ed25519, ecdsa and rsa keys", () => {
    for (const type of ["ed25519", "ecdsa", "rsa"]) {
      const pair = makeKey(join(dir, `host-${type}`), { type });
      const key = parseHostKey(pair.publicKey);
      assert.ok(key, pair.publicKey);
      assert.equal(blobFingerprint(key.blob), keygenFingerprint(`${pair.path}.pub`));
    }
  });

  test("a key whose blob names another type than its text is not a key", () => {
    const pair = makeKey(join(dir, "mislabel"));
    const blob = pair.publicKey.split(" ")[1];
    assert.equal(parseHostKey(`ssh-rsa ${blob}`), undefined);
    assert.equal(parseHostKey("ssh-ed25519 not-base64!"), undefined);
    assert.deepEqual(
      recordedHostKeys({ ssh_host_keys: ["garbage", pair.publicKey] }).map((k) => k.type),
      ["ssh-ed25519"],
    );
  });
});

describe("known_hosts", { skip }, () => {
  test("plain, [host]:port, wildcard, negated and hashed entries are found as ssh finds them", () => {
    const a = makeKey(join(dir, "kh-a")).publicKey;
    const b = makeKey(join(dir, "kh-b")).publicKey;
    const c = makeKey(join(dir, "kh-c")).publicKey;
    const file = join(dir, "known_hosts");
    writeFileSync(
      file,
      `jump.example.net ${a}\n[jump.example.net]:2222 ${b}\n*.tail.ts.net,!evil.tail.ts.net ${c}\n`,
    );
    const hashed = spawnSync("ssh-keygen", ["-H", "-f", file], { encoding: "utf8" });
    assert.equal(hashed.status, 0, hashed.stderr);
    const text = readFileSync(file, "utf8");
    assert.doesNotMatch(text, /jump\.example\.net/, "ssh-keygen -H hashed the names");
    const type = (found: { keys: { blob: Buffer }[] }) => found.keys.map((k) => k.blob.toString("base64"));
    assert.deepEqual(type(lookupKnownHosts([text], "jump.example.net", 22)), [a.split(" ")[1]]);
    assert.deepEqual(type(lookupKnownHosts([text], "jump.example.net", 2222)), [b.split(" ")[1]]);
    assert.deepEqual(type(lookupKnownHosts([text], "host.tail.ts.net", 22)), [c.split(" ")[1]]);
    assert.deepEqual(type(lookupKnownHosts([text], "evil.tail.ts.net", 22)), []);
    assert.deepEqual(type(lookupKnownHosts([text], "other.example.net", 22)), []);
  });

  test("@revoked keys are kept apart and @cert-authority lines give no key", () => {
    const a = makeKey(join(dir, "kh-rev")).publicKey;
    const found = lookupKnownHosts(
      [`@revoked jump.example.net ${a}\n@cert-authority *.example.net ${a}\n`],
      "jump.example.net",
      22,
    );
    assert.equal(found.keys.length, 0);
    assert.equal(found.revoked.length, 1);
  });
});

describe("the printed OpenSSH command", () => {
  const base = { user: "agent", host: "10.77.0.9", knownHostsFile: "/c/known_hosts-105" };

  test("strict host key checking against the recorded keys, -J for a jump host", () => {
    assert.deepEqual(opensshArgv({ ...base, jump: { user: "me", host: "host.tail.ts.net", port: 22 } }), [
      "ssh",
      "-o",
      "UserKnownHostsFile=/c/known_hosts-105",
      "-o",
      "StrictHostKeyChecking=yes",
      "-J",
      "me@host.tail.ts.net",
      "agent@10.77.0.9",
    ]);
  });

  test("a key file ssh would not find itself is given to the jump too (ProxyCommand, as -J drops -i)", () => {
    const argv = opensshArgv({
      ...base,
      identityFile: "/etc/agentlab/keys/agentlab_ed25519",
      jump: { user: "me", host: "host.tail.ts.net", port: 2222 },
      command: ["uname", "-a"],
    });
    assert.deepEqual(argv, [
      "ssh",
      "-i",
      "/etc/agentlab/keys/agentlab_ed25519",
      "-o",
      "UserKnownHostsFile=/c/known_hosts-105",
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      "ProxyCommand=ssh -i /etc/agentlab/keys/agentlab_ed25519 -l me -p 2222 -W '[%h]:%p' host.tail.ts.net",
      "agent@10.77.0.9",
      "--",
      "uname",
      "-a",
    ]);
  });

  test("the known_hosts file holds the recorded keys under the sandbox's address, mode 0600", {
    skip,
  }, () => {
    const pair = makeKey(join(dir, "print-host"));
    const key = parseHostKey(pair.publicKey)!;
    const path = writeSandboxKnownHosts(105, "10.77.0.9", [key], join(dir, "cache"));
    assert.equal(readFileSync(path, "utf8"), `10.77.0.9 ${pair.publicKey}\n`);
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });
});

describe("--jump-host", () => {
  test("[user@]host[:port], --jump-user applied, the local user by default", () => {
    assert.deepEqual(parseJumpHost("host.tail.ts.net", "u", "local"), {
      user: "u",
      host: "host.tail.ts.net",
      port: 22,
    });
    assert.deepEqual(parseJumpHost("me@10.0.0.1:2222", undefined, "local"), {
      user: "me",
      host: "10.0.0.1",
      port: 2222,
    });
    assert.deepEqual(parseJumpHost("[fd00::1]:22", undefined, "local"), {
      user: "local",
      host: "fd00::1",
      port: 22,
    });
    assert.throws(() => parseJumpHost("me@h", "you", "local"), /names user me and --jump-user you/);
    assert.throws(() => parseJumpHost("a b", undefined, "local"), /not \[user@\]host\[:port\]/);
  });
});

describe("no route hint", () => {
  test("the troubleshooting guide's checks and the jump host alternative, with this VMID", () => {
    const hint = noRouteHint(105, undefined);
    assert.match(hint, /look for 10\.77\.0\.0\/16/);
    assert.match(hint, /tailscale status/);
    assert.match(hint, /sudo tailscale up --accept-routes/);
    assert.match(
      hint,
      /agentlab connect --endpoint https:\/\/host\.tailnet\.ts\.net:8845 --token <token> --jump-user <user>/,
    );
    assert.match(hint, /agentlab ssh 105 --jump-host host\.tailnet\.ts\.net --jump-user <user>/);
  });
});

describe("identities", { skip }, () => {
  test("--identity first, then the agent, the keys directory, then ~/.ssh; unreadable --identity is an error", () => {
    const home = join(dir, "home");
    const keysDir = join(dir, "keys");
    mkdirSync(join(home, ".ssh"), { recursive: true });
    mkdirSync(keysDir);
    makeKey(join(home, ".ssh", "id_rsa"), { type: "rsa" });
    makeKey(join(home, ".ssh", "id_ed25519"));
    makeKey(join(keysDir, "other"));
    makeKey(join(keysDir, "agentlab_ed25519"));
    const explicit = makeKey(join(dir, "explicit"));
    const found = collectIdentities({
      identity: explicit.path,
      home,
      env: { SSH_AUTH_SOCK: "/run/agent.sock", AGENTLAB_SSH_KEYS_DIR: keysDir },
    });
    assert.deepEqual(
      found.map((id) => (id.kind === "agent" ? "agent" : id.path)),
      [
        explicit.path,
        "agent",
        join(keysDir, "agentlab_ed25519"),
        join(keysDir, "other"),
        join(home, ".ssh", "id_ed25519"),
        join(home, ".ssh", "id_rsa"),
      ],
    );
    assert.throws(
      () => collectIdentities({ identity: join(dir, "missing"), home, env: {} }),
      (error: AgentlabError) =>
        error.code === "SSH_KEY_UNUSABLE" && /cannot read .*missing: ENOENT/.test(error.message),
    );
    assert.throws(
      () => collectIdentities({ identity: `${explicit.path}.pub`, home, env: {} }),
      (error: AgentlabError) =>
        /is not a private key/.test(error.message) && error.hint.includes(explicit.path),
    );
  });

  test("an encrypted --identity without a terminal is a clear error; with the passphrase it unlocks", async () => {
    const pair = makeKey(join(dir, "encrypted"), { passphrase: "s3cret" });
    const [identity] = collectIdentities({ identity: pair.path, home: join(dir, "nohome"), env: {} });
    assert.ok(identity && identity.kind === "file");
    await assert.rejects(
      unlock(identity, async () => undefined),
      (error: AgentlabError) =>
        error.code === "SSH_KEY_UNUSABLE" &&
        /is encrypted and there is no terminal/.test(error.message) &&
        error.hint.includes(`ssh-add ${pair.path}`),
    );
    const unlocked = await unlock(identity, async () => "s3cret");
    assert.equal(unlocked.key?.type, "ssh-ed25519");
    await assert.rejects(
      unlock(identity, async () => "wrong"),
      /wrong passphrase/,
    );
    // A key found by itself (not --identity) is skipped, with the reason kept for the auth error.
    const skipped = await unlock({ ...identity, explicit: false }, async () => undefined);
    assert.match(skipped.skipped ?? "", /is encrypted/);
  });
});

describe("which jump host", () => {
  const saved = {
    endpoint: "https://host.tail.ts.net:8845",
    jump_host: "host.tail.ts.net",
    jump_user: "saved",
  };
  const base = { localUser: "local", vmid: 105 };

  test("agentlab connect's saved jump host applies while its endpoint is in use; flags win", () => {
    assert.deepEqual(resolveJumpHost({ ...base, flags: {}, endpoint: saved.endpoint, saved }).jump, {
      user: "saved",
      host: "host.tail.ts.net",
      port: 22,
    });
    assert.deepEqual(
      resolveJumpHost({ ...base, flags: { user: "me" }, endpoint: saved.endpoint, saved }).jump,
      { user: "me", host: "host.tail.ts.net", port: 22 },
    );
    assert.deepEqual(
      resolveJumpHost({ ...base, flags: { host: "other:2222" }, endpoint: saved.endpoint, saved }).jump,
      { user: "saved", host: "other", port: 2222 },
    );
  });

  test("not on the local socket, nor for another endpoint; a jump user alone means the endpoint's host", () => {
    assert.equal(resolveJumpHost({ ...base, flags: {}, saved }).jump, undefined);
    assert.equal(
      resolveJumpHost({ ...base, flags: {}, endpoint: "https://elsewhere:8845", saved }).jump,
      undefined,
    );
    assert.deepEqual(
      resolveJumpHost({ ...base, flags: { user: "u" }, endpoint: "https://elsewhere:8845" }).jump,
      {
        user: "u",
        host: "elsewhere",
        port: 22,
      },
    );
    assert.throws(() => resolveJumpHost({ ...base, flags: { user: "u" } }), /--jump-user needs --jump-host/);
  });
});
