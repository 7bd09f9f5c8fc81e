/**
 * A daemon on a simulated host as the benchmarks use it: the guest listener on (simulated guests phone
 * home, as real ones do) and a create/destroy over the RPC socket, as `agentlab sandbox new` sends it.
 */
import { call } from "../src/cli/client.js";
import { type Sandbox, sandboxCreate, sandboxDestroy } from "../src/protocol/sandbox.js";
import { type BackendKind, type SimHost, startSimHost } from "../test/helpers/simhost.js";
import { setControl } from "../test/pvesim/harness.js";
import type { Scale } from "./bench.js";

export const PROFILE = "yolo-ephemeral";

/**
 * With AGENTLAB_BENCH_PROFILE_DIR set, each benchmark's daemon (and it alone: not the simulator, the CLI
 * or this process) writes a CPU profile and its event-loop delay there when it exits (daemon-profile.ts).
 */
function profiledDaemonEnv(): NodeJS.ProcessEnv {
  if (!process.env.AGENTLAB_BENCH_PROFILE_DIR) return {};
  const preload = new URL("./daemon-profile.js", import.meta.url).href;
  return { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import ${preload}`.trim() };
}

export async function startBenchHost(
  kind: BackendKind,
  knobs: Record<string, number>,
  extraConfig = "",
): Promise<SimHost> {
  const h = await startSimHost(
    kind,
    `bootstrap_listen: 127.0.0.1:0\nagent_subnet: 0.0.0.0/1\nlog_level: info\n${extraConfig}`,
    {},
    { daemonEnv: profiledDaemonEnv() },
  );
  try {
    await setControl(h.sim.dir, knobs);
  } catch (error) {
    await h.stop();
    throw error;
  }
  return h;
}

const rpc = (h: SimHost) => ({ socketPath: h.host.socketPath, timeoutMs: 300_000 });

export function createSandbox(h: SimHost): Promise<Sandbox> {
  return call(rpc(h), sandboxCreate, { profile: PROFILE });
}

export async function destroySandbox(h: SimHost, vmid: number): Promise<void> {
  await call(rpc(h), sandboxDestroy, { vmid });
}

/**
 * One create and destroy that no figure counts: start-up reads (node discovery, storage checks) are
 * behind the daemon, and it has seen how long each kind of task takes, as after its first sandbox.
 * Skipped at a scale without warm-ups (tiny).
 */
export async function warmUp(h: SimHost, scale: Scale): Promise<void> {
  if (!scale.warmUp) return;
  const warm = await createSandbox(h);
  await destroySandbox(h, warm.vmid);
}

/** Runs fn with a started host and stops the host afterwards, whatever happens. */
export async function withHost<T>(
  kind: BackendKind,
  knobs: Record<string, number>,
  fn: (h: SimHost) => Promise<T>,
  extraConfig = "",
): Promise<T> {
  const h = await startBenchHost(kind, knobs, extraConfig);
  try {
    return await fn(h);
  } finally {
    await h.stop();
  }
}
