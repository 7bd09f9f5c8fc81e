/**
 * Helpers for the maintenance integration tests: a simulator host whose daemon the tests kill and
 * restart, and views of the simulator and the database to check that no VM is orphaned and no row is
 * stuck.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import Database from "better-sqlite3";
import { type RunningDaemon, startDaemon } from "../helpers/daemon.js";
import { AGENTLAB_BIN } from "../helpers/paths.js";
import { type BackendKind, type SimHost, startSimHost } from "../helpers/simhost.js";
import { callLogPath } from "../pvesim/call-log.js";
import { inspect, setControl } from "../pvesim/harness.js";

export interface SandboxBody {
  vmid: number;
  state: string;
  ip?: string;
  failure_reason?: string;
}

/** One line of the simulator's call log (test/pvesim/call-log.ts). */
export interface CallLine {
  e: "b" | "e";
  id: string;
  method?: string;
  path?: string;
}

/** A request held inside a Proxmox call (MaintenanceHost.holdRequest). */
export interface Held {
  args: string[];
  /** Its error, once it failed. */
  readonly stderr: string;
  /** 1 when it failed, 0 when it was answered. */
  closed: Promise<number | null>;
  /** The held calls it began (matching the pattern it was held with). */
  calls: CallLine[];
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

  /** `extraConfig`: more lines of the daemon's config (e.g. `host_tools: on\n`). */
  static async start(kind: BackendKind, extraConfig = ""): Promise<MaintenanceHost> {
    return new MaintenanceHost(await startSimHost(kind, extraConfig));
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

  /** The simulator's call log, one parsed line per begin (`e: "b"`) or end (`e: "e"`) of a call. */
  calls(): CallLine[] {
    const path = callLogPath(this.h.sim.dir);
    if (!existsSync(path)) return [];
    return readFileSync(path, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as CallLine);
  }

  /**
   * Send a request straight to the socket (`send`, e.g. the client's call(); no CLI to start, which
   * costs seconds on a busy host when many operations are held) while Proxmox calls whose `METHOD
   * /path` matches `hang` are held (the simulator's `hang_calls`: logged as begun, not carried out),
   * and return once one has begun and `ready`, if given, agrees (it gets the held calls' `METHOD
   * /path`). The knob is left set: several operations can be held at once (`hang` an alternation), then
   * killHeldAndRestart() interrupts them all. `closed` is 1 when the request failed (the lost daemon).
   */
  holdRequest(
    label: string,
    send: () => Promise<unknown>,
    hang: string,
    ready?: (held: string[]) => Promise<boolean> | boolean,
  ): Promise<Held> {
    return this.hold(
      label,
      () => {
        let error = "";
        const closed = send().then(
          () => 0,
          (failure: Error) => {
            error = failure.message;
            return 1;
          },
        );
        return { closed, output: () => error };
      },
      hang,
      ready,
    );
  }

  private async hold(
    label: string,
    start: () => { closed: Promise<number | null>; output: () => string },
    hang: string,
    ready?: (held: string[]) => Promise<boolean> | boolean,
  ): Promise<Held> {
    const from = this.calls().length;
    const pattern = new RegExp(hang);
    const begun = () =>
      this.calls()
        .slice(from)
        .filter((line) => line.e === "b" && pattern.test(`${line.method} ${line.path}`));
    await setControl(this.h.sim.dir, { hang_calls: hang });
    const started = start();
    const held: Held = {
      args: [label],
      get stderr() {
        return started.output();
      },
      closed: started.closed,
      calls: [],
    };
    try {
      await until(
        `a call matching ${hang} (${label})`,
        async () => {
          held.calls = begun();
          const names = held.calls.map((line) => `${line.method} ${line.path}`);
          return names.length > 0 && (ready === undefined || (await ready(names))) ? true : undefined;
        },
        120_000,
      );
    } catch (error) {
      await setControl(this.h.sim.dir, { hang_calls: "" });
      throw new Error(`${(error as Error).message}; the client printed: ${held.stderr}`);
    }
    return held;
  }

  /**
   * kill -9 the daemon while `held` operations are inside their held calls, check each CLI reports the
   * lost daemon, clear `hang_calls`, let the calls the dead daemon began end (within a bound: Proxmox
   * carries out what it received, as far as the face does), and restart.
   */
  async killHeldAndRestart(held: Held[]): Promise<void> {
    this.daemon.proc.kill("SIGKILL");
    assert.equal(await this.daemon.exited, "SIGKILL");
    for (const cli of held) {
      assert.equal(
        await cli.closed,
        1,
        `${cli.args.join(" ")}: the client sees the lost daemon (${cli.stderr})`,
      );
    }
    await setControl(this.h.sim.dir, { hang_calls: "" });
    const ids = held.flatMap((cli) => cli.calls.map((line) => line.id));
    await until(
      "the dead daemon's held calls to end",
      () => {
        const ended = new Set(
          this.calls()
            .filter((line) => line.e === "e")
            .map((line) => line.id),
        );
        return ids.every((id) => ended.has(id)) ? true : undefined;
      },
      30_000,
    ).catch(() => undefined);
    await this.restart();
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
