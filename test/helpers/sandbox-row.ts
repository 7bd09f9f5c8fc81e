/** A sandbox row as the store returns it, for unit tests of the pure decisions made on rows. */
import type { Sandbox, SandboxState } from "../../src/daemon/store/sandboxes.js";

/** `at` is both created_at and updated_at unless `extra` says otherwise. */
export function sandboxRow(
  vmid: number,
  state: SandboxState,
  at: Date,
  extra: Partial<Sandbox> = {},
): Sandbox {
  return {
    vmid,
    name: `sandbox-${vmid}`,
    profile: "yolo-ephemeral",
    state,
    node: "pve",
    ip: null,
    workspace_id: null,
    keepalive: false,
    lease_expires_at: null,
    tags: [],
    failure_reason: null,
    vm_created: true,
    snippet_path: null,
    ssh_host_keys: null,
    created_at: at,
    updated_at: at,
    last_used_at: null,
    pool: null,
    ...extra,
  };
}
