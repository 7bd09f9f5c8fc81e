/**
 * Real guests (knob `guests=qemu`): a VM start boots qemu-system-x86_64, daemonized, with the command
 * line qemu-server's `config_to_command` builds, cut down to what a Linux guest of agentlab needs
 * (src/PVE/QemuServer.pm, qemu-server 9.2.6):
 *
 * - `-chardev socket,id=qmp,path=/var/run/qemu-server/<vmid>.qmp,server=on,wait=off -mon
 *   chardev=qmp,mode=control`, `-pidfile /var/run/qemu-server/<vmid>.pid`, `-daemonize` (:3223-3239);
 * - the guest agent: `-chardev socket,path=/var/run/qemu-server/<vmid>.qga,server=on,wait=off,id=qga0
 *   -device virtio-serial,id=qga0 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0`
 *   when `agent` is enabled (:3459-3469);
 * - `serial0`: `-chardev socket,id=serial0,path=/var/run/qemu-server/<vmid>.serial0,server=on,wait=off`
 *   (:3335), here with `logfile=DIR/guests/<vmid>.serial.log` so the console is kept;
 * - disks on a `virtio-scsi-pci` controller `scsihw0`, `scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,
 *   lun=<n>,drive=drive-scsi<n>,id=scsi<n>`; the cloud-init drive as `ide-cd` with its ISO;
 * - `net<n>` as `-netdev type=tap,id=net<n>,ifname=tap<vmid>i<n>,script=…` (print_netdev_full,
 *   :1440-1476) whose script plugs the tap into the bridge like pve-bridge (nic-plug.ts).
 *
 * Different from qemu-server, on purpose (see the README's list): direct kernel boot of the guest
 * image's kernel and initrd, no `-no-shutdown` (no qmeventd here, so a guest that powers off ends its
 * QEMU), accel `tcg` unless a KVM probe succeeds, memory and vCPUs capped by knobs.
 *
 * Whether a VM runs follows the process, as `vm_running_locally` does (Helpers.pm:179-225): the pid in
 * the pid file must be a live process whose command line has that `-pidfile`.
 */
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { type CustomFiles, commitCloudinitDisk, readHostResolvConf, renderNocloud } from "./cloudinit-iso.js";
import type { Ctx } from "./context.js";
import type { Control } from "./control.js";
import { fail } from "./errors.js";
import { CLOUDINIT_RUN_DIR, hostRoot, QEMU_RUN_DIR } from "./host-files.js";
import { type MonitorCommand, monitorSync, type SyncOutcome } from "./monitor.js";
import { tapNetdev } from "./nic-plug.js";
import { fileFormat } from "./qcow2.js";
import { findStorage, findVolume, getStorage, splitVolid, volumeFile } from "./storage.js";
import type { VmRec } from "./types.js";
import {
  agentEnabled,
  DRIVE_KEY,
  isCdrom,
  isCloudinitVolume,
  parseDrive,
  parseNic,
  parseProps,
  propsGet,
} from "./vmconfig.js";

export function qemuMode(control: Control): boolean {
  return control.guests === "qemu";
}

