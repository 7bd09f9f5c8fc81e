/**
 * The files real Proxmox writes on the node's own file system while it works, written here too, by the
 * process that would write them: task logs, per-VM config lock files, QEMU run files and the cloud-init
 * run directory. On the shell face that process is the `pvesh`/`qm` process (pvesh runs the API handler
 * AND the task worker itself: pve-common `RESTEnvironment.pm:520` `fork_worker` with `$sync`), so these
 * writes happen in the caller's mount namespace — agentlabd's, under its systemd unit — and fail there
 * the way they fail on a real host. On the HTTPS face they happen in the server process, as on a real
 * host where pvedaemon runs the workers.
 *
 * Paths are the real ones below a host root: `PVESIM_HOST_ROOT` (a test maps it, e.g. in a mount
 * namespace built from the systemd unit), by default `DIR/host`, so that tests need no privileges.
 * Messages always name the real path, as Proxmox prints it.
 */
import { closeSync, mkdirSync, openSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fail, PveError } from "./errors.js";

/** pve-common `UPID.pm:12-13`. */
export const TASK_DIR = "/var/log/pve/tasks";
/** qemu-server `QemuConfig.pm:33`. */
export const QEMU_LOCK_DIR = "/var/lock/qemu-server";
/** qemu-server `QemuServer/Helpers.pm:86` (`/var/run`, not `/run`: see the FIXME there). */
export const QEMU_RUN_DIR = "/var/run/qemu-server";
/** qemu-server `QemuServer/Cloudinit.pm:24`. */
export const CLOUDINIT_RUN_DIR = "/run/pve/cloudinit";

export function hostRoot(dir: string): string {
  return process.env["PVESIM_HOST_ROOT"] || join(dir, "host");
}

const under = (root: string, real: string): string => join(root, real);

/**
 * The directories a Proxmox node has before any task runs, below `root`: the 16 task log subdirectories
 * (made at install), `/var/run` and `/var/lock` as Debian's symlinks into `/run`, and the qemu-server
 * lock and run directories (qemu-server makes them when its modules load, `QemuConfig.pm:34`,
 * `Helpers.pm:87`, ignoring failure). Idempotent.
 */
export function makeHostLayout(root: string): void {
  for (let i = 0; i < 16; i++)
    mkdirSync(under(root, `${TASK_DIR}/${i.toString(16).toUpperCase()}`), { recursive: true });
  mkdirSync(under(root, "/run/lock"), { recursive: true });
  mkdirSync(under(root, "/var"), { recursive: true });
  for (const [link, target] of [
    ["/var/run", "../run"],
    ["/var/lock", "../run/lock"],
  ] as const) {
    try {
      symlinkSync(target, under(root, link));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
  mkdirSync(under(root, QEMU_LOCK_DIR), { recursive: true });
  mkdirSync(under(root, QEMU_RUN_DIR), { recursive: true });
}

/** glibc's strerror texts, which Perl's `$!` prints, for the errors these writes can meet. */
const STRERROR: Record<string, string> = {
  EROFS: "Read-only file system",
  EACCES: "Permission denied",
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ENOTDIR: "Not a directory",
  EEXIST: "File exists",
  ENOSPC: "No space left on device",
  EDQUOT: "Disk quota exceeded",
  EISDIR: "Is a directory",
};

function strerror(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e.code && STRERROR[e.code]) return STRERROR[e.code]!;
  throw err;
}

/** Best-effort `mkdir -p`, as Perl's bare `mkdir $dir;` at module load: failure shows at the open. */
function tryMkdir(path: string): void {
  try {
    mkdirSync(path, { recursive: true });
  } catch {
    // The open that follows reports the real reason.
  }
}

/**
 * A worker's task log, created `O_WRONLY|O_CREAT|O_EXCL` before the worker runs (pve-common
 * `UPID.pm:60-66` → `File.pm:194-199` `create_owned_file_fh`; for pvesh's synchronous workers in the
 * parent, `RESTEnvironment.pm:709`). Its failure makes `fork_worker` die, so the API call itself fails:
 * HTTP 500, or pvesh/qm exiting non-zero, and no task exists.
 */
export function createTaskLog(dir: string, upid: string): void {
  // UPID.pm:50: the subdirectory is the last hex digit of the start time (the UPID's fifth field).
  const real = `${TASK_DIR}/${upid.split(":")[4]!.slice(7, 8)}/${upid}`;
  const path = under(hostRoot(dir), real);
  // make_path of the subdirectory first (File.pm:195); a node has all 16 from its installation.
  tryMkdir(join(path, ".."));
  let fd: number;
  try {
    fd = openSync(path, "wx", 0o640);
  } catch (err) {
    throw fail(`unable to create file '${real}' - ${strerror(err)}`);
  }
  closeSync(fd);
}

/**
 * Opens a VM's config lock file for append, as `lock_file_full` does before its flock (pve-common
 * `Tools.pm:215`; the path from qemu-server `QemuConfig.pm:64`). Returns Proxmox's error text on
 * failure, so the caller decides whether that fails a call or a task.
 */
export function openConfigLockFile(dir: string, vmid: number): string | undefined {
  const real = `${QEMU_LOCK_DIR}/lock-${vmid}.conf`;
  const root = hostRoot(dir);
  tryMkdir(under(root, QEMU_LOCK_DIR));
  try {
    closeSync(openSync(under(root, real), "a"));
    return undefined;
  } catch (err) {
    return `can't lock file '${real}' - can't open file - ${strerror(err)}`;
  }
}

/** The same, for a synchronous call: its failure is the call's 500. */
export function requireConfigLockFile(dir: string, vmid: number): void {
  const message = openConfigLockFile(dir, vmid);
  if (message) throw new PveError(500, message);
}

/**
 * What a VM start writes on the host before QEMU runs: the cloud-init run directory when the VM has a
 * cloud-init drive (`Cloudinit.pm:24-25`, `mkpath`, which croaks with `mkdir <path>: <error> at …`),
 * then QEMU's pid file and QMP socket in `/var/run/qemu-server` (`Helpers.pm:86-135`; QEMU itself
 * creates them and exits with code 1 when it cannot). Returns the task's failure (log lines and exit
 * status), or undefined.
 */
export function writeStartRunFiles(
  dir: string,
  vmid: number,
  hasCloudinit: boolean,
): { log: string[]; exitstatus: string } | undefined {
  const root = hostRoot(dir);
  if (hasCloudinit) {
    const real = `${CLOUDINIT_RUN_DIR}/${vmid}`;
    try {
      mkdirSync(under(root, real), { recursive: true });
      writeFileSync(under(root, `${real}/meta-data`), `instance-id: ${vmid}\n`);
    } catch (err) {
      const message = `mkdir ${real}: ${strerror(err)} at /usr/share/perl5/PVE/QemuServer/Cloudinit.pm line 25.`;
      return { log: [], exitstatus: message };
    }
  }
  tryMkdir(under(root, QEMU_RUN_DIR));
  try {
    writeFileSync(under(root, `${QEMU_RUN_DIR}/${vmid}.pid`), `${process.pid}\n`);
    closeSync(openSync(under(root, `${QEMU_RUN_DIR}/${vmid}.qmp`), "w"));
  } catch (err) {
    // QEMU's own text (util/oslib-posix.c qemu_write_pidfile, reported by vl.c), then PVE's.
    return {
      log: [`kvm: cannot create PID file: Cannot open pid file: ${strerror(err)}`],
      exitstatus: "start failed: QEMU exited with code 1",
    };
  }
  return undefined;
}
