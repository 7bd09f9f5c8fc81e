import type { Config } from "../../config/config.js";
import type { Logger } from "../log.js";
import type { DaemonMetrics } from "../metrics/observer.js";
import { PveBackend } from "./backend.js";
import { CallPool, PooledTransport } from "./call-pool.js";
import { SharedReadsTransport } from "./shared-reads.js";
import type { PveTransport } from "./transport.js";
import { ApiTransport } from "./transport-api.js";
import { ShellTransport } from "./transport-shell.js";

/**
 * The layers every call goes through: identical reads shared (and the cluster list kept briefly), then
 * a slot in the bounded pool, then the transport itself. Sharing comes first so that callers who join
 * a read in flight take no slot.
 */
export function boundedTransport(
  config: Config,
  transport: PveTransport,
  metrics?: DaemonMetrics,
): SharedReadsTransport {
  const pool = new CallPool({ read: config.proxmox_max_reads, write: config.proxmox_max_writes });
  return new SharedReadsTransport(new PooledTransport(transport, pool, metrics), {
    listTtlMs: config.proxmox_cluster_list_ttl_ms,
  });
}

import type { ProxmoxBackend } from "./types.js";

/** The backend the config names. Building one makes no call: reachability is checked by status. */
export function createBackend(config: Config, log: Logger, metrics?: DaemonMetrics): ProxmoxBackend {
  const timeoutMs = config.proxmox_command_timeout_ms;
  const taskTimeoutMs = config.proxmox_task_timeout_ms;
  if (config.proxmox_backend === "api") {
    const transport = new ApiTransport({
      url: config.proxmox_api_url,
      token: config.proxmox_api_token,
      timeoutMs,
      ...(config.proxmox_tls_ca_path ? { tlsCaPath: config.proxmox_tls_ca_path } : {}),
      tlsInsecure: config.proxmox_tls_insecure,
    });
    return new PveBackend({
      transport: boundedTransport(config, transport, metrics),
      log: log.child({ backend: "api" }),
      timeoutMs,
      taskTimeoutMs,
      tokenId: transport.tokenId,
      ...(metrics ? { metrics } : {}),
    });
  }
  return new PveBackend({
    transport: boundedTransport(config, new ShellTransport({ timeoutMs }), metrics),
    log: log.child({ backend: "shell" }),
    timeoutMs,
    taskTimeoutMs,
    ...(metrics ? { metrics } : {}),
  });
}
