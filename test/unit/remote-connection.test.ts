import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { describeConnection, resolveConnection } from "../../src/cli/remote/connection.js";
import { clientConfigPath, saveConnection } from "../../src/cli/remote/saved.js";
import { normaliseFingerprint } from "../../src/cli/remote/transport.js";
import { AgentlabError } from "../../src/protocol/index.js";

const home = mkdtempSync(join(tmpdir(), "agentlab-conn-"));
after(() => rmSync(home, { recursive: true, force: true }));

const FP = Array.from({ length: 32 }, () => "AB").join(":");
const noFlags = { socketGiven: false, socket: "/run/agentlab/agentlabd.sock" };

describe("remote connection precedence", () => {
  const empty = { XDG_CONFIG_HOME: join(home, "none") };
  const saved = { XDG_CONFIG_HOME: join(home, "saved") };
  saveConnection(
    {
      endpoint: "https://saved.example:8845",
      token: "alt_saved",
      fingerprint: FP,
      trust: "pin",
      certificate: "PEM",
      saved_at: "2026-01-01T00:00:00Z",
    },
    clientConfigPath(saved),
  );

  test("nothing set: the default local socket", () => {
    assert.deepEqual(resolveConnection(noFlags, empty), {
      kind: "socket",
      path: "/run/agentlab/agentlabd.sock",
      source: "default",
    });
  });

  test("saved beats the default, and brings its token and pin", () => {
    const c = resolveConnection(noFlags, saved);
    assert.equal(c.kind, "remote");
    assert.ok(c.kind === "remote");
    assert.equal(c.endpoint, "https://saved.example:8845");
    assert.equal(c.token, "alt_saved");
    assert.deepEqual(c.pin, { fingerprint: FP, certificate: "PEM" });
  });

  test("environment beats saved; the saved token and pin apply only to the saved endpoint", () => {
    const env = { ...saved, AGENTLAB_ENDPOINT: "https://other.example:8845", AGENTLAB_TOKEN: "alt_env" };
    const c = resolveConnection(noFlags, env);
    assert.ok(c.kind === "remote");
    assert.equal(c.source, "AGENTLAB_ENDPOINT");
    assert.equal(c.token, "alt_env");
    assert.equal(c.pin, undefined);
    const noToken = { ...saved, AGENTLAB_ENDPOINT: "https://other.example:8845" };
    assert.throws(() => resolveConnection(noFlags, noToken), /no token for https:\/\/other.example:8845/);
    assert.equal(resolveConnection(noFlags, { ...saved, AGENTLAB_SOCKET: "/tmp/s.sock" }).kind, "socket");
  });

  test("flags beat the environment: --socket and --endpoint", () => {
    const env = { ...saved, AGENTLAB_ENDPOINT: "https://other.example:8845", AGENTLAB_TOKEN: "alt_env" };
    assert.deepEqual(resolveConnection({ socketGiven: true, socket: "/x.sock" }, env), {
      kind: "socket",
      path: "/x.sock",
      source: "--socket",
    });
    const c = resolveConnection(
      { ...noFlags, endpoint: "https://saved.example:8845/", token: "alt_flag" },
      env,
    );
    assert.ok(c.kind === "remote");
    assert.equal(c.token, "alt_flag");
    assert.deepEqual(c.pin, { fingerprint: FP, certificate: "PEM" }, "the saved pin follows its endpoint");
    assert.match(
      describeConnection(c),
      /^remote https:\/\/saved.example:8845 \(from --endpoint; token from --token, certificate pinned AB:/,
    );
  });

  test("an endpoint must be https:// without a path", () => {
    for (const endpoint of ["http://h:8845", "h:8845", "https://h:8845/rpc"]) {
      const error = (() => {
        try {
          resolveConnection({ ...noFlags, endpoint, token: "t" }, empty);
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      assert.ok(error instanceof AgentlabError && error.code === "USAGE", endpoint);
    }
  });
});

describe("fingerprints", () => {
  test("any common spelling normalises to colon-separated upper case", () => {
    const hex = "ab".repeat(32);
    assert.equal(normaliseFingerprint(hex), FP);
    assert.equal(normaliseFingerprint(`SHA256:${FP.toLowerCase()}`), FP);
    assert.equal(normaliseFingerprint("abcd"), undefined);
  });
});
