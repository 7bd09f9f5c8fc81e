import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { configPathFromEnv, loadConfig } from "../config/config.js";
import { loadProfiles } from "../config/profiles.js";
import { AgentlabError } from "../protocol/errors.js";
import { VERSION } from "../version.js";
import { type Clock, type DaemonContext, type Scheduler, systemClock, systemScheduler } from "./context.js";
import { GuestListener } from "./guest/listener.js";
import { GuestReadiness } from "./guest/ready-waiters.js";
import { BootstrapTokens } from "./guest/tokens.js";
import { createHostToolPool } from "./host/tool-pool.js";
import { createLogger, type Logger } from "./log.js";
import { MetricsListener } from "./metrics/listener.js";
import type { PrometheusMetrics } from "./metrics/prometheus.js";
import { bridgePortFinder } from "./network/ports.js";
import { execaRunner, SandboxFirewall } from "./network/sandbox-firewall.js";
import { createBackend } from "./proxmox/load.js";
import { reloadDaemon } from "./reload.js";
import { type RunningControl, startControl } from "./remote/control.js";
import { registerHandlers } from "./rpc/handlers.js";
import { RpcServer } from "./rpc/server.js";
import { claimSocketPath } from "./rpc/socket.js";
import { createProbes } from "./services/probes.js";
import { SandboxNetworking } from "./services/sandbox-network.js";
import { loadSshIdentity } from "./ssh/identity.js";
import { createBootstrapTokenRepo } from "./store/bootstrap-tokens.js";
import { openStore, type Store } from "./store/db.js";

export interface Daemon {
  ctx: DaemonContext;
  /** Stop accepting, drain in-flight calls within shutdown_timeout, close the DB, remove the socket. */
  stop(reason: string): Promise<void>;
  /** SIGHUP: read config.yaml and the profiles again (reload.ts). */
  reload(): void;
}

export interface StartOptions {
  configPath: string;
  clock?: Clock;
  /** Timers of the background passes (maintenance); tests inject a fake one. */
  scheduler?: Scheduler;
}

/**
 * Start-up in the order that makes failures cheap: config, then profiles (both pure reads), then a
 * check that no other daemon serves the socket (before the database, whose lock it would hold), then
 * the database (migrations), then the socket last, so a daemon that cannot serve never looks alive.
 */
