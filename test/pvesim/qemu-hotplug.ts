/**
 * Disk hot-plug on a real guest (guests=qemu), as qemu-server's `vm_deviceplug`/`vm_deviceunplug` do
 * for a SCSI disk on the virtio-scsi-pci controller (src/PVE/QemuServer.pm:3901-4060, before the
 * -blockdev switch of machine 10.0): `drive_add auto "<drive>"` over the human monitor (`qemu_driveadd`,
 * :4097-4116, "OK" or `adding drive failed: <answer>`), then `device_add` of the `scsi-hd`; unplug is
 * `device_del` (the drive made by drive_add goes with its device). Only `scsiN` disks are modelled;
 * other drive changes of a running real guest are refused with a clear error.
 */
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import { driveArg, driveFile, qmpOrFail } from "./qemu.js";
import { isReal } from "./qemu-power.js";
import type { VmRec } from "./types.js";
import { isCdrom, parseDrive } from "./vmconfig.js";

const needsQemu = (vm: VmRec): boolean => isReal(vm) && vm.runtime.status === "running";

function refuse(key: string): never {
  throw fail(`pvesim: hot-plug of '${key}' is not modelled for real guests (guests=qemu); only scsiN disks`);
}

/** Before `key` gets `value` in a running real guest's config: plug the disk into QEMU. */
export function hotplugDrive(ctx: Ctx, vm: VmRec, key: string, value: string): void {
  if (!needsQemu(vm)) return;
  if (!key.startsWith("scsi")) refuse(key);
  const drive = parseDrive(value);
  const file = driveFile(ctx, vm, drive.file);
  if (!file) throw fail(`volume '${drive.file}' does not exist`);
  if (vm.config[key] !== undefined) unplugDrive(ctx, vm, key);
  const answer = qmpOrFail(ctx, vm, {
    execute: "human-monitor-command",
    arguments: { "command-line": `drive_add auto "${driveArg(key, file, isCdrom(drive))}"` },
  });
  if (!/OK/.test(String(answer))) throw fail(`adding drive failed: ${String(answer).trim()}`);
  qmpOrFail(ctx, vm, {
    execute: "device_add",
    arguments: {
      driver: "scsi-hd",
      bus: "scsihw0.0",
      channel: 0,
      "scsi-id": 0,
      lun: Number(key.slice(4)),
      drive: `drive-${key}`,
      id: key,
    },
  });
}

/** Before `key` leaves a running real guest's config: unplug the disk from QEMU. */
export function unplugDrive(ctx: Ctx, vm: VmRec, key: string): void {
  if (!needsQemu(vm)) return;
  if (!key.startsWith("scsi")) refuse(key);
  qmpOrFail(ctx, vm, { execute: "device_del", arguments: { id: key } });
}