export interface GuestImage {
  dir: string;
  rootfs: string;
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** The guest image named by the `guest_image` knob, or the start failure that says what is missing. */
export function guestImage(control: Control): GuestImage {
  const dir = control.guest_image;
  if (!dir) {
    throw fail(
      "start failed: pvesim guests=qemu needs a guest image: set the knob guest_image to the directory " +
        "scripts/dev/guest-image prints (pvesim control DIR --set guest_image=PATH)",
    );
  }
  const image: GuestImage = {
    dir,
    rootfs: join(dir, "rootfs.raw"),
    kernel: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.img"),
    cmdline: "",
  };
  const missing = ["manifest.json", "rootfs.raw", "vmlinuz", "initrd.img", "cmdline"].filter(
    (f) => !existsSync(join(dir, f)),
  );
  if (missing.length > 0) {
    throw fail(
      `start failed: pvesim guest image '${dir}' is incomplete (missing ${missing.join(", ")}): ` +
        "build it with scripts/dev/guest-image",
    );
  }
  image.cmdline = readFileSync(join(dir, "cmdline"), "utf8").trim();
  return image;
}

/** The run files of a VM's QEMU, below the host root (Helpers.pm:86-135). */
export function qemuPaths(dir: string, vmid: number) {
  const run = join(hostRoot(dir), QEMU_RUN_DIR);
  return {
    real: { pid: `${QEMU_RUN_DIR}/${vmid}.pid`, qmp: `${QEMU_RUN_DIR}/${vmid}.qmp` },
    run,
    pid: join(run, `${vmid}.pid`),
    qmp: join(run, `${vmid}.qmp`),
    qga: join(run, `${vmid}.qga`),
    serial0: join(run, `${vmid}.serial0`),
    serialLog: join(dir, "guests", `${vmid}.serial.log`),
  };
}

/** `instance_running_locally` (Helpers.pm:179-209): the pid file's process, if it is this QEMU and alive. */
export function qemuPid(pidfile: string): number | undefined {
  let pid: number;
  try {
    const line = readFileSync(pidfile, "utf8").trim();
    if (!/^\d+$/.test(line)) return undefined;
    pid = Number(line);
  } catch {
    return undefined;
  }
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    const at = args.indexOf("-pidfile");
    if (at < 0 || args[at + 1] !== pidfile) return undefined;
    // check_process_running: a zombie is not running.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    if (/\) Z /.test(stat)) return undefined;
    return pid;
  } catch {
    return undefined;
  }
}

export function vmQemuPid(ctx: Ctx, vm: VmRec): number | undefined {
  return vm.runtime.qemu ? qemuPid(qemuPaths(ctx.dir, vm.vmid).pid) : undefined;
}

/** A QMP command to the VM's QEMU, from the model (synchronous, bounded by QMPClient's timeout). */
export function qmp(ctx: Ctx, vm: VmRec, cmd: MonitorCommand, timeoutMs?: number): SyncOutcome {
  return monitorSync(qemuPaths(ctx.dir, vm.vmid).qmp, "qmp", `VM ${vm.vmid}`, cmd, timeoutMs);
}

/** Like `qmp`, but a failure (or QEMU's error answer) is the operation's error, as `mon_cmd` dies. */
export function qmpOrFail(ctx: Ctx, vm: VmRec, cmd: MonitorCommand, timeoutMs?: number): unknown {
  const out = qmp(ctx, vm, cmd, timeoutMs);
  if (!out.ok) throw fail(out.message);
  if (out.answer.error) throw fail(out.answer.error.desc);
  return out.answer.return;
}

// ---- accelerator ----

/**
 * KVM or TCG. `auto` probes once per simulator directory (cached in DIR/guests/accel.json): a KVM
 * guest must print the kernel's banner on its serial port within a few seconds, because on some
 * machines /dev/kvm opens fine but the vCPU never runs (a KVM boot then hangs silently).
 */
export function chooseAccel(ctx: Ctx, image: GuestImage): { accel: "kvm" | "tcg"; why: string } {
  const knob = ctx.control.guest_accel;
  if (knob === "kvm" || knob === "tcg") return { accel: knob, why: `knob guest_accel=${knob}` };
  const cache = join(ctx.dir, "guests", "accel.json");
  try {
    const cached = JSON.parse(readFileSync(cache, "utf8")) as { accel: "kvm" | "tcg"; why: string };
    if (cached.accel === "kvm" || cached.accel === "tcg") return cached;
  } catch {
    // not probed yet
  }
  const result = probeKvm(image);
  mkdirSync(join(ctx.dir, "guests"), { recursive: true });
  writeFileSync(cache, `${JSON.stringify(result)}\n`);
  return result;
}

const KVM_PROBE_MS = 6_000;