export async function startDaemon(options: StartOptions): Promise<Daemon> {
  const { config, warnings } = loadConfig(options.configPath);
  const log: Logger = createLogger(config.log_level);
  for (const warning of warnings) log.warn({ file: options.configPath }, warning);
  const { profiles, warnings: profileWarnings } = loadProfiles(config.profiles_dir);
  for (const warning of profileWarnings) log.warn({ dir: config.profiles_dir }, warning);

  const clock = options.clock ?? systemClock;
  await claimSocketPath(config.socket_path);
  let store: Store | undefined;
  let guestListener: GuestListener | undefined;
  let control: RunningControl | undefined;
  let metricsListener: MetricsListener | undefined;
  try {
    store = openStore(config.db_path, {
      now: () => clock.now(),
      onCheckpointerLost: (err) =>
        log.warn({ err }, "WAL checkpoint thread stopped; the main thread checkpoints from now on"),
    });
    const openedStore = store;
    // prom-client is loaded only when metrics are served: without metrics_listen nothing is counted.
    let metrics: PrometheusMetrics | undefined;
    if (config.metrics_listen !== "") {
      const { PrometheusMetrics } = await import("./metrics/prometheus.js");
      metrics = new PrometheusMetrics({ store, profiles, clock, version: VERSION });
    }
    const guestLog = log.child({ component: "guest" });
    const guestReady = new GuestReadiness({
      tokens: new BootstrapTokens(createBootstrapTokenRepo(store), clock),
      clock,
      controllerUrl: config.controller_url,
      listenAddress: config.bootstrap_listen,
      log: guestLog,
    });
    const hostToolPool = createHostToolPool(config.host_max_tools);
    const ctx: DaemonContext = {
      config,
      configPath: options.configPath,
      profiles,
      store,
      // Intent first, on disk: the store's commits are made durable before any change in Proxmox.
      backend: createBackend(config, log, {
        beforeWrite: () => openedStore.flush(),
        ...(metrics ? { metrics } : {}),
      }),
      network: new SandboxNetworking(
        config.network_isolation,
        new SandboxFirewall({ run: execaRunner({ pool: hostToolPool }), subnet: config.agent_subnet }),
        log.child({ component: "network" }),
        { findPort: bridgePortFinder(execaRunner({ pool: hostToolPool })) },
      ),
      guestReady,
      hostToolPool,
      sshIdentity: loadSshIdentity(config.data_dir),
      log,
      clock,
      startedAt: clock.now(),
      version: VERSION,
      ...(metrics ? { metrics } : {}),
    };
    ctx.probes = createProbes(ctx.backend);
    await ctx.network?.init();
    const server = new RpcServer({
      log,
      limits: {
        maxConnections: config.rpc_max_connections,
        maxConnectionsPerClient: config.rpc_max_connections_per_client,
        idleTimeoutMs: config.rpc_idle_timeout_ms,
        maxUnsentBytes: config.rpc_max_unsent_bytes,
      },
      ...(metrics ? { metrics } : {}),
    });
    const { maintenance, sandboxes, workspaces, jobs, tokens, pool } = registerHandlers(server, ctx, {
      maintenance: { scheduler: options.scheduler ?? systemScheduler },
    });
    maintenance.useWorkspaces(workspaces.recovery);
    // Before the socket opens, so every row it finds before READY was left by the previous process,
    // and every workspace lease of a live owner is extended again before a client can ask for it.
    maintenance.prepare();
    jobs.recover();
    // Before the socket, so a control_listen that cannot be served (address in use, bad certificate)
    // stops the start-up with its reason instead of leaving a daemon that looks alive.
    control = await startControl(ctx, server, tokens);
    if (control) ctx.control = { url: control.url, fingerprint: control.fingerprint };
    // Likewise: a metrics address that cannot be bound stops the start-up (METRICS_LISTEN_FAILED).
    let metricsUrl: string | undefined;
    if (metrics) {
      const scraped = metrics;
      metricsListener = new MetricsListener({
        listen: config.metrics_listen,
        scrape: () => scraped.scrape(),
        log: log.child({ component: "metrics" }),
      });
      metricsUrl = (await metricsListener.start()).url;
    }
    const socket = await server.listen(config.socket_path);
    // After the socket, as upstream binds. A bind failure is logged with its fix and does not stop the
    // daemon: readiness then comes from the guest agent alone.
    guestListener = new GuestListener({
      listen: config.bootstrap_listen,
      agentSubnet: config.agent_subnet,
      rateLimit: { qps: config.bootstrap_rate_limit_qps, burst: config.bootstrap_rate_limit_burst },
      readiness: guestReady,
      jobs: jobs.guestEndpoints(),
      log: guestLog,
      ...(metrics ? { metrics } : {}),
    });
    const guest = await guestListener.start();
    log.info(
      {
        version: VERSION,
        socket: config.socket_path,
        socket_mode: socket.mode.toString(8),
        socket_group: socket.group ?? null,
        db: store.path,
        schema_version: store.schemaVersion(),
        profiles: profiles.map((p) => p.name),
        backend: config.proxmox_backend,
        guest_listener: guest.listening ? guest.url : null,
        control_listener: control ? control.url : null,
        control_fingerprint: control ? control.fingerprint : null,
        metrics_listener: metricsUrl ?? null,
      },
      "agentlabd ready",
    );
    // Start-up recovery, then the lease reaper and the reconciler, now and every 30 s.
    maintenance.start();
    // Now and every idle_stop_interval: RUNNING sandboxes nobody uses are stopped (docs/runbook.md).
    maintenance.idleStop.start();
    // Not awaited: Proxmox may be slow or down at start; the sets are rebuilt as soon as it answers.
    void sandboxes.resyncNetwork().catch((error) => log.warn({ err: error }, "network resync failed"));
    const openStoreRef = store;
    const openGuestListener = guestListener;
    const openControl = control;
    const openMetrics = metricsListener;
    let stopping: Promise<void> | undefined;
    return {
      ctx,
      reload() {
        // A warm_pool lowered or a profile removed leaves surplus members: the pool removes them now.
        if (reloadDaemon(ctx).ok) pool.kick();
      },
      stop(reason) {
        stopping ??= (async () => {
          log.info({ reason, active_calls: server.activeCalls }, "agentlabd stopping");
          // Background passes finish the sandbox at hand (bounded like the calls), then the calls drain.
          const [maintenanceDone, { drained, cancelled }, jobsDone, poolDone] = await Promise.all([
            maintenance.stop(config.shutdown_timeout_ms),
            server.close(config.shutdown_timeout_ms),
            jobs.stop(config.shutdown_timeout_ms),
            // Fills in flight are cancelled and rolled back; the next start refills.
            pool.stop(config.shutdown_timeout_ms),
          ]);
          // Only after the drain: a provisioning call still finishing may be waiting for its guest's report.
          await openGuestListener.close();
          await openControl?.listener.close();
          // Before the database closes: a scrape reads it.
          await openMetrics?.close();
          openStoreRef.close();
          log.info(
            {
              drained,
              cancelled,
              maintenance_finished: maintenanceDone,
              jobs_finished: jobsDone,
              warm_pool_finished: poolDone,
            },
            "agentlabd stopped",
          );
        })();
        return stopping;
      },
    };
  } catch (error) {
    await guestListener?.close();
    await control?.listener.close();
    await metricsListener?.close();
    store?.close();
    throw error;
  }
}

