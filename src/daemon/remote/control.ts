/**
 * Wiring of the remote control listener: certificate, tokens, gate and health probe, from the config.
 * Off unless control_listen is set.
 */
import { AgentlabError } from "../../protocol/errors.js";
import type { DaemonContext } from "../context.js";
import type { RpcServer } from "../rpc/server.js";
import { createApiTokenRepo } from "../store/api-tokens.js";
import { ping } from "../store/health.js";
import { remoteGate } from "./gate.js";
import { ControlListener, type HealthReport } from "./listener.js";
import { controlCertificate } from "./tls.js";
import type { TokenService } from "./tokens.js";

/** Longest /health waits for Proxmox: load balancers and monitors expect an answer within seconds. */
export const HEALTH_PROBE_MS = 5_000;

async function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000}s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export function healthProbe(ctx: DaemonContext): () => Promise<HealthReport> {
  return async () => {
    const failed: Record<string, string> = {};
    try {
      ping(ctx.store);
    } catch (error) {
      failed.database = (error as Error).message;
    }
    try {
      await withTimeout(ctx.backend.version(), HEALTH_PROBE_MS, "Proxmox");
    } catch (error) {
      failed.proxmox =
        error instanceof AgentlabError ? `${error.code}: ${error.message}` : (error as Error).message;
    }
    return { ok: Object.keys(failed).length === 0, failed };
  };
}

export interface RunningControl {
  listener: ControlListener;
  url: string;
  fingerprint: string;
}

export async function startControl(
  ctx: DaemonContext,
  server: RpcServer,
  tokens: TokenService,
): Promise<RunningControl | undefined> {
  const { config } = ctx;
  if (config.control_listen === "") return undefined;
  const certificate = await controlCertificate(config);
  const log = ctx.log.child({ component: "control" });
  if (certificate.generated) {
    log.info(
      { cert: certificate.certPath, fingerprint: certificate.fingerprint },
      "made a self-signed certificate",
    );
  }
  const owners = createApiTokenRepo(ctx.store);
  const listener = new ControlListener({
    listen: config.control_listen,
    allowCidrs: config.control_allow_cidrs,
    certificate,
    server,
    tokens,
    gate: (token, address) => remoteGate({ tokens, owners, store: ctx.store, log }, token, address),
    health: healthProbe(ctx),
    events: ctx.store.events,
    log,
  });
  const { url } = await listener.start();
  return { listener, url, fingerprint: certificate.fingerprint };
}
