/**
 * The guest side of the workspace contract (docs/workspaces-design.md §12.2), as files the sandbox's
 * user-data writes: the workspace is the disk attached as scsi1, an ext4 filesystem labelled
 * AGENTLAB_WORK, mounted at /work (noatime) and owned by `agent`; a blank disk (no filesystem signature,
 * first MiB all zeros) is formatted first, any other disk never is.
 *
 * Everything hangs off udev, not off boot ordering: a udev rule makes the disk's device want the units,
 * so the workspace is handled at boot, on a hot attach and on the first boot after a later `workspace
 * attach`, and a sandbox without a workspace waits for nothing. Not cloud-init's `mounts`: it drops a
 * `LABEL=` spec, and any disk missing at first boot, for good (cc_mounts sanitize_devname returns None:
 * "Ignoring nonexistent named mount"). Not `systemctl enable` either: every enable reloads systemd,
 * which costs seconds on a small guest.
 */

/** The workspace's filesystem label (the daemon's WORKSPACE_FS_LABEL) and where the guest mounts it. */
export const WORKSPACE_LABEL = "AGENTLAB_WORK";
export const WORKSPACE_MOUNT_POINT = "/work";
/** systemd's name for the device of a filesystem labelled AGENTLAB_WORK (`systemd-escape --path`). */
const WORKSPACE_DEVICE = `dev-disk-by\\x2dlabel-${WORKSPACE_LABEL}`;
/**
 * The end of udev's ID_PATH for scsi1: qemu-server puts disk scsiN at `scsi-id=0,lun=N` on its
 * virtio-scsi controller (one per disk with virtio-scsi-single), so the guest sees it at H:0:0:1.
 */
export const WORKSPACE_SCSI_ADDRESS = "0:0:0:1";

export const WORKSPACE_MOUNT_UNIT_PATH = "/etc/systemd/system/work.mount";
export const WORKSPACE_OWNER_UNIT_PATH = "/etc/systemd/system/agentlab-work-owner.service";
export const WORKSPACE_FORMAT_UNIT_PATH = "/etc/systemd/system/agentlab-work-format@.service";
export const WORKSPACE_FORMAT_SCRIPT_PATH = "/usr/local/lib/agentlab/format-workspace";
export const WORKSPACE_UDEV_RULE_PATH = "/etc/udev/rules.d/90-agentlab-work.rules";

export const WORKSPACE_UDEV_RULE = `# agentlab: the workspace (scsi1) is mounted at ${WORKSPACE_MOUNT_POINT}; a blank one is formatted first.
SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="${WORKSPACE_LABEL}", ENV{SYSTEMD_WANTS}+="work.mount agentlab-work-owner.service"
SUBSYSTEM=="block", ENV{DEVTYPE}=="disk", ENV{ID_PATH}=="*-scsi-${WORKSPACE_SCSI_ADDRESS}", ENV{ID_FS_TYPE}!="?*", ENV{ID_PART_TABLE_TYPE}!="?*", ENV{SYSTEMD_WANTS}+="agentlab-work-format@%k.service"
`;

export const WORKSPACE_MOUNT_UNIT = `[Unit]
Description=agentlab workspace (ext4 labelled ${WORKSPACE_LABEL})
Requires=systemd-fsck@${WORKSPACE_DEVICE}.service
After=systemd-fsck@${WORKSPACE_DEVICE}.service

[Mount]
What=/dev/disk/by-label/${WORKSPACE_LABEL}
Where=${WORKSPACE_MOUNT_POINT}
Type=ext4
Options=noatime
`;

/** A new workspace's root directory is root's (mkfs): the agent, who works in it, gets it. */
export const WORKSPACE_OWNER_UNIT = `[Unit]
Description=agentlab workspace: ${WORKSPACE_MOUNT_POINT} belongs to the agent user
BindsTo=work.mount
After=work.mount

[Service]
Type=oneshot
ExecStart=/bin/chown agent:agent ${WORKSPACE_MOUNT_POINT}
`;

export const WORKSPACE_FORMAT_UNIT = `[Unit]
Description=agentlab workspace: format the blank disk /dev/%I
BindsTo=dev-%i.device
After=dev-%i.device

[Service]
Type=oneshot
ExecStart=${WORKSPACE_FORMAT_SCRIPT_PATH} /dev/%I
`;

/**
 * POSIX sh, run as `format-workspace DEVICE`: mkfs.ext4 -L AGENTLAB_WORK only when the disk has no
 * signature (`blkid -p` exit 2) and its first MiB is all zeros, as new zvols, thin LVs and qcow2 volumes
 * read; anything else is left alone with a message (the fix for a damaged workspace is fsck, not mkfs).
 * A block device is then re-announced to udev and mounted.
 */
export const WORKSPACE_FORMAT_SCRIPT = `#!/bin/sh
# agentlab: format the workspace disk when it is blank (docs/workspaces-design.md, guest contract).
dev="$1"
if [ ! -b "$dev" ] && [ ! -f "$dev" ]; then
  echo "format-workspace: $dev: no such disk" >&2
  exit 1
fi
blkid -p "$dev" >/dev/null 2>&1
found=$?
if [ "$found" -ne 2 ]; then
  # 0: it has a filesystem or partition table; anything else: blkid could not tell. Never format.
  exit 0
fi
if [ -n "$(head -c 1048576 "$dev" | tr -d '\\000' | head -c 1)" ]; then
  echo "format-workspace: $dev has no filesystem but is not blank: not formatting it (agentlab workspace fsck)" >&2
  exit 0
fi
mkfs.ext4 -F -q -L ${WORKSPACE_LABEL} -m 0 "$dev" || exit 1
echo "format-workspace: formatted $dev as ext4 labelled ${WORKSPACE_LABEL}"
if [ -b "$dev" ]; then
  # udev learns the new label, then the mount (the label rule asks for it too; asking twice is harmless).
  udevadm trigger --action=change --settle "$dev" || true
  systemctl start --no-block work.mount agentlab-work-owner.service
fi
`;

/**
 * On the first boot the disk appeared before the rule existed: format it if blank and mount it now,
 * before the runner starts.
 */
export const WORKSPACE_FIRST_BOOT_SCRIPT = `for dev in /dev/disk/by-path/*-scsi-${WORKSPACE_SCSI_ADDRESS}; do
  [ -b "$dev" ] && ${WORKSPACE_FORMAT_SCRIPT_PATH} "$dev"
done
if [ -e /dev/disk/by-label/${WORKSPACE_LABEL} ]; then
  systemctl start work.mount agentlab-work-owner.service
fi
`;

/** The files the user-data writes (all root's), in the order cloud-init writes them. */
export const WORKSPACE_FILES: ReadonlyArray<{ path: string; content: string; permissions: string }> = [
  { path: WORKSPACE_MOUNT_UNIT_PATH, content: WORKSPACE_MOUNT_UNIT, permissions: "0644" },
  { path: WORKSPACE_OWNER_UNIT_PATH, content: WORKSPACE_OWNER_UNIT, permissions: "0644" },
  { path: WORKSPACE_FORMAT_UNIT_PATH, content: WORKSPACE_FORMAT_UNIT, permissions: "0644" },
  { path: WORKSPACE_FORMAT_SCRIPT_PATH, content: WORKSPACE_FORMAT_SCRIPT, permissions: "0755" },
  // Last: the rule may fire as soon as it exists, and then everything it names is in place.
  { path: WORKSPACE_UDEV_RULE_PATH, content: WORKSPACE_UDEV_RULE, permissions: "0644" },
];
