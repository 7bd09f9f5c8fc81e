import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  createSim,
  type Sim,
  type SimApi,
  type SimOptions,
  startApiProcess,
  toolsEnv,
} from "../pvesim/harness.js";
import { type HostDir, makeHostDir, type RunningDaemon, runCli, startDaemon } from "./daemon.js";

export type BackendKind = "shell" | "api";

/** The simulator, a daemon configured against it through one backend, and a CLI runner. */
export interface SimHost {
  sim: Sim;
  api?: SimApi;
  host: HostDir;
  daemon: RunningDaemon;
  cli(args: string[]): ReturnType<typeof runCli>;
  /** Run the CLI with --json and parse stdout (success or error envelope). */
  json<T = Record<string, unknown>>(
    args: string[],
  ): Promise<{ code: number | null; body: T; stderr: string }>;
  stop(): Promise<void>;
}

/** Short simulator tasks for tests that measure nothing of Proxmox's timing. */
export const FAST_KNOBS = { clone_ms: 50, start_ms: 30, stop_ms: 20, agent_ready_ms: 60, task_ms: 20 };

/** Runs the CLI with --json and parses stdout (the result, or the error envelope). */
export function jsonCli(cli: (args: string[]) => ReturnType<typeof runCli>): SimHost["json"] {
  return async <T>(args: string[]) => {
    const result = await cli(["--json", ...args]);
    let body: T;
    try {
      body = JSON.parse(result.stdout) as T;
    } catch {
      throw new Error(`not JSON (exit ${result.code}): ${result.stdout}\n${result.stderr}`);
    }
    return { code: result.code, body, stderr: result.stderr };
  };
}

export async function startSimHost(
  kind: BackendKind,
  extraConfig = "",
  simOptions: SimOptions = {},
  {
    apiToken,
    daemonEnv = {},
    profiles = {},
  }: {
    /** Makes the API token the daemon uses instead of root's (api only), e.g. a privilege-separated one. */
    apiToken?: (sim: Sim) => Promise<string>;
    /** More environment for the daemon, e.g. PVESIM_NODE: the node its pvesh runs on. */
    daemonEnv?: NodeJS.ProcessEnv;
    /** Profile files (name -> YAML) added beside the shipped ones before the daemon starts. */
    profiles?: Record<string, string>;
  } = {},
): Promise<SimHost> {
  const sim = createSim(simOptions);
  let api: SimApi | undefined;
  let backendConfig = "proxmox_backend: shell\n";
  if (kind === "api") {
    if (apiToken) sim.token = await apiToken(sim);
    api = await startApiProcess(sim);
    backendConfig = `proxmox_backend: api\nproxmox_api_url: https://127.0.0.1:${api.port}\nproxmox_api_token: "${api.token}"\nproxmox_tls_ca_path: ${api.caPath}\n`;
  }
  // Keys in extraConfig replace the defaults here (YAML refuses a key given twice).
  const overridden = new Set([...extraConfig.matchAll(/^(\w+):/gm)].map((m) => m[1]));
  const base =
    `snippets_dir: ${join(sim.dir, "storage", "local", "snippets")}\nsnippet_storage: local\nprovisioning_timeout: 30s\nproxmox_command_timeout: 30s\n${backendConfig}`
      .split("\n")
      .filter((line) => !overridden.has(/^(\w+):/.exec(line)?.[1] ?? ""))
      .join("\n");
  // The simulator's pvesh (shell) and its zfs/lvs/lvchange (host_tools: on, either backend) on PATH.
  const simTools = kind === "shell" || /^host_tools: on$/m.test(extraConfig);
  const host = makeHostDir(
    `${base}\n${extraConfig}`,
    simTools ? { ...toolsEnv(sim), ...daemonEnv } : daemonEnv,
  );
  for (const [file, yaml] of Object.entries(profiles)) writeFileSync(join(host.profilesDir, file), yaml);
  const daemon = await startDaemon(host);
  const cli = (args: string[]) => runCli(["--socket", host.socketPath, ...args]);
  return {
    sim,
    ...(api ? { api } : {}),
    host,
    daemon,
    cli,
    json: jsonCli(cli),
    async stop() {
      await daemon.stop();
      await api?.stop();
      host.cleanup();
      sim.cleanup();
    },
  };
}
