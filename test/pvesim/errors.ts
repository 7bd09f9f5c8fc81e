/**
 * Errors the way Proxmox reports them: an HTTP status with the message as the reason phrase, a
 * per-parameter `errors` object for 400, and for the CLIs the exit code Perl's `die` would produce.
 */
export class PveError extends Error {
  readonly status: number;
  readonly errors: Record<string, string> | undefined;
  /** What a CLI exits with for this error: `die` exits with errno when set (2 for a missing file). */
  readonly exitCode: number;

  constructor(
    status: number,
    message: string,
    opts: { errors?: Record<string, string>; exitCode?: number } = {},
  ) {
    super(message);
    this.name = "PveError";
    this.status = status;
    this.errors = opts.errors;
    this.exitCode = opts.exitCode ?? 255;
  }
}

/**
 * A storage command (zfs, lvcreate, ...) that failed inside PVE. PVE's `run_command` dies with
 * `<tool> error: <last stderr line>`; the earlier stderr lines were already printed into the task
 * log, so they travel here as `output`.
 */
export class CommandError extends PveError {
  /** Everything the tool wrote to stderr, in order. */
  readonly stderr: string[];
  /** The lines before the last: what PVE's run_command already printed into the task log. */
  readonly output: string[];
  constructor(tool: string, stderr: string[]) {
    super(500, `${tool} error: ${stderr[stderr.length - 1] ?? ""}`);
    this.name = "CommandError";
    this.stderr = stderr;
    this.output = stderr.slice(0, -1);
  }
}

/** 400 with per-parameter reasons, as JSONSchema validation reports it. */
export function paramError(errors: Record<string, string>): PveError {
  return new PveError(400, "Parameter verification failed.", { errors });
}

/** A `die` inside an API handler: 500 with the message. */
export function fail(message: string): PveError {
  return new PveError(500, message);
}

export function missingConfig(node: string, vmid: number | string): PveError {
  // Reading the config fails with ENOENT, and the CLIs exit with that errno.
  return new PveError(500, `Configuration file 'nodes/${node}/qemu-server/${vmid}.conf' does not exist`, {
    exitCode: 2,
  });
}

export function permissionDenied(path: string, privs: string[]): PveError {
  return new PveError(403, `Permission check failed (${path}, ${privs.join("|")})`);
}

export function lockTimeout(vmid: number): PveError {
  return fail(`can't lock file '/var/lock/qemu-server/lock-${vmid}.conf' - got timeout`);
}

/**
 * Not an error: the operation needs the VM's config flock, which a running task holds until
 * `untilMs`. The caller sleeps (outside the state lock) and tries again, or gives up with the
 * timeout error once its own deadline has passed — like flock with a timeout.
 */
export class FlockBusy extends Error {
  readonly untilMs: number;
  readonly vmid: number;
  readonly timeoutMs: number;
  constructor(vmid: number, untilMs: number, timeoutMs: number) {
    super(`config flock of VM ${vmid} busy`);
    this.name = "FlockBusy";
    this.vmid = vmid;
    this.untilMs = untilMs;
    this.timeoutMs = timeoutMs;
  }
}

/** An error that real Proxmox only reports after a wait (e.g. the 3 s guest-ping timeout). */
export class DelayedError extends Error {
  readonly delayMs: number;
  readonly error: PveError;
  constructor(delayMs: number, error: PveError) {
    super(error.message);
    this.name = "DelayedError";
    this.delayMs = delayMs;
    this.error = error;
  }
}
