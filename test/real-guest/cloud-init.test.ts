/**
 * Our cloud-init user-data (renderUserData) read by real cloud-init in a real QEMU guest: the image of
 * scripts/dev/guest-image, a cidata seed made as Proxmox makes it, and the daemon's real guest listener
 * receiving the phone-home through QEMU's user network. Opt-in (AGENTLAB_REAL_GUESTS=1, root): each boot
 * takes a minute or more under TCG.
 *
 *   guest 10.0.2.15 --(restricted user network)--> 10.0.2.100:8844 = guestfwd -> GuestListener on 127.0.0.1
 *   host 127.0.0.1:<ssh port> = hostfwd -> guest :22;  qga.sock = virtio-serial org.qemu.guest_agent.0
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { promisify } from "node:util";
import { pino } from "pino";
import { BOOTSTRAP_JSON_PATH, renderUserData } from "../../src/daemon/guest/cloud-init.js";
import { GuestListener } from "../../src/daemon/guest/listener.js";
import { GuestReadiness } from "../../src/daemon/guest/ready-waiters.js";
import { BootstrapTokens } from "../../src/daemon/guest/tokens.js";
import { WORKSPACE_FS_LABEL } from "../../src/daemon/services/workspaces/create.js";
import { createBootstrapTokenRepo } from "../../src/daemon/store/bootstrap-tokens.js";
import { openStore } from "../../src/daemon/store/db.js";
import { freePort } from "../helpers/ports.js";
import { type GuestImage, guestImage, realGuestSkipReason } from "../helpers/real-guest/image.js";
import { bootGuest, type RealGuest } from "../helpers/real-guest/qemu.js";
import { qgaCommand, waitForAgent } from "../helpers/real-guest/qga.js";
import { nocloudNetworkConfig, writeCidataIso } from "../helpers/real-guest/seed.js";

const run = promisify(execFile);
const skip = realGuestSkipReason();

const VMID = 4242;
const MAC = "BC:24:11:4A:42:01";
/** QEMU user network: the guest's DHCP address and DNS, and the address we forward to the listener. */
const GUEST_IP = "10.0.2.15";
const SLIRP_DNS = "10.0.2.3";
const CONTROLLER = { address: "10.0.2.100", port: 8844 };
const BOOT_DEADLINE_MS = 6 * 60_000;
/** What the final-message module prints on the console when cloud-init is done. */
const FINISHED =
  /Cloud-init v\. (\S+) finished at [^\n]*Datasource (\S+ \[[^\]\n]*\])[^\n]*Up ([\d.]+) seconds/;

interface Booted {
  guest: RealGuest;
  dir: string;
  sshPort: number;
  key: string;
  readyAfterMs: number;
  readyVia: string;
  finishedAfterMs: number;
  finished: RegExpMatchArray;
}