function probeKvm(image: GuestImage): { accel: "kvm" | "tcg"; why: string } {
  try {
    closeSync(openSync("/dev/kvm", "r+"));
  } catch (err) {
    return { accel: "tcg", why: `/dev/kvm not usable (${(err as NodeJS.ErrnoException).code})` };
  }
  const probe = spawnSync(
    "qemu-system-x86_64",
    [
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-m",
      "128",
      "-smp",
      "1",
      "-nodefaults",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-kernel",
      image.kernel,
      "-append",
      "console=ttyS0 panic=-1",
    ],
    { timeout: KVM_PROBE_MS, killSignal: "SIGKILL", encoding: "latin1", maxBuffer: 16 * 1024 * 1024 },
  );
  if (probe.stdout?.includes("Linux version")) return { accel: "kvm", why: "KVM probe booted a kernel" };
  const reason =
    probe.error && (probe.error as NodeJS.ErrnoException).code === "ETIMEDOUT"
      ? `no kernel output within ${KVM_PROBE_MS / 1000} s`
      : (probe.stderr ?? "").trim().split("\n").pop() || `exit ${probe.status}`;
  return { accel: "tcg", why: `KVM probe failed (${reason})` };
}

// ---- the command line ----

/** The volume file behind a drive's volid (undefined for `none`, `cdrom` and unknown volumes). */
export function driveFile(ctx: Ctx, vm: VmRec, file: string): string | undefined {
  if (!file.includes(":")) return undefined;
  const rec = findVolume(ctx.state, vm.node, file);
  if (!rec) return undefined;
  return volumeFile(ctx.dir, getStorage(ctx.state, rec.storage), rec.volname);
}

const NIC_DEVICES: Record<string, string> = {
  virtio: "virtio-net-pci",
  e1000: "e1000",
  e1000e: "e1000e",
  rtl8139: "rtl8139",
  vmxnet3: "vmxnet3",
};

function smbiosArgs(config: Record<string, string>): string[] {
  const smbios = config["smbios1"];
  if (!smbios) return [];
  const uuid = propsGet(parseProps(smbios), "uuid");
  return uuid ? ["-smbios", `type=1,uuid=${uuid}`] : [];
}

/** The `scsi-hd` device of a drive on the virtio-scsi-pci controller (print_drivedevice_full). */
export function scsiDevice(key: string): string {
  const lun = Number(key.slice(4));
  return `scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=${lun},drive=drive-${key},id=${key}`;
}

export function driveArg(key: string, file: string, cdrom: boolean): string {
  if (cdrom) return `file=${file},if=none,id=drive-${key},media=cdrom,format=raw,readonly=on`;
  return `file=${file},if=none,id=drive-${key},format=${fileFormat(file)},discard=unmap`;
}

export interface QemuCommand {
  args: string[];
  accel: string;
}

