import { z } from "zod";

/**
 * When the probe behind a live view began. `daemon.status` and `sandbox.show` share one probe of Proxmox
 * (or of the host) between concurrent callers, and one that succeeded answers again for about 1.5 s, so
 * a view can be that much older than the call (daemon/services/probes.ts).
 */
export const CheckedAt = z
  .string()
  .optional()
  .describe(
    "RFC 3339 time the probe behind this part began: concurrent calls share one probe, and one that succeeded answers again for about 1.5 s; absent from older daemons",
  );
