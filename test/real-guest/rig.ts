/**
 * The rig of the real-guest suite: the guest image (scripts/dev/guest-image, cached), the sandbox
 * network in namespaces (scripts/dev/guest-net: vmbr1 with the real ruleset and dnsmasq, a LAN and an
 * "Internet"), agentlabd on the shell backend inside the host namespace with the simulator in
 * `guests: qemu` mode, an ssh key the daemon puts into every guest, a git daemon on the Internet side,
 * and ssh into a guest as `agent`. Everything runs as root; nothing is added to the machine's namespace.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { execa } from "execa";
import { REPO_ROOT } from "../helpers/paths.js";
import { guestImage } from "../helpers/real-guest/image.js";
import { type NetnsSimHost, startSimHostInNetns } from "../helpers/smoke-host.js";
import { NetnsLab, netnsSkipReason, removeStaleNamespaces } from "../system/netns.js";

export const GUEST_NET = join(REPO_ROOT, "scripts/dev/guest-net");
export const INET = "203.0.113.2";
export const LAN = "192.168.50.2";
export const BRIDGE = "10.77.0.1";
/** A name the rig's dnsmasq resolves to the Internet host (there is no upstream resolver). */
export const INET_NAME = "inet.agentlab.test";

/** The longest a suite may use the rig: its listeners live this long (the describe's timeout). */
export const RIG_LIFETIME_MS = 3_600_000;

/** Why the suite cannot run here, or undefined. */
export function guestRigSkipReason(): string | undefined {
  const netns = netnsSkipReason();
  if (netns) return netns;
  for (const tool of ["qemu-system-x86_64", "qemu-img", "genisoimage", "dnsmasq", "ssh", "git"]) {
    const found = spawnSync("sh", ["-c", `PATH=$PATH:/usr/sbin command -v ${tool}`], { encoding: "utf8" });
    if (found.status !== 0) return `${tool} is missing (scripts/test.sh installs it as root)`;
  }
  return undefined;
}

export interface GuestRig {
  lab: NetnsLab;
  ns: { host: string; lan: string; inet: string };
  h: NetnsSimHost;
  image: string;
  /** Private key that every guest's `agent` accepts. */
  key: string;
  /** The git URL of the job repository on the Internet side. */
  repoUrl: string;
  /** HEAD of that repository. */
  repoHead: string;
  dir: string;
  /** A command inside a guest as `agent`, over real ssh from the host namespace. */
  ssh(
    ip: string,
    command: string,
    timeoutMs?: number,
  ): Promise<{ code: number; stdout: string; stderr: string }>;
  /** The dnsmasq lease of a MAC, if any. */
  lease(mac: string): string | undefined;
  stop(): Promise<void>;
}

const RUN_SH = `#!/bin/sh
# The job of the real-guest suite: who runs it, where, on which commit, and that the guest's network
# reaches the Internet side.
echo "real-guest job: user=$(id -un) dir=$PWD head=$(git rev-parse HEAD)"
echo "real-guest job: task=$AGENTLAB_TASK"
test -f /etc/agentlab/bootstrap.json && echo "real-guest job: bootstrap.json present"
echo "real-guest job: work=$(findmnt -n -o FSTYPE,OPTIONS /work) owner=$(stat -c %U /work)"
echo "$AGENTLAB_JOB_ID" > /work/marker && echo "real-guest job: marker written"
echo "real-guest job: done"
`;

function makeRepo(root: string): { base: string; head: string } {
  const base = join(root, "git");
  const source = join(base, "job.git");
  mkdirSync(join(source, ".agentlab"), { recursive: true });
  writeFileSync(join(source, ".agentlab/run.sh"), RUN_SH, { mode: 0o755 });
  const git = (...args: string[]) =>
    execFileSync("git", ["-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", source, ...args], {
      encoding: "utf8",
    });
  execFileSync("git", ["init", "-q", "-b", "main", source]);
  git("add", ".");
  git("commit", "-q", "-m", "the real-guest job");
  return { base, head: git("rev-parse", "HEAD").trim() };
}

