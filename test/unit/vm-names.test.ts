import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { SandboxName } from "../../src/protocol/sandbox.js";
import { WorkspaceName } from "../../src/protocol/workspace.js";
import { DNS_NAME } from "../pvesim/config-schema.js";

/**
 * VM names reach Proxmox as `name=` of a clone or create, which refuses anything that is not a
 * dns-name. The daemon must refuse the same names when it validates, not after reserving a VMID.
 */
const NAMES = [
  "sandbox-101",
  "a",
  "A9",
  "a.b",
  "web-1.dev",
  "a..b",
  "a.-b",
  "a-.b",
  ".ab",
  "ab.",
  "-ab",
  "ab-",
  "a_b",
  "a b",
  "x-",
  "ws-x-",
];

describe("VM names follow Proxmox's dns-name rule", () => {
  test("a sandbox name is accepted exactly when Proxmox would accept it as the VM's name", () => {
    for (const name of NAMES) {
      assert.equal(SandboxName.safeParse(name).success, DNS_NAME.test(name), name);
    }
    assert.equal(SandboxName.safeParse("a".repeat(64)).success, false, "a hostname is at most 63");
  });

  test("a workspace name is accepted only when its holder's name ws-<name> is a valid VM name", () => {
    for (const name of NAMES) {
      if (WorkspaceName.safeParse(name).success) assert.ok(DNS_NAME.test(`ws-${name}`), name);
    }
    for (const name of ["x-", "ab-", "a.b", "A"])
      assert.equal(WorkspaceName.safeParse(name).success, false, name);
    for (const name of ["x", "proj-2", "a".repeat(60)])
      assert.equal(WorkspaceName.safeParse(name).success, true, name);
  });
});