describe("real cloud-init reads our user-data in a real guest", { skip, timeout: 20 * 60_000 }, () => {
  let image: GuestImage;
  const cleanups: Array<() => Promise<void> | void> = [];
  before(async () => {
    image = await guestImage();
  });
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  async function ssh(booted: Booted, command: string): Promise<string> {
    const { stdout } = await run(
      "ssh",
      [
        ...["-i", booted.key, "-p", String(booted.sshPort), "-o", "BatchMode=yes"],
        ...["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"],
        ...["-o", "ConnectTimeout=20", "agent@127.0.0.1", command],
      ],
      { timeout: 60_000 },
    );
    return stdout;
  }

  /** Boot one sandbox the way agentlabd provisions it, up to READY by phone-home and cloud-init done. */
  async function boot(t: TestContext, options: { workspace?: string }): Promise<Booted> {
    const dir = mkdtempSync("/tmp/alg-");
    // AGENTLAB_REAL_GUEST_KEEP=1 keeps the serial log, seed and overlay for a look after the test.
    if (process.env.AGENTLAB_REAL_GUEST_KEEP === "1") t.diagnostic(`kept: ${dir}`);
    else cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const key = join(dir, "id_ed25519");
    await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "agentlab-test", "-f", key]);

    const now = () => new Date();
    const store = openStore(join(dir, "agentlab.db"), { now });
    const log = pino({ level: "silent" });
    const readiness = new GuestReadiness({
      tokens: new BootstrapTokens(createBootstrapTokenRepo(store), { now }),
      clock: { now },
      controllerUrl: `http://${CONTROLLER.address}:${CONTROLLER.port}`,
      listenAddress: "127.0.0.1:0",
      log,
    });
    // The forward arrives from 127.0.0.1: that is the "agent subnet" here.
    const listener = new GuestListener({ listen: "127.0.0.1:0", agentSubnet: "127.0.0.0/8", readiness, log });
    await listener.start();
    cleanups.push(async () => {
      await listener.close();
      store.close();
    });
    const listenerPort = Number(new URL(readiness.listener().url ?? "").port);
    const issued = readiness.issue(VMID);
    assert.equal(issued.controllerUrl, `http://${CONTROLLER.address}:${CONTROLLER.port}`);

    const userData = renderUserData({
      vmid: VMID,
      hostname: `sandbox-${VMID}`,
      sshPublicKey: readFileSync(`${key}.pub`, "utf8").trim(),
      bootstrap: { token: issued.token, controllerUrl: issued.controllerUrl },
    });
    const seedIso = join(dir, "cidata.iso");
    await writeCidataIso(seedIso, {
      userData,
      networkConfig: nocloudNetworkConfig([{ id: 0, mac: MAC, ip: "dhcp" }], {
        nameservers: [SLIRP_DNS],
        searchdomains: [],
      }),
    });

    const sshPort = await freePort();
    const ready = readiness.wait(VMID, AbortSignal.timeout(BOOT_DEADLINE_MS));
    const guest = await bootGuest({
      image,
      dir,
      seedIso,
      mac: MAC,
      sshHostPort: sshPort,
      guestForwards: [
        { guestAddress: CONTROLLER.address, guestPort: CONTROLLER.port, hostPort: listenerPort },
      ],
      ...(options.workspace ? { workspace: options.workspace } : {}),
    });
    cleanups.push(() => guest.stop());
    const report = await ready;
    const readyAfterMs = Date.now() - guest.spawnedAt;
    const { match: finished, afterMs: finishedAfterMs } = await guest.waitForSerial(
      FINISHED,
      BOOT_DEADLINE_MS,
    );
    t.diagnostic(
      `QEMU start -> phone-home ${(readyAfterMs / 1000).toFixed(1)} s, -> cloud-init finished ` +
        `${(finishedAfterMs / 1000).toFixed(1)} s (guest uptime ${finished[3]} s, cloud-init ${finished[1]})`,
    );
    const booted = {
      guest,
      dir,
      sshPort,
      key,
      readyAfterMs,
      readyVia: report.via,
      finishedAfterMs,
      finished,
    };
    // Where the boot's time went, for docs/performance.md and for tuning the image.
    const timing = await ssh(booted, "systemd-analyze; cloud-init analyze blame | head -n 12").catch(
      (e) => `${e}`,
    );
    for (const line of timing.trimEnd().split("\n")) t.diagnostic(line);
    return booted;
  }

  /**
   * A 256 MiB workspace disk: blank (as a new volume reads when the daemon had no host tools to format
   * it), or formatted as HostTools.mkfsExt4 does at `workspace create`.
   */
  async function makeWorkspace(options: { formatted: boolean }): Promise<string> {
    const workspace = join(mkdtempSync("/tmp/alg-ws-"), "workspace.raw");
    cleanups.push(() => rmSync(join(workspace, ".."), { recursive: true, force: true }));
    await run("truncate", ["-s", "256M", workspace]);
    if (options.formatted)
      await run("mkfs.ext4", ["-F", "-q", "-L", WORKSPACE_FS_LABEL, "-m", "0", workspace]);
    return workspace;
  }

  it("with a blank workspace on scsi1: NoCloud seed, phone-home, agent, guest agent, sshd, /work formatted", async (t) => {
    const workspace = await makeWorkspace({ formatted: false });

    const booted = await boot(t, { workspace });
    assert.equal(booted.readyVia, "phone-home");
    assert.equal(booted.finished[2], "DataSourceNoCloud [seed=/dev/sr0]");

    // The guest agent started by itself (udev starts it when its virtio port appears).
    await waitForAgent(booted.guest.qgaSocket, 60_000);
    assert.deepEqual(await qgaCommand(booted.guest.qgaSocket, "guest-ping"), {});
    const interfaces = (await qgaCommand(booted.guest.qgaSocket, "guest-network-get-interfaces")) as Array<{
      name: string;
      "hardware-address"?: string;
      "ip-addresses"?: Array<{ "ip-address": string; "ip-address-type": string }>;
    }>;
    const nic = interfaces.find((i) => i["hardware-address"] === MAC.toLowerCase());
    assert.ok(nic, `no interface with ${MAC}: ${JSON.stringify(interfaces)}`);
    // Named eth0 by cloud-init from network-config's mac_address match, as on Proxmox.
    assert.equal(nic.name, "eth0");
    assert.ok(nic["ip-addresses"]?.some((a) => a["ip-address"] === GUEST_IP));

    // sshd accepts the configured key for `agent`; what cloud-init wrote is where the daemon expects it.
    const facts = await ssh(
      booted,
      [
        "id -un",
        `stat -c '%U:%G %a' ${BOOTSTRAP_JSON_PATH}`,
        "findmnt -n -o FSTYPE,OPTIONS,LABEL /work || echo unmounted",
        "stat -c '%U' /work",
        "echo from-the-guest > /work/hello && sync && echo writable",
        "cloud-init status --long | sed -n 's/^status: //p'",
        "hostname",
        // cloud-init rendered the network for systemd-networkd (the image has no ifupdown).
        "ls /etc/systemd/network/ | grep -c '^10-cloud-init-eth0.network$'",
      ].join("; "),
    );
    const [user, bootstrap, mount, workOwner, writable, status, hostname, networkd] = facts
      .trim()
      .split("\n");
    assert.equal(user, "agent");
    assert.equal(bootstrap, "agent:agent 600");
    assert.match(mount ?? "", new RegExp(`^ext4\\s+\\S*noatime\\S*\\s+${WORKSPACE_FS_LABEL}$`));
    assert.equal(workOwner, "agent");
    assert.equal(writable, "writable");
    assert.equal(status, "done", `cloud-init status: ${facts}`);
    assert.equal(hostname, `sandbox-${VMID}`);
    assert.equal(networkd, "1");

    // The guest formatted the blank disk, and the file went to it, not to the root overlay.
    await booted.guest.stop();
    const { stdout: label } = await run("blkid", ["-p", "-s", "LABEL", "-o", "value", workspace]);
    assert.equal(label.trim(), WORKSPACE_FS_LABEL);
    const { stdout } = await run("debugfs", ["-R", "cat /hello", workspace]);
    assert.equal(stdout, "from-the-guest\n");
  });

  it("without a workspace: no wait for a missing disk; one attached later is mounted at /work at once", async (t) => {
    const booted = await boot(t, {});
    assert.equal(booted.readyVia, "phone-home");
    const facts = await ssh(
      booted,
      ["findmnt -n /work || echo unmounted", "cloud-init status --long | sed -n 's/^status: //p'"].join("; "),
    );
    assert.deepEqual(facts.trim().split("\n"), ["unmounted", "done"]);
    // Nothing in the boot waited for the workspace's device.
    const blame = await ssh(booted, "systemd-analyze blame --no-pager | head -n 15");
    for (const line of `slowest units:\n${blame}`.trimEnd().split("\n")) t.diagnostic(line);
    assert.doesNotMatch(blame, /AGENTLAB_WORK|work\.mount/);

    // Hot attach (as `workspace attach` to a running sandbox): the udev rule mounts it, no reboot.
    const workspace = await makeWorkspace({ formatted: true });
    await booted.guest.hotplugScsiDisk(workspace, 1);
    let mounted = "";
    for (const until = Date.now() + 120_000; Date.now() < until; ) {
      mounted = await ssh(booted, "findmnt -n -o LABEL /work && stat -c '%U' /work || true");
      if (mounted.trim()) break;
      await new Promise((resolve) => setTimeout(resolve, 2_000));
    }
    assert.deepEqual(mounted.trim().split("\n"), [WORKSPACE_FS_LABEL, "agent"]);
  });
});
