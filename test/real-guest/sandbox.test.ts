/**
 * Real guests end to end on the shell backend: the simulator plays Proxmox, but every sandbox is a real
 * QEMU virtual machine (TCG) booted from the Debian guest image, with our cloud-init snippet read by real
 * cloud-init from a NoCloud seed, the real qemu-guest-agent behind the simulator's agent endpoints,
 * and its NIC a tap on vmbr1 in a namespace with the real ruleset and dnsmasq (test/real-guest/rig.ts).
 *
 * The tests share one rig and run in order; each boot costs one to two minutes of both cores under TCG,
 * so a sandbox serves several checks where that proves the same thing. Four boots in all: the first
 * sandbox (`sandbox new`), the job's sandbox, the smoke test's, and the first sandbox's reboot at its
 * revert. What passes from one test to the next is named in the describe's state below: `first`
 * (made by the first test, destroyed by the last) and the workspace `realws` with `jobId` (the job
 * writes /work/marker; it is then attached to `first`, survives its revert and is detached by its
 * destroy).
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  type GuestRig,
  guestRigSkipReason,
  INET,
  INET_NAME,
  LAN,
  RIG_LIFETIME_MS,
  startGuestRig,
  waitFor,
} from "./rig.js";

const skip = guestRigSkipReason();

interface SandboxJson {
  vmid: number;
  state: string;
  ip?: string;
  proxmox?: { found: boolean; status?: string };
  events?: { kind: string; msg?: string; payload?: Record<string, unknown> }[];
}

describe("real guests: sandboxes are real QEMU VMs", { skip, timeout: RIG_LIFETIME_MS }, () => {
  let rig: GuestRig;
  /** The first sandbox: checked by most tests, destroyed by the last one. */
  let first: { vmid: number; ip: string; mac: string };
  /** The job that wrote /work/marker into the workspace `realws`. */
  let jobId = "";
  const WORKSPACE = "realws";

  before(async () => {
    rig = await startGuestRig();
  });

  after(async () => {
    await rig?.stop();
  });

  const json = async <T>(args: string[]): Promise<T> => {
    const result = await rig.h.cli(["--json", ...args]);
    assert.equal(result.code, 0, `agentlab ${args.join(" ")}: ${result.stdout}\n${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  };
  const qm = (...args: string[]) =>
    rig.lab.must(rig.ns.host, "env", [
      `PATH=${rig.h.sim.env.PATH}`,
      `PVESIM_DIR=${rig.h.sim.dir}`,
      "qm",
      ...args,
    ]);
  const hostRun = (vmid: number, file: string) =>
    join(rig.h.sim.dir, "host", "run", "qemu-server", `${vmid}.${file}`);
  const qemuPid = (vmid: number): number | undefined => {
    try {
      const pid = Number(readFileSync(hostRun(vmid, "pid"), "utf8").trim());
      process.kill(pid, 0);
      return pid;
    } catch {
      return undefined;
    }
  };

  test("sandbox new: READY by the real guest's phone-home, its address from the real guest agent", async () => {
    const started = Date.now();
    const created = await json<SandboxJson>(["sandbox", "new", "--profile", "yolo-ephemeral", "--ttl", "2h"]);
    assert.equal(created.state, "RUNNING");
    assert.match(created.ip ?? "", /^10\.77\.0\.\d+$/);
    const bootSeconds = Math.round((Date.now() - started) / 1000);

    const shown = await json<SandboxJson>(["sandbox", "show", String(created.vmid)]);
    assert.equal(shown.proxmox?.found, true);
    assert.equal(shown.proxmox?.status, "running", "live status from the running QEMU");
    const ready = shown.events?.find((e) => e.kind === "sandbox.slo.ready");
    assert.ok(ready, JSON.stringify(shown.events));
    assert.equal(
      ready.payload?.via,
      "phone-home",
      "the guest's own report, not the agent poll, made it READY",
    );
    assert.ok(qemuPid(created.vmid), "a QEMU process runs the VM");

    const config = await qm("config", String(created.vmid));
    const mac = /^net0: virtio=([0-9A-Fa-f:]{17}),/m.exec(config)?.[1];
    assert.ok(mac, config);
    // The simulator's agent endpoint answers with the real qemu-guest-agent's view of the guest.
    const ifaces = JSON.parse(await qm("guest", "cmd", String(created.vmid), "network-get-interfaces")) as {
      "hardware-address"?: string;
      "ip-addresses"?: { "ip-address": string }[];
    }[];
    const eth = ifaces.find((i) => i["hardware-address"]?.toLowerCase() === mac.toLowerCase());
    assert.ok(eth, JSON.stringify(ifaces));
    assert.ok(
      eth["ip-addresses"]?.some((a) => a["ip-address"] === created.ip),
      `the agent reports ${created.ip}: ${JSON.stringify(eth)}`,
    );
    assert.equal(rig.lease(mac), created.ip, "the address is dnsmasq's DHCP lease");
    first = { vmid: created.vmid, ip: created.ip!, mac };
    console.log(`real guest ${created.vmid}: sandbox new -> RUNNING in ${bootSeconds} s`);
  });

  test("inside the guest: cloud-init's user, key, bootstrap file and guest agent are real", async () => {
    const who = await rig.ssh(
      first.ip,
      "id -un; hostname; stat -c '%U %a' /etc/agentlab/bootstrap.json; systemctl is-active qemu-guest-agent; cloud-init status",
    );
    assert.equal(who.code, 0, who.stderr);
    const [user, , bootstrap, agent, status] = who.stdout.trim().split("\n");
    assert.equal(user, "agent");
    assert.equal(bootstrap, "agent 600", "bootstrap.json is the agent's, mode 0600");
    assert.equal(agent, "active");
    assert.match(status ?? "", /status: done/);
    const ds = await rig.ssh(first.ip, "sudo cat /run/cloud-init/status.json");
    const statusJson = JSON.parse(ds.stdout) as {
      v1: { datasource: string } & Record<string, { errors?: unknown[] } | string | null>;
    };
    // NoCloud from the seed on the cloud-init drive (NoCloudNet when it is picked up in the net stage).
    assert.match(
      statusJson.v1.datasource,
      /^DataSourceNoCloud(Net)? \[seed=\/dev\/sr0\]/,
      "our snippet came from the seed",
    );
    for (const [stage, value] of Object.entries(statusJson.v1)) {
      if (value && typeof value === "object")
        assert.deepEqual(value.errors ?? [], [], `cloud-init ${stage}: no errors`);
    }
  });

  test("agentlab ssh: the host key the real guest reported is what its sshd presents; a command's output and exit status", async () => {
    const shown = await json<SandboxJson & { ssh_host_keys?: string[] }>([
      "sandbox",
      "show",
      String(first.vmid),
    ]);
    assert.ok((shown.ssh_host_keys ?? []).length > 0, "the guest reported its host keys at phone-home");
    const result = await rig.h.cli(
      ["ssh", String(first.vmid), "--identity", rig.key, "--", "id -un; exit 5"],
      { SSH_AUTH_SOCK: "", AGENTLAB_SSH_KEYS_DIR: join(rig.dir, "no-keys") },
    );
    assert.equal(result.code, 5, result.stderr);
    assert.equal(result.stdout, "agent\n");
  });

  test("sandbox exec and sandbox cp in the real guest: output and exit status, a file round trip byte for byte", async () => {
    const exec = await rig.h.cli([
      "sandbox",
      "exec",
      String(first.vmid),
      "--",
      "sh",
      "-c",
      "id -un; echo to-stderr >&2; exit 3",
    ]);
    assert.equal(exec.code, 3, exec.stderr);
    assert.equal(exec.stdout, "agent\n");
    assert.match(exec.stderr, /to-stderr/);
    // 3 MiB of random bytes up and down again (several chunks each way), through the guest's own sshd.
    const local = join(rig.dir, "cp-payload.bin");
    writeFileSync(local, randomBytes(3 * 1024 * 1024 + 7));
    const up = await rig.h.cli(["sandbox", "cp", local, `${first.vmid}:/tmp/payload.bin`]);
    assert.equal(up.code, 0, up.stderr);
    const back = join(rig.dir, "cp-back.bin");
    const down = await rig.h.cli(["sandbox", "cp", `${first.vmid}:/tmp/payload.bin`, back]);
    assert.equal(down.code, 0, down.stderr);
    const sha = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");
    assert.equal(sha(back), sha(local));
    const remote = await rig.h.cli([
      "sandbox",
      "exec",
      String(first.vmid),
      "--",
      "sha256sum",
      "/tmp/payload.bin",
    ]);
    assert.equal(remote.stdout.split(" ")[0], sha(local), "the guest holds the same bytes");
  });

  test("isolation from inside a real guest: the Internet yes; the LAN, the host's 8006 and 22 no; spoofing dropped", async () => {
    const probe = async (host: string, port: number, from?: string) => {
      const bind = from ? `--interface ${from} ` : "";
      const result = await rig.ssh(
        first.ip,
        `curl -s -o /dev/null ${bind}--connect-timeout 3 -m 5 http://${host}:${port}/; echo $?`,
      );
      const code = Number(result.stdout.trim().split("\n").pop());
      // 28: timeout (dropped); 7: refused (someone answered with a reset); 52/56/0: connected.
      return code === 28 ? "timeout" : code === 7 ? "refused" : "open";
    };
    assert.equal(await probe(INET, 8080), "open", "the Internet is reachable");
    assert.equal(await probe(INET_NAME, 8080), "open", "by name, through the host's DNS");
    assert.equal(await probe(LAN, 8080), "timeout", "the LAN is not");
    assert.equal(await probe("10.77.0.1", 8006), "timeout", "the Proxmox API port is not");
    assert.equal(await probe("10.77.0.1", 22), "timeout", "the host's sshd is not");
    const listener = await probe("10.77.0.1", 8844);
    assert.notEqual(listener, "timeout", "the guest listener is");
    // A second address on eth0 that the daemon did not bind: its packets are dropped at the bridge.
    const spoofed = "10.77.0.99";
    const add = await rig.ssh(
      first.ip,
      `sudo ip addr add ${spoofed}/16 dev $(ip -o -4 route show default | awk '{print $5}')`,
    );
    assert.equal(add.code, 0, add.stderr);
    try {
      assert.equal(await probe(INET, 8080, spoofed), "timeout", "a spoofed source gets nowhere");
      assert.equal(await probe(INET, 8080), "open", "the bound address still works");
    } finally {
      await rig.ssh(
        first.ip,
        `sudo ip addr del ${spoofed}/16 dev $(ip -o -4 route show default | awk '{print $5}')`,
      );
    }
  });

  test("job run with a workspace: the real runner, started by systemd as agent, clones from the Internet side into /work", async () => {
    const ws = await rig.h.cli(["--json", "workspace", "create", "--name", WORKSPACE, "--size", "1G"]);
    assert.equal(ws.code, 0, `${ws.stdout}\n${ws.stderr}`);
    const run = await rig.h.cli([
      "--json",
      "job",
      "run",
      "--repo",
      rig.repoUrl,
      "--task",
      "prove the real guest",
      "--profile",
      "yolo-ephemeral",
      "--workspace",
      WORKSPACE,
      "--wait",
      "--wait-timeout",
      "15m",
    ]);
    assert.equal(run.code, 0, `${run.stdout}\n${run.stderr}\n${rig.h.daemonOutput().stderr.slice(-4000)}`);
    const job = JSON.parse(run.stdout) as {
      id: string;
      status: string;
      result?: { result?: { commit?: string; output_tail?: string } };
    };
    assert.equal(job.status, "COMPLETED");
    const result = job.result?.result;
    const out = result?.output_tail ?? "";
    assert.equal(result?.commit, rig.repoHead);
    assert.match(out, new RegExp(`real-guest job: user=agent dir=/work/repo head=${rig.repoHead}`));
    assert.match(out, /real-guest job: task=prove the real guest/);
    assert.match(out, /bootstrap\.json present/);
    assert.match(
      out,
      /real-guest job: work=ext4 +\S*noatime\S* owner=agent/,
      "the workspace is /work, the agent's",
    );
    assert.match(out, /real-guest job: marker written/);
    jobId = job.id;
  });

  test("init --smoke-test: every step passes, the network checks over real ssh into the guest", async () => {
    const net = (value: string) => `--smoke-net-arg=${value}`;
    const result = await rig.h.cli([
      "init",
      "--smoke-test",
      "--smoke-profile",
      "yolo-ephemeral",
      "--smoke-exec",
      `ssh -i ${rig.key} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR agent@{ip}`,
      net("--dns-name"),
      net(INET_NAME),
      net("--egress"),
      net(`${INET}:8080`),
      net("--lan"),
      net(`${LAN}:8080`),
      net("--spoof-ip"),
      net(first.ip),
      "--smoke-timeout",
      "900",
    ]);
    const out = result.stdout;
    assert.equal(result.code, 0, `${out}\n${result.stderr}\n${rig.h.daemonOutput().stderr.slice(-4000)}`);
    for (const check of [
      "exec",
      "dns",
      "egress",
      "host-bootstrap-reach",
      "host-block-8006",
      "host-block-22",
      "lan-block",
      "spoof-block",
    ]) {
      assert.match(out, new RegExp(`^  PASS ${check}`, "m"), out);
    }
    assert.match(out, /^\[smoke\] job: ok job_\w+ COMPLETED/m);
    assert.match(out, /^\[smoke\] PASS$/m);
  });

  test("the workspace's data outlives the job's sandbox: hot-attached to the running first sandbox, it is at /work at once", async () => {
    // The job's sandbox was destroyed when the job ended (yolo-ephemeral), and its destroy detached
    // the workspace.
    await waitFor("the job's sandbox to let go of the workspace", 300_000, async () => {
      const shown = await json<{ attached_vmid?: number }>(["workspace", "show", WORKSPACE]);
      return shown.attached_vmid === undefined ? true : undefined;
    });
    const attached = await json<{ vmid: number; live: boolean }>([
      "workspace",
      "attach",
      WORKSPACE,
      String(first.vmid),
    ]);
    assert.equal(attached.vmid, first.vmid);
    assert.equal(attached.live, true, "the running QEMU has the disk now");
    // The guest's udev rule mounts the workspace as it appears: no reboot.
    const read = await waitFor("the hot-attached workspace at /work", 120_000, async () => {
      const r = await rig.ssh(
        first.ip,
        "cat /work/marker && test -x /work/repo/.agentlab/run.sh && echo repo-kept",
      );
      return r.code === 0 ? r.stdout : undefined;
    });
    assert.deepEqual(read.trim().split("\n"), [jobId, "repo-kept"]);
  });

  test("sandbox revert: a file deleted under / after the clean snapshot comes back; /work is not rolled back", async () => {
    const rm = await rig.ssh(
      first.ip,
      "sudo rm /usr/bin/jq && ! test -e /usr/bin/jq && echo after-the-snapshot > /work/kept && sync && echo gone",
    );
    assert.equal(rm.stdout.trim(), "gone", rm.stderr);
    const reverted = await rig.h.cli(["--json", "sandbox", "revert", "--force", String(first.vmid)]);
    assert.equal(reverted.code, 0, `${reverted.stdout}\n${reverted.stderr}`);
    const shown = await json<SandboxJson>(["sandbox", "show", String(first.vmid)]);
    assert.equal(shown.state, "RUNNING");
    first.ip = shown.ip ?? first.ip;
    const back = await waitFor("ssh after the revert", 300_000, async () => {
      const r = await rig.ssh(first.ip, "test -x /usr/bin/jq && echo back");
      return r.stdout.trim() === "back" ? true : undefined;
    });
    assert.equal(back, true);
    // The workspace went out of the config for the rollback and back in: mounted at boot, untouched.
    const work = await waitFor("/work after the revert", 120_000, async () => {
      const r = await rig.ssh(first.ip, "cat /work/kept /work/marker");
      return r.code === 0 ? r.stdout : undefined;
    });
    assert.deepEqual(work.trim().split("\n"), ["after-the-snapshot", jobId]);
  });

  test("sandbox destroy: the QEMU process is gone, the disk overlay removed, no tap left", async () => {
    const pid = qemuPid(first.vmid);
    assert.ok(pid, "running before");
    const disk = JSON.parse(
      await rig.lab
        .must(rig.ns.host, "env", [
          `PATH=${rig.h.sim.env.PATH}`,
          `PVESIM_DIR=${rig.h.sim.dir}`,
          "pvesm",
          "path",
          /^scsi0: ([^,\n]+)/m.exec(await qm("config", String(first.vmid)))![1]!,
        ])
        .then((out) => JSON.stringify(out.trim())),
    ) as string;
    assert.ok(existsSync(disk), `the overlay ${disk} exists before`);
    const destroyed = await rig.h.cli(["sandbox", "destroy", String(first.vmid)]);
    assert.equal(destroyed.code, 0, destroyed.stderr);
    assert.equal(qemuPid(first.vmid), undefined, "no QEMU left");
    // QEMU removes its pid file on its way out; the process itself ends a moment later.
    const gone = await waitFor(`QEMU pid ${pid} to end`, 10_000, async () => {
      try {
        process.kill(pid, 0);
        return undefined;
      } catch {
        return true;
      }
    });
    assert.equal(gone, true, `QEMU pid ${pid} is gone`);
    assert.equal(existsSync(disk), false, "the overlay is removed");
    const taps = await rig.lab.must(rig.ns.host, "ip", ["-o", "link", "show"]);
    assert.doesNotMatch(taps, new RegExp(`tap${first.vmid}i0`), "no tap left");
    const ws = await json<{ attached_vmid?: number; last_attached_vmid?: number }>([
      "workspace",
      "show",
      WORKSPACE,
    ]);
    assert.equal(ws.attached_vmid, undefined, "the workspace is detached, not destroyed with the sandbox");
    assert.equal(ws.last_attached_vmid, first.vmid);
  });
});
