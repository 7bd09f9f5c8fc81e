import type { Config } from "../config/config.js";
import type { Profile } from "../config/profiles.js";
import type { Clock } from "./clock.js";
import type { GuestReadiness } from "./guest/ready-waiters.js";
import type { HostToolPool } from "./host/tool-pool.js";
import type { Logger } from "./log.js";
import type { DaemonMetrics } from "./metrics/observer.js";
import type { ProxmoxBackend } from "./proxmox/types.js";
import type { Probes } from "./services/probes.js";
import type { SandboxNetworking } from "./services/sandbox-network.js";
import type { SshIdentity } from "./ssh/identity.js";
import type { Store } from "./store/db.js";

// Clock lives in its own module so that modules the context names (guest/*) need not import the context.
export { type Clock, systemClock } from "./clock.js";

/**
 * Injected timers, the other half of injected time: background loops wait through this, so tests fire
 * their passes by advancing a fake scheduler instead of sleeping.
 */
export interface Scheduler {
  /** Call `fn` once after `ms`; the returned function cancels it if it has not run yet. */
  schedule(fn: () => void, ms: number): () => void;
}

export const systemScheduler: Scheduler = {
  schedule(fn, ms) {
    const timer = setTimeout(fn, ms);
    // A pending pass alone must not keep the process alive.
    timer.unref();
    return () => clearTimeout(timer);
  },
};

/**
 * Everything a service needs, passed explicitly: no module-level singletons, so tests build a context
 * over a temp directory and the real code runs unchanged.
 */
export interface DaemonContext {
  config: Config;
  configPath: string;
  profiles: readonly Profile[];
  store: Store;
  backend: ProxmoxBackend;
  /** Per-sandbox nftables bindings (absent in tests that build a bare context). */
  network?: SandboxNetworking;
  /**
   * Phone-home readiness: bootstrap tokens for the cloud-init snippet, waits for the guest's report, and
   * the guest listener's state (absent in tests that build a bare context: then only the guest agent).
   */
  guestReady?: GuestReadiness;
  log: Logger;
  clock: Clock;
  /** The daemon's SSH key for guests (exec, cp); absent in tests that build a bare context. */
  sshIdentity?: SshIdentity;
  /** The remote control listener once it listens (control_listen), for daemon.status. */
  control?: { url: string; fingerprint: string };
  startedAt: Date;
  version: string;
  /** Where host programs (nft, e2fsck, ...) wait for a slot (host_max_tools); absent in bare test contexts. */
  hostToolPool?: HostToolPool;
  /**
   * Views of Proxmox and the host shared between callers for a moment (services/probes.ts); absent in
   * tests that build a bare context: then every status and show probes afresh.
   */
  probes?: Probes;
  /** Where services report what they did (metrics_listen); absent when metrics are off. */
  metrics?: DaemonMetrics;
}
