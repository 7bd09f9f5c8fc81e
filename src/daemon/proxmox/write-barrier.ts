/**
 * Intent first, on disk: before any call that changes something in Proxmox, whatever the daemon has
 * committed so far (the intent row that says what this call is about to do) is made durable. The
 * database commits without an fsync of its own (synchronous = NORMAL), so a dozen commits per create no
 * longer cost a dozen fsyncs; the few that must survive a power loss before Proxmox acts are synced
 * here, once per write call and only when something was committed since the last sync.
 */
import type { ApiPath, HttpMethod, Params, PveTransport } from "./transport.js";

export class WriteBarrierTransport implements PveTransport {
  readonly kind: "shell" | "api";

  constructor(
    private readonly inner: PveTransport,
    private readonly barrier: () => Promise<void>,
  ) {
    this.kind = inner.kind;
  }

  get calls(): { count: number } {
    return this.inner.calls;
  }

  async request(
    method: HttpMethod,
    path: ApiPath,
    params?: Params,
    signal?: AbortSignal,
    taskTimeoutMs?: number,
  ): Promise<unknown> {
    // A write whose intent cannot be made durable is not sent: the barrier's error is the call's.
    if (method !== "GET") await this.barrier();
    return this.inner.request(method, path, params, signal, taskTimeoutMs);
  }

  invalidate(): void {
    this.inner.invalidate?.();
  }
}