export async function startGuestRig(knobs: Record<string, unknown> = {}): Promise<GuestRig> {
  await removeStaleNamespaces();
  const lab = new NetnsLab();
  const dir = mkdtempSync(join(tmpdir(), "agentlab-real-guest-"));
  const image = (await guestImage()).dir;
  const up = await execa(GUEST_NET, ["up", lab.id, join(dir, "net")], { reject: false, timeout: 120_000 });
  if (up.exitCode !== 0) throw new Error(`guest-net up: ${up.stderr}`);
  const ns = { host: `${lab.id}-host`, lan: `${lab.id}-lan`, inet: `${lab.id}-inet` };
  writeFileSync(join(dir, "net", "dnsmasq.hosts"), `${INET} ${INET_NAME}\n`);
  execFileSync("kill", ["-HUP", readFileSync(join(dir, "net", "dnsmasq.pid"), "utf8").trim()]);

  const key = join(dir, "id_ed25519");
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "agentlab-real-guest", "-f", key]);
  chmodSync(key, 0o600);

  const repo = makeRepo(dir);
  const gitDaemon = spawn(
    "ip",
    [
      "netns",
      "exec",
      ns.inet,
      "git",
      "daemon",
      "--reuseaddr",
      "--export-all",
      `--base-path=${repo.base}`,
      `--listen=${INET}`,
      "--port=9418",
      repo.base,
    ],
    { stdio: "ignore" },
  );
  // Listeners that make every "blocked" probe meaningful: a drop is a timeout, an answer is a leak.
  // They live as long as the suite may (its describe's timeout): on 2 loaded cores its four TCG boots
  // took 25 min, and the smoke test's egress check found the Internet's 8080 refused once netprobe's
  // default 10 minutes were up.
  const listenFor = { maxMs: RIG_LIFETIME_MS };
  await lab.listen(ns.lan, { tcp: [22, 80, 8080] }, listenFor);
  await lab.listen(ns.inet, { tcp: [8080] }, listenFor);
  await lab.listen(ns.host, { tcp: [22, 8006] }, listenFor);

  let h: NetnsSimHost;
  try {
    h = await startSimHostInNetns(
      ns.host,
      [
        "bootstrap_listen: 10.77.0.1:8844",
        `ssh_public_key_path: ${key}.pub`,
        // TCG boots take a minute or more on a loaded 2-core machine.
        "provisioning_timeout: 900s",
        "proxmox_command_timeout: 120s",
        "",
      ].join("\n"),
      { knobs: { guests: "qemu", guest_image: image, ...knobs } as never },
    );
  } catch (error) {
    gitDaemon.kill();
    await execa(GUEST_NET, ["down", lab.id, join(dir, "net")], { reject: false });
    throw error;
  }

  const rig: GuestRig = {
    lab,
    ns,
    h,
    image,
    key,
    repoUrl: `git://${INET}/job.git`,
    repoHead: repo.head,
    dir,
    async ssh(ip, command, timeoutMs = 60_000) {
      const result = await execa(
        "ip",
        [
          "netns",
          "exec",
          ns.host,
          "ssh",
          "-i",
          key,
          "-o",
          "BatchMode=yes",
          "-o",
          "StrictHostKeyChecking=no",
          "-o",
          "UserKnownHostsFile=/dev/null",
          "-o",
          "LogLevel=ERROR",
          "-o",
          "ConnectTimeout=10",
          `agent@${ip}`,
          command,
        ],
        { reject: false, timeout: timeoutMs, stdin: "ignore" },
      );
      return { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
    },
    lease(mac) {
      let text = "";
      try {
        text = readFileSync(join(dir, "net", "dnsmasq.leases"), "utf8");
      } catch {
        return undefined;
      }
      const line = text
        .split("\n")
        .reverse()
        .find((l) => l.split(" ")[1]?.toLowerCase() === mac.toLowerCase());
      return line?.split(" ")[2];
    },
    async stop() {
      await h.stop();
      gitDaemon.kill();
      await lab.destroy();
      await execa(GUEST_NET, ["down", lab.id, join(dir, "net")], { reject: false });
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

/** Polls `check` until it returns a value or the time is up. */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  check: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(1000);
  }
}