const USAGE = `Usage: agentlabd [--config PATH]

The agentlab daemon: owns the sandbox database and serves the agentlab CLI on a Unix socket
(and over HTTPS to token holders when control_listen is set: docs/remote.md).

Options:
  --config PATH   config file (default: $AGENTLAB_CONFIG or /etc/agentlab/config.yaml)
  --version       print the version and exit
  --help          print this help and exit
`;

function fail(error: unknown): never {
  const known =
    error instanceof AgentlabError
      ? error
      : new AgentlabError("INTERNAL", (error as Error)?.stack ?? String(error), {
          hint: "this is a bug in agentlabd; please report it with the log above",
        });
  process.stderr.write(`agentlabd: error: ${known.message}\n`);
  const [first, ...rest] = known.hint.split("\n");
  process.stderr.write(`hint: ${first}\n${rest.map((line) => `      ${line}\n`).join("")}`);
  process.exit(1);
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  let values: { config?: string | undefined; version?: boolean | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        config: { type: "string" },
        version: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (error) {
    process.stderr.write(`agentlabd: error: ${(error as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (values.version) {
    process.stdout.write(`agentlabd ${VERSION}\n`);
    return;
  }
  // The handlers go in before start-up: the socket answers before startDaemon returns, so a
  // supervisor (or a test) may signal as soon as it sees it; without a handler that signal would kill
  // the process uncleanly. One arriving during start-up stops the daemon as soon as it is up.
  let daemon: Daemon | undefined;
  let stopSignal: NodeJS.Signals | undefined;
  const stop = (signal: NodeJS.Signals, running: Daemon) => {
    running.stop(signal).then(
      () => process.exit(0),
      (error) => fail(error),
    );
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (stopSignal !== undefined) return;
      stopSignal = signal;
      if (daemon) stop(signal, daemon);
    });
  }
  // Without a handler SIGHUP would end the process silently and leave the socket behind. A reload
  // during start-up has nothing to do: start-up reads the files it would read.
  process.on("SIGHUP", () => {
    if (daemon && stopSignal === undefined) daemon.reload();
  });
  try {
    daemon = await startDaemon({ configPath: resolve(values.config ?? configPathFromEnv()) });
  } catch (error) {
    fail(error);
  }
  if (stopSignal !== undefined) stop(stopSignal, daemon);
}
