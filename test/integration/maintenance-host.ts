/**
 * Helpers for the maintenance integration tests: a simulator host whose daemon the tests kill and
 * restart, and views of the simulator and the database to check that no VM is orphaned and no row is
 * stuck.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { type RunningDaemon, startDaemon } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { inspect, setControl } from "../pvesim/harness.js";

export interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  failure_reason?: string;
}

export const STUCK_STATES = ["REQUESTED", "PROVISIONING", "BOOTING"];
export const DEFAULT_KNOBS = { clone_ms: 200, start_ms: 100, agent_ready_ms: 300 };

export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The daemon's last JSON log line with this message, if any. */
export function logLine(daemon: RunningDaemon, msg: string): Record<string, unknown> | undefined {
  return daemon
    .output()
    .stdout.split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.msg === msg)
    .at(-1);
}

export class MaintenanceHost {
  /** The daemon serving now: tests restart it, so h.daemon is only the first one. */
  daemon: RunningDaemon;

  private constructor(readonly h: SimHost) {
    this.daemon = h.daemon;
  }

  static async start(kind: BackendKind): Promise<MaintenanceHost> {
    return new MaintenanceHost(await startSimHost(kind));
  }

  async stop(): Promise<void> {
    await this.daemon.stop();
    await this.h.stop();
  }

  /** Start the daemon again and wait for its first maintenance pass (start-up recovery included). */
  async restart(): Promise<void> {
    this.daemon = await startDaemon(this.h.host);
    // The pass makes Proxmox calls (a pvesh start each on the shell backend): seconds idle, but past
    // 20 s on a machine shared with other test runs; the bound only stops a pass that never ends.
    await until(
      "the first maintenance pass",
      () => (logLine(this.daemon, "maintenance pass finished") ? true : undefined),
      120_000,
    );
  }

  simVms(): Promise<Record<number, { status: string; lock?: string; snapshots: string[] }>> {
    return inspect(this.h.sim.dir, (ctx) =>
      Object.fromEntries(
        Object.values(ctx.state.vms).map((vm) => [
          vm.vmid,
          {
            status: vm.runtime.status,
            snapshots: Object.keys(vm.snapshots),
            ...(vm.config["lock"] ? { lock: vm.config["lock"] } : {}),
          },
        ]),
      ),
    );
  }

  /** VMs other than the holder whose config references `volid`, with the keys. */
  referencing(volid: string, holder: number): Promise<Array<{ vmid: number; keys: string[] }>> {
    return inspect(this.h.sim.dir, (ctx) =>
      Object.values(ctx.state.vms)
        .filter((vm) => vm.vmid !== holder)
        .map((vm) => ({
          vmid: vm.vmid,
          keys: Object.keys(vm.config).filter(
            (k) => /^(scsi|virtio|sata|ide|unused)\d+$/.test(k) && vm.config[k]!.split(",")[0] === volid,
          ),
        }))
        .filter((r) => r.keys.length > 0),
    );
  }

  db<T>(fn: (db: Database.Database) => T): T {
    const handle = new Database(this.h.host.dbPath);
    try {
      return fn(handle);
    } finally {
      handle.close();
    }
  }

  row(vmid: number): { state: string; failure_reason: string | null } | undefined {
    return this.db(
      (d) =>
        d.prepare("SELECT state, failure_reason FROM sandboxes WHERE vmid = ?").get(vmid) as
          | { state: string; failure_reason: string | null }
          | undefined,
    );
  }

  async show(vmid: number): Promise<SandboxBody> {
    const result = await this.h.json<SandboxBody>(["show", String(vmid)]);
    assert.equal(result.code, 0, result.stderr);
    return result.body;
  }

  /**
   * Run the CLI with `args`, kill -9 the daemon once `ready` says the step is under way, check that the
   * CLI reports the lost daemon, put the knobs back (`restore`) and restart: the first maintenance pass
   * recovers. Returns what the CLI printed on stderr before the kill.
   */
  async killDuringCli(
    args: string[],
    knobs: Record<string, number>,
    ready: (stderr: string) => Promise<boolean> | boolean,
    restore: Record<string, number> = DEFAULT_KNOBS,
  ): Promise<string> {
    await setControl(this.h.sim.dir, knobs);
    const child = spawn(process.execPath, [AGENTLAB_BIN, "--socket", this.h.host.socketPath, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
    // Reaching the step takes seconds idle but much longer on a loaded machine (CI beside other work
    // failed at 20 s): the deadline only bounds a step that never comes.
    await until(
      `the step to kill in (${args.join(" ")})`,
      async () => ((await ready(stderr)) ? true : undefined),
      120_000,
    );
    const seen = stderr;
    this.daemon.proc.kill("SIGKILL");
    assert.equal(await this.daemon.exited, "SIGKILL");
    assert.equal(await closed, 1, `the CLI reports the lost daemon (${stderr})`);
    await setControl(this.h.sim.dir, restore);
    await this.restart();
    return seen;
  }

  /**
   * Run `sandbox new`, kill -9 the daemon once `ready` says the step is under way, restart it, and
   * return the VMID the interrupted sandbox got.
   */
  async killDuring(
    knobs: Record<string, number>,
    ready: (stderr: string, vmid: number | undefined) => Promise<boolean>,
  ): Promise<number> {
    const reservedIn = (stderr: string) => {
      const reserved = /reserved VMID (\d+)/.exec(stderr)?.[1];
      return reserved ? Number(reserved) : undefined;
    };
    const stderr = await this.killDuringCli(
      ["new", "--profile", "yolo-ephemeral"],
      knobs,
      async (text) => reservedIn(text) !== undefined && (await ready(text, reservedIn(text))),
    );
    return reservedIn(stderr)!;
  }

  /** Wait until the sandbox has left REQUESTED/PROVISIONING/BOOTING and return it. */
  settled(vmid: number): Promise<SandboxBody> {
    return until(`sandbox ${vmid} to leave the provisioning states`, async () => {
      const body = await this.show(vmid);
      return STUCK_STATES.includes(body.state) ? undefined : body;
    });
  }

  /** No row before READY, and every VM but the template belongs to a live sandbox. */
  async assertNothingStuckOrOrphaned(): Promise<void> {
    const rows = this.db((d) => d.prepare("SELECT vmid, state FROM sandboxes").all()) as Array<{
      vmid: number;
      state: string;
    }>;
    assert.deepEqual(
      rows.filter((r) => STUCK_STATES.includes(r.state)),
      [],
      "no row stays before READY",
    );
    const live = new Set(rows.filter((r) => !["DESTROYED", "FAILED"].includes(r.state)).map((r) => r.vmid));
    const orphans = Object.keys(await this.simVms())
      .map(Number)
      .filter((vmid) => vmid !== 9000 && !live.has(vmid));
    assert.deepEqual(orphans, [], "every VM in Proxmox belongs to a live sandbox");
  }
}
