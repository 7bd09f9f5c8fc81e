import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { classifyProxmoxError, errorChain } from "../../src/daemon/proxmox/errors.js";
import { PveRequestError } from "../../src/daemon/proxmox/transport.js";
import { parseApiError } from "../../src/daemon/proxmox/transport-api.js";
import { parsePveshError, parsePveshOutput, pveshArgs } from "../../src/daemon/proxmox/transport-shell.js";

const ctx = { action: "start VM 101", vmid: 101, tokenId: "sandbox@pve!orch" };

describe("classifying Proxmox failures", () => {
  test("a missing VM is PROXMOX_VM_NOT_FOUND, from either transport", () => {
    const shell = parsePveshError(
      "GET",
      "/nodes/pve/qemu/101/status/current",
      "Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\n",
      2,
    );
    assert.equal(classifyProxmoxError(shell, ctx).code, "PROXMOX_VM_NOT_FOUND");
    const api = parseApiError(
      "GET",
      "/nodes/pve/qemu/101/status/current",
      new Error(
        `GET https://pve:8006/api2/json/nodes/pve/qemu/101/status/current return Error 500 Configuration file 'nodes/pve/qemu-server/101.conf' does not exist: {"data":null,"message":"Configuration file 'nodes/pve/qemu-server/101.conf' does not exist\\n"}`,
      ),
    );
    const classified = classifyProxmoxError(api, ctx);
    assert.equal(classified.code, "PROXMOX_VM_NOT_FOUND");
    assert.equal(classified.message, "start VM 101: VM 101 does not exist in Proxmox");
  });

  test("locks and lock-file timeouts are PROXMOX_LOCKED", () => {
    for (const reason of [
      "VM is locked (clone)",
      "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout",
    ]) {
      assert.equal(
        classifyProxmoxError(new PveRequestError("POST", "/x", reason), ctx).code,
        "PROXMOX_LOCKED",
      );
    }
  });

  test("403 names the missing privilege and path and grants the AgentLab role to user and token", () => {
    const error = parseApiError(
      "POST",
      "/nodes/pve/qemu/9000/clone",
      new Error(
        `POST https://pve:8006/api2/json/nodes/pve/qemu/9000/clone connection failed with 403 Permission check failed (/vms/101, VM.Allocate) return: {"data":null,"message":"Permission check failed (/vms/101, VM.Allocate)\\n"}`,
      ),
    );
    const classified = classifyProxmoxError(error, ctx);
    assert.equal(classified.code, "PROXMOX_PERMISSION");
    assert.match(classified.message, /Permission check failed \(\/vms\/101, VM\.Allocate\)/);
    assert.match(classified.hint, /INTERSECTION/);
    assert.match(classified.hint, /lacks VM\.Allocate on \/vms\/101/);
    assert.match(classified.hint, /pveum acl modify \/vms --users sandbox@pve --roles AgentLab/);
    assert.match(classified.hint, /pveum acl modify \/vms --tokens 'sandbox@pve!orch' --roles AgentLab/);
    assert.match(classified.hint, /pveum role add AgentLab -privs "[^"]*VM\.Allocate[^"]*"/);
    assert.doesNotMatch(classified.hint, /PVEVMAdmin/);
  });

  test("403 on a storage names Datastore.AllocateSpace there, not a VM role", () => {
    const error = parseApiError(
      "POST",
      "/nodes/pve/qemu/9000/clone",
      new Error(
        `POST https://pve:8006/api2/json/nodes/pve/qemu/9000/clone connection failed with 403 Permission check failed (/storage/local-zfs, Datastore.AllocateSpace) return: {"data":null,"message":"Permission check failed (/storage/local-zfs, Datastore.AllocateSpace)\\n"}`,
      ),
    );
    const classified = classifyProxmoxError(error, ctx);
    assert.equal(classified.code, "PROXMOX_PERMISSION");
    assert.match(classified.hint, /lacks Datastore\.AllocateSpace on \/storage\/local-zfs/);
    assert.match(
      classified.hint,
      /pveum acl modify \/storage\/local-zfs --tokens 'sandbox@pve!orch' --roles AgentLab/,
    );
    assert.match(classified.hint, /pveum role add AgentLab -privs "[^"]*Datastore\.AllocateSpace[^"]*"/);
  });

  test("401 is PROXMOX_AUTH", () => {
    const error = parseApiError(
      "GET",
      "/version",
      new Error(
        'GET https://pve:8006/api2/json/version return Error 401 Authentication failed!: {"data":null,"errors":""}',
      ),
    );
    assert.equal(classifyProxmoxError(error, ctx).code, "PROXMOX_AUTH");
  });

  test("400 keeps Proxmox's per-field errors", () => {
    const error = parsePveshError(
      "POST",
      "/nodes/pve/qemu/9000/clone",
      "400 Parameter verification failed.\nnewid: value must have a minimum value of 100\n\nUSAGE: pvesh create ...\n",
    );
    const classified = classifyProxmoxError(error, ctx);
    assert.equal(classified.code, "PROXMOX_INVALID");
    assert.match(classified.message, /newid: value must have a minimum value of 100/);
    assert.deepEqual(classified.details.errors, { newid: "value must have a minimum value of 100" });
  });

  test("the guest agent not running yet is GUEST_AGENT_NOT_READY", () => {
    const error = new PveRequestError("GET", "/x", "QEMU guest agent is not running", 500);
    assert.equal(classifyProxmoxError(error, ctx).code, "GUEST_AGENT_NOT_READY");
  });

  const tlsCases = [
    ["UNABLE_TO_VERIFY_LEAF_SIGNATURE", /proxmox_tls_ca_path: \/etc\/pve\/pve-root-ca\.pem/],
    ["DEPTH_ZERO_SELF_SIGNED_CERT", /self-signed certificate: set proxmox_tls_ca_path/],
    ["CERT_HAS_EXPIRED", /pvecm updatecerts --force/],
    ["ERR_TLS_CERT_ALTNAME_INVALID", /does not name the host in proxmox_api_url/],
  ] as const;
  for (const [code, fix] of tlsCases) {
    test(`TLS failure ${code} is explained with its fix and the whole chain`, () => {
      const root = Object.assign(new Error(`tls failure ${code}`), { code });
      const fetchError = Object.assign(new TypeError("fetch failed"), { cause: root });
      const wrapped = Object.assign(new Error("FaILED to call GET https://pve:8006/api2/json/version"), {
        cause: fetchError,
      });
      const classified = classifyProxmoxError(wrapped, ctx);
      assert.equal(classified.code, "PROXMOX_TLS");
      assert.match(classified.message, new RegExp(code));
      assert.match(classified.hint, fix);
      assert.deepEqual(classified.details.chain, errorChain(wrapped));
      assert.equal((classified.details.chain as string[]).length, 3);
    });
  }

  for (const [code, fix] of [
    ["ECONNREFUSED", /systemctl status pveproxy/],
    ["ENOTFOUND", /does not resolve/],
  ] as const) {
    test(`connection failure ${code} is PROXMOX_UNREACHABLE with its fix`, () => {
      const wrapped = Object.assign(new Error("FaILED to call GET"), {
        cause: Object.assign(new Error("connect"), { code }),
      });
      const classified = classifyProxmoxError(wrapped, ctx);
      assert.equal(classified.code, "PROXMOX_UNREACHABLE");
      assert.match(classified.hint, fix);
    });
  }
});

describe("pvesh plumbing", () => {
  test("arguments are an array with --key value pairs and JSON output", () => {
    assert.deepEqual(
      pveshArgs("POST", "/nodes/pve/qemu/9000/clone", {
        newid: 101,
        full: false,
        name: "a b",
        skip: undefined,
      }),
      [
        "create",
        "/nodes/pve/qemu/9000/clone",
        "--newid",
        "101",
        "--full",
        "0",
        "--name",
        "a b",
        "--output-format",
        "json",
      ],
    );
  });

  test("a worker endpoint's output is the task log then the UPID", () => {
    const upid = "UPID:pve:0035D677:03AB00C3:66DC5987:qmclone:9000:root@pam:";
    const stdout = `create linked clone of drive scsi0 (local-zfs:base-9000-disk-0)\n"${upid}"\n`;
    assert.equal(parsePveshOutput("POST", "/x", stdout), upid);
  });

  test("pvesh set prints a summary and no JSON: data is null", () => {
    assert.equal(parsePveshOutput("PUT", "/x", "update VM 101: -cores 4\n"), null);
  });

  test("a GET that is not JSON is an error, not a silent null", () => {
    assert.throws(() => parsePveshOutput("GET", "/x", "garbage\n"), /not JSON/);
  });
});
