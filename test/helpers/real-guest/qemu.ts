/**
 * Boot the guest image in a real QEMU the way Proxmox starts a VM with a cloud-init drive (qemu-server
 * `qm showcmd`): the root disk on a virtio-scsi controller (scsihw0, scsi0 = LUN 0, a workspace on scsi1 =
 * LUN 1), the cidata ISO as the IDE CD-ROM ide2, the guest agent's virtio-serial port
 * org.qemu.guest_agent.0, a virtio NIC. The root disk is a qcow2 overlay on the image's rootfs.raw, so
 * the image is never written. Differences from a Proxmox VM: the host's kernel and initrd are passed with
 * -kernel (no bootloader in the image), no VGA, and the NIC is on QEMU's user network (restricted: the
 * guest reaches nothing but the forwards given here) instead of a tap on vmbr1.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { GuestImage } from "./image.js";
import { qmp } from "./qmp.js";

const run = promisify(execFile);

const TCP_FORWARD = fileURLToPath(new URL("./tcp-forward.js", import.meta.url));

/** A guest address whose TCP port is forwarded to a host listener on 127.0.0.1. */
export interface GuestForward {
  guestAddress: string;
  guestPort: number;
  hostPort: number;
}

export interface BootOptions {
  image: GuestImage;
  /** Holds the overlay, the sockets and the serial log; keep its path short (unix socket paths). */
  dir: string;
  /** The cidata ISO (seed.ts writeCidataIso). */
  seedIso: string;
  mac: string;
  /** A disk image attached as scsi1, as `workspace attach` does. */
  workspace?: string;
  memoryMiB?: number;
  cpus?: number;
  /** Host port forwarded to the guest's sshd. */
  sshHostPort?: number;
  guestForwards?: GuestForward[];
}

export class RealGuest {
  readonly serialLog: string;
  readonly qgaSocket: string;
  readonly qmpSocket: string;
  readonly overlay: string;
  /** Date.now() when QEMU was spawned: the kernel starts within a fraction of a second of it. */
  readonly spawnedAt: number;
  private readonly exit: Promise<number | null>;

  constructor(
    readonly process: ChildProcess,
    paths: { serialLog: string; qgaSocket: string; qmpSocket: string; overlay: string },
  ) {
    this.serialLog = paths.serialLog;
    this.qgaSocket = paths.qgaSocket;
    this.qmpSocket = paths.qmpSocket;
    this.overlay = paths.overlay;
    this.spawnedAt = Date.now();
    this.exit = new Promise((resolve) => process.once("exit", (code) => resolve(code)));
  }

  serial(): string {
    return existsSync(this.serialLog) ? readFileSync(this.serialLog, "utf8") : "";
  }

  /**
   * Wait until the serial console shows `pattern`; resolves with the match and the milliseconds since
   * QEMU was spawned. Fails early, with the console's tail, when QEMU exits.
   */
  async waitForSerial(
    pattern: RegExp,
    timeoutMs: number,
  ): Promise<{ match: RegExpMatchArray; afterMs: number }> {
    const until = Date.now() + timeoutMs;
    let exited = false;
    void this.exit.then(() => (exited = true));
    for (;;) {
      const match = this.serial().match(pattern);
      if (match) return { match, afterMs: Date.now() - this.spawnedAt };
      if (exited || Date.now() > until) {
        const tail = this.serial().split("\n").slice(-30).join("\n");
        throw new Error(
          `${exited ? "QEMU exited" : `no ${pattern} on the serial console within ${timeoutMs} ms`}; console tail:\n${tail}`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  /** Attach a raw disk image to the running VM as scsi<lun> (LUN <lun> of scsihw0), a disk hot-plug. */
  async hotplugScsiDisk(file: string, lun: number): Promise<void> {
    await qmp(this.qmpSocket, [
      {
        execute: "blockdev-add",
        arguments: {
          "node-name": `drive-scsi${lun}`,
          driver: "raw",
          file: { driver: "file", filename: file },
        },
      },
      {
        execute: "device_add",
        arguments: {
          driver: "scsi-hd",
          bus: "scsihw0.0",
          channel: 0,
          "scsi-id": 0,
          lun,
          drive: `drive-scsi${lun}`,
          id: `scsi${lun}`,
        },
      },
    ]);
  }

  /** Kill QEMU (a destroyed VM's process is gone, whatever the guest was doing). */
  async stop(): Promise<void> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGKILL");
    await this.exit;
  }
}

/** The QEMU arguments for one boot: kept apart so a test can read what Proxmox-like command it ran. */
export function qemuArgs(
  options: BootOptions,
  paths: { serialLog: string; qgaSocket: string; qmpSocket: string; overlay: string },
): string[] {
  const netdev = ["user", "id=net0", "restrict=on"];
  if (options.sshHostPort) netdev.push(`hostfwd=tcp:127.0.0.1:${options.sshHostPort}-:22`);
  for (const fwd of options.guestForwards ?? []) {
    // One tcp-forward process per guest connection; QEMU splits options on commas, so none may appear.
    netdev.push(
      `guestfwd=tcp:${fwd.guestAddress}:${fwd.guestPort}-cmd:${process.execPath} ${TCP_FORWARD} ${fwd.hostPort}`,
    );
  }
  const args = [
    "-accel",
    "tcg",
    "-machine",
    "pc",
    "-m",
    String(options.memoryMiB ?? 1024),
    "-smp",
    String(options.cpus ?? 2),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    `file:${paths.serialLog}`,
    "-qmp",
    `unix:${paths.qmpSocket},server=on,wait=off`,
    "-kernel",
    options.image.vmlinuz,
    "-initrd",
    options.image.initrd,
    "-append",
    options.image.cmdline,
    "-device",
    "virtio-scsi-pci,id=scsihw0",
    "-drive",
    `file=${paths.overlay},if=none,id=drive-scsi0,format=qcow2,discard=on`,
    "-device",
    "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0",
    "-drive",
    `file=${options.seedIso},if=none,id=drive-ide2,media=cdrom,readonly=on`,
    "-device",
    "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2",
    "-chardev",
    `socket,path=${paths.qgaSocket},server=on,wait=off,id=qga0`,
    "-device",
    "virtio-serial,id=qga0",
    "-device",
    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    "-netdev",
    netdev.join(","),
    "-device",
    `virtio-net-pci,mac=${options.mac},netdev=net0,id=net0`,
  ];
  if (options.workspace) {
    args.push(
      "-drive",
      `file=${options.workspace},if=none,id=drive-scsi1,format=raw,discard=on`,
      "-device",
      "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=1,drive=drive-scsi1,id=scsi1",
    );
  }
  return args;
}

/** Make the overlay and start QEMU; the guest boots in the background. */
export async function bootGuest(options: BootOptions): Promise<RealGuest> {
  const paths = {
    serialLog: join(options.dir, "serial.log"),
    qgaSocket: join(options.dir, "qga.sock"),
    qmpSocket: join(options.dir, "qmp.sock"),
    overlay: join(options.dir, "root.qcow2"),
  };
  await run("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-F",
    "raw",
    "-b",
    options.image.rootfs,
    paths.overlay,
  ]);
  const child = spawn("qemu-system-x86_64", qemuArgs(options, paths), {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk) => (stderr += chunk.toString()));
  child.once("exit", (code) => {
    if (code) process.stderr.write(`qemu-system-x86_64 exited ${code}: ${stderr}\n`);
  });
  return new RealGuest(child, paths);
}
