import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  commitCloudinitDisk,
  nocloudNetwork,
  parseResolvConf,
  renderNocloud,
} from "../pvesim/cloudinit-iso.js";

/**
 * The NoCloud seed of a real guest (guests=qemu) must be what qemu-server's Cloudinit.pm writes for the
 * same config (generate_nocloud, nocloud_network, cloudinit_userdata, nocloud_gen_metadata): real
 * cloud-init reads it, so a different instance-id or network-config changes what the guest does. The
 * expected texts below are written out by hand from the Perl.
 */

const MAC = "BC:24:11:AA:BB:CC";
const NO_RESOLV = { nameservers: [] };

describe("pvesim: cloud-init drive (Cloudinit.pm nocloud)", () => {
  it("cicustom user= is the user-data verbatim; ipconfig0 ip=dhcp gives network config v1; instance-id is sha1(user . network)", () => {
    const user = "#cloud-config\nwrite_files: []\n";
    const files = renderNocloud(
      { net0: `virtio=${MAC},bridge=vmbr1`, ipconfig0: "ip=dhcp", cicustom: "user=local:snippets/u.yaml" },
      101,
      { user },
      NO_RESOLV,
    );
    assert.equal(files["user-data"], user);
    assert.equal(
      files["network-config"],
      "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:aa:bb:cc'\n" +
        "      subnets:\n      - type: dhcp4\n    - type: nameserver\n",
    );
    // printf '<user><network>' | sha1sum
    assert.equal(files["meta-data"], "instance-id: 3014cce9fb40a15c1bcafbefa0637577b4fdbb34\n");
    assert.equal(files["vendor-data"], "");
  });

  it("a static address gets netmask and gateway, ip6 auto is SLAAC, DNS comes from the config over resolv.conf", () => {
    const network = nocloudNetwork(
      {
        net0: `virtio=${MAC},bridge=vmbr1`,
        ipconfig0: "ip=10.1.2.3/24,gw=10.1.2.1,ip6=auto",
        net1: "virtio=BC:24:11:00:00:01,bridge=vmbr2",
        nameserver: "1.1.1.1 9.9.9.9",
      },
      parseResolvConf("search lan.example\nnameserver 192.0.2.53\n"),
    );
    assert.equal(
      network,
      "version: 1\nconfig:\n" +
        "    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:aa:bb:cc'\n      subnets:\n" +
        "      - type: static\n        address: '10.1.2.3'\n        netmask: '255.255.255.0'\n        gateway: '10.1.2.1'\n" +
        "      - type: ipv6_slaac\n" +
        // net1 has no ipconfig1: not written. The host's search domain stays, its nameserver does not.
        "    - type: nameserver\n      address:\n      - '1.1.1.1'\n      - '9.9.9.9'\n      search:\n      - 'lan.example'\n",
    );
  });

  it("without cicustom the user-data is Proxmox's own (hostname, ciuser, ssh keys, package_upgrade)", () => {
    const files = renderNocloud(
      {
        name: "box.example.org",
        ciuser: "agent",
        sshkeys: encodeURIComponent("ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n"),
        net0: `virtio=${MAC},bridge=vmbr1`,
      },
      7,
      {},
      NO_RESOLV,
    );
    assert.equal(
      files["user-data"],
      "#cloud-config\nhostname: box\nmanage_etc_hosts: true\nfqdn: box.example.org\nuser: agent\n" +
        "ssh_authorized_keys:\n  - ssh-ed25519 AAAA one\n  - ssh-ed25519 BBBB two\n" +
        "chpasswd:\n  expire: False\nusers:\n  - default\npackage_upgrade: true\n",
    );
    // No ipconfig0: no interface, only the nameserver entry Perl always writes.
    assert.equal(files["network-config"], "version: 1\nconfig:\n    - type: nameserver\n");
  });

  it("snippets above 3 MiB together are refused as Proxmox refuses them", () => {
    assert.throws(
      () => renderNocloud({}, 1, { user: "x".repeat(3 * 1024 * 1024 + 1) }, NO_RESOLV),
      /Cloud-Init sum of snippets too big \(> 3 MiB\)/,
    );
  });
});

const haveIsoTools =
  spawnSync("genisoimage", ["--version"]).status === 0 &&
  spawnSync("isoinfo", ["-version"]).error === undefined;

describe("pvesim: the seed ISO (commit_cloudinit_disk)", {
  skip: haveIsoTools ? false : "genisoimage/isoinfo not installed",
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "pvesim-ci-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("is an ISO labelled cidata with the four files, written into the drive's volume without changing its size", () => {
    const volume = join(dir, "vm-101-cloudinit");
    writeFileSync(volume, "");
    execFileSync("truncate", ["-s", "4M", volume]);
    const runDir = join(dir, "run", "101");
    const log: string[] = [];
    commitCloudinitDisk(
      {
        "user-data": "#cloud-config\n",
        "network-config": "version: 1\nconfig:\n",
        "meta-data": "instance-id: abc\n",
        "vendor-data": "",
      },
      runDir,
      volume,
      "cidata",
      log,
    );
    assert.deepEqual(log, ["generating cloud-init ISO"]);
    assert.equal(statSync(volume).size, 4 * 1024 * 1024, "the volume keeps its size (qemu-img dd -n osize=)");
    const pvd = execFileSync("isoinfo", ["-d", "-i", volume], { encoding: "utf8" });
    assert.match(pvd, /Volume id: cidata/);
    const listing = execFileSync("isoinfo", ["-R", "-f", "-i", volume], { encoding: "utf8" });
    assert.deepEqual(listing.trim().split("\n").sort(), [
      "/meta-data",
      "/network-config",
      "/user-data",
      "/vendor-data",
    ]);
    assert.equal(
      execFileSync("isoinfo", ["-R", "-i", volume, "-x", "/meta-data"], { encoding: "utf8" }),
      "instance-id: abc\n",
    );
    assert.throws(
      () => readFileSync(join(runDir, "meta-data")),
      "the run directory is removed afterwards (rmtree)",
    );
  });
});