function buildCommand(ctx: Ctx, vm: VmRec, image: GuestImage, log: string[]): QemuCommand {
  const config = vm.config;
  const paths = qemuPaths(ctx.dir, vm.vmid);
  const { accel, why } = chooseAccel(ctx, image);
  log.push(`pvesim: accelerator ${accel} (${why})`);
  const memory = Math.min(Number(config["memory"] ?? 512), ctx.control.guest_memory_mb);
  const cores = Number(config["cores"] ?? 1) * Number(config["sockets"] ?? 1);
  const vcpus = Math.max(1, Math.min(cores, 2));
  const args = [
    "-name",
    `${config["name"] ?? `vm${vm.vmid}`},debug-threads=on`,
    "-chardev",
    `socket,id=qmp,path=${paths.qmp},server=on,wait=off`,
    "-mon",
    "chardev=qmp,mode=control",
    "-pidfile",
    paths.pid,
    "-daemonize",
    ...smbiosArgs(config),
    "-smp",
    String(vcpus),
    "-m",
    String(memory),
    "-accel",
    accel,
    ...(accel === "kvm" ? ["-cpu", "host"] : []),
    "-nodefaults",
    "-display",
    "none",
    "-chardev",
    `socket,id=serial0,path=${paths.serial0},server=on,wait=off,logfile=${paths.serialLog}`,
    "-device",
    "isa-serial,chardev=serial0",
    "-kernel",
    image.kernel,
    "-initrd",
    image.initrd,
    "-append",
    image.cmdline,
  ];
  if (agentEnabled(config["agent"])) {
    args.push(
      "-chardev",
      `socket,path=${paths.qga},server=on,wait=off,id=qga0`,
      "-device",
      "virtio-serial,id=qga0",
      "-device",
      "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    );
  }
  const keys = Object.keys(config).filter((k) => DRIVE_KEY.test(k));
  if (keys.some((k) => k.startsWith("scsi"))) args.push("-device", "virtio-scsi-pci,id=scsihw0");
  for (const key of keys.sort()) {
    const drive = parseDrive(config[key]!);
    const file = driveFile(ctx, vm, drive.file);
    const cloudinit = isCloudinitVolume(drive.file);
    if (!file) continue;
    if (key.startsWith("scsi")) {
      args.push("-drive", driveArg(key, file, isCdrom(drive)), "-device", scsiDevice(key));
    } else if (key.startsWith("ide") && (isCdrom(drive) || cloudinit)) {
      const index = Number(key.slice(3));
      args.push(
        "-drive",
        driveArg(key, file, true),
        "-device",
        `ide-cd,bus=ide.${Math.floor(index / 2)},unit=${index % 2},drive=drive-${key},id=${key}`,
      );
    } else {
      throw fail(
        `start failed: pvesim guests=qemu does not model drive '${key}' (use scsiN disks and an ideN cloud-init drive)`,
      );
    }
  }
  for (const key of Object.keys(config)
    .filter((k) => /^net\d+$/.test(k))
    .sort()) {
    const nic = parseNic(config[key]!, key);
    if (typeof nic === "string") throw fail(`start failed: unable to parse network config '${key}'`);
    const device = NIC_DEVICES[nic.model] ?? "virtio-net-pci";
    args.push(
      "-netdev",
      tapNetdev(ctx, vm, key, nic),
      "-device",
      `${device},mac=${nic.mac},netdev=${key},id=${key}`,
    );
  }
  return { args, accel };
}

// ---- start and stop ----

/** The `cicustom` snippets' texts (checked to exist by the start's checks). */
function customFiles(ctx: Ctx, config: Record<string, string>): CustomFiles {
  const out: CustomFiles = {};
  const cicustom = config["cicustom"];
  if (!cicustom) return out;
  for (const { key, value } of parseProps(cicustom)) {
    if (!["user", "network", "meta", "vendor"].includes(key)) continue;
    const { storage, volname } = splitVolid(value);
    const s = findStorage(ctx.state, storage);
    if (!s) throw fail(`storage '${storage}' does not exist`);
    out[key as keyof CustomFiles] = readFileSync(volumeFile(ctx.dir, s, volname), "utf8");
  }
  return out;
}

/** `generate_cloudinit_config` (Cloudinit.pm:701-725): every `vm-<vmid>-cloudinit` drive gets the ISO. */
function writeCloudinitDrives(ctx: Ctx, vm: VmRec, log: string[]): void {
  for (const [key, value] of Object.entries(vm.config)) {
    if (!DRIVE_KEY.test(key)) continue;
    const drive = parseDrive(value);
    if (!isCloudinitVolume(drive.file) || !drive.file.includes(`vm-${vm.vmid}-cloudinit`)) continue;
    if (vm.config["citype"] && vm.config["citype"] !== "nocloud") {
      throw fail(`start failed: pvesim guests=qemu only models citype nocloud, not '${vm.config["citype"]}'`);
    }
    const file = driveFile(ctx, vm, drive.file);
    if (!file) throw fail(`start failed: volume '${drive.file}' does not exist`);
    const files = renderNocloud(
      vm.config,
      vm.vmid,
      customFiles(ctx, vm.config),
      readHostResolvConf(hostRoot(ctx.dir)),
    );
    commitCloudinitDisk(
      files,
      join(hostRoot(ctx.dir), CLOUDINIT_RUN_DIR, String(vm.vmid)),
      file,
      "cidata",
      log,
    );
  }
}

/**
 * Boots the VM's QEMU (its config already merged): cloud-init ISO, command line, `-daemonize`, then
 * waits until QMP answers, as vm_start does before it returns. Throws the start failure; `log` gets
 * the task log lines (QEMU's own stderr included).
 */
export function launchQemu(ctx: Ctx, vm: VmRec, log: string[]): void {
  const image = guestImage(ctx.control);
  const paths = qemuPaths(ctx.dir, vm.vmid);
  if (qemuPid(paths.pid)) throw fail(`VM ${vm.vmid} already running`);
  mkdirSync(paths.run, { recursive: true });
  mkdirSync(join(ctx.dir, "guests"), { recursive: true });
  writeCloudinitDrives(ctx, vm, log);
  const { args } = buildCommand(ctx, vm, image, log);
  writeFileSync(
    join(ctx.dir, "guests", `${vm.vmid}.qemu-cmdline`),
    `${["qemu-system-x86_64", ...args].join(" ")}\n`,
  );
  const run = spawnSync("qemu-system-x86_64", args, {
    encoding: "utf8",
    timeout: 60_000,
    killSignal: "SIGKILL",
  });
  const output = `${run.stdout ?? ""}${run.stderr ?? ""}`.split("\n").filter((l) => l.trim() !== "");
  log.push(...output);
  if (run.error) throw fail(`start failed: ${run.error.message}`);
  if (run.status !== 0) throw fail(`start failed: QEMU exited with code ${run.status}`);
  const pid = qemuPid(paths.pid);
  if (!pid) throw fail("start failed: QEMU exited right after it daemonized (see the serial log)");
  vm.runtime.qemu = { pid };
  vm.runtime.pid = pid;
  const status = qmp(ctx, vm, { execute: "query-status" });
  if (!status.ok) {
    killQemu(ctx, vm, "SIGKILL");
    throw fail(`start failed: ${status.message}`);
  }
}

/** Signals the VM's QEMU if it is still the process of its pid file. */
export function killQemu(ctx: Ctx, vm: VmRec, signal: NodeJS.Signals): boolean {
  const pid = vmQemuPid(ctx, vm);
  if (!pid) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** What remains of a QEMU once it is gone: its sockets and pid file (QEMU removes the pid file itself). */
export function qemuGone(ctx: Ctx, vm: VmRec): void {
  const paths = qemuPaths(ctx.dir, vm.vmid);
  for (const f of [paths.qmp, paths.qga, paths.serial0]) rmSync(f, { force: true });
  if (!qemuPid(paths.pid)) rmSync(paths.pid, { force: true });
}

/** What a destroyed VM leaves of its real guest: run files and the generated bridge scripts. */
export function forgetQemu(ctx: Ctx, vm: VmRec): void {
  qemuGone(ctx, vm);
  const guests = join(ctx.dir, "guests");
  let names: string[] = [];
  try {
    names = readdirSync(guests);
  } catch {
    return;
  }
  for (const name of names) {
    if (
      name === `${vm.vmid}.qemu-cmdline` ||
      (name.startsWith(`${vm.vmid}.net`) && name.endsWith(".pve-bridge"))
    )
      rmSync(join(guests, name), { force: true });
  }
}

/**
 * pvestatd's view: a VM whose QEMU is gone (the guest powered off, QEMU crashed or was killed) is
 * stopped. Called before every model operation.
 */
export function observeQemus(ctx: Ctx, halt: (vm: VmRec) => void): void {
  for (const vm of Object.values(ctx.state.vms)) {
    if (vm.runtime.status !== "running" || !vm.runtime.qemu) continue;
    if (vmQemuPid(ctx, vm)) continue;
    halt(vm);
    qemuGone(ctx, vm);
  }
}
