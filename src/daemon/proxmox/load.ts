import type { Config } from "../../config/config.js";
import type { Logger } from "../log.js";
import type { DaemonMetrics } from "../metrics/observer.js";
import { PveBackend } from "./backend.js";
import { CallPool, PooledTransport } from "./call-pool.js";
import { SharedReadsTransport } from "./shared-reads.js";
import type { PveTransport } from "./transport.js";
import { ApiTransport } from "./transport-api.js";
import { ShellTransport } from "./transport-shell.js";
import { WriteBarrierTransport } from "./write-barrier.js";

/**
 * The layers every call goes through: identical reads shared (and the cluster list kept briefly), the
 * write barrier (what the daemon committed is made durable before a change), then a slot in the bounded
 * pool, then the transport itself. Sharing comes first so that callers who join a read in flight take
 * no slot; the barrier comes before the pool so that no slot is held during an fsync.
 */
export function boundedTransport(
  config: Config,
  transport: PveTransport,
  options: BackendOptions = {},
): SharedReadsTransport {
  const pool = new CallPool({ read: config.proxmox_max_reads, write: config.proxmox_max_writes });
  const pooled = new PooledTransport(transport, pool, options.metrics);
  const { beforeWrite } = options;
  return new SharedReadsTransport(beforeWrite ? new WriteBarrierTransport(pooled, beforeWrite) : pooled, {
    listTtlMs: config.proxmox_cluster_list_ttl_ms,
  });
}

export interface BackendOptions {
  /** Run before every call that changes something in Proxmox (the store's flush: intent first, on disk). */
  beforeWrite?: () => Promise<void>;
  /** Where Proxmox calls are counted (metrics_listen); none: nothing is counted. */
  metrics?: DaemonMetrics;
}

import type { ProxmoxBackend } from "./types.js";

/** The backend the config names. Building one makes no call: reachability is checked by status. */
export function createBackend(config: Config, log: Logger, options: BackendOptions = {}): ProxmoxBackend {
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
      transport: boundedTransport(config, transport, options),
      log: log.child({ backend: "api" }),
      timeoutMs,
      taskTimeoutMs,
      tokenId: transport.tokenId,
      ...(options.metrics ? { metrics: options.metrics } : {}),
    });
  }
  return new PveBackend({
    transport: boundedTransport(config, new ShellTransport({ timeoutMs }), options),
    log: log.child({ backend: "shell" }),
    timeoutMs,
    taskTimeoutMs,
    ...(options.metrics ? { metrics: options.metrics } : {}),
  });
}
