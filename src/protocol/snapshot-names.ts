/**
 * Which snapshot names a sandbox accepts. Apart from sandbox.ts (whose params schema applies the same
 * rule) so the CLI refuses a bad name before it calls, without loading zod and every method's schemas.
 */

/** The snapshot `sandbox revert` goes back to, taken right after provisioning. */
export const CLEAN_SNAPSHOT_NAME = "clean";
export const SNAPSHOT_NAME_MAX = 40;
const RESERVED_SNAPSHOT_NAMES = ["current", "pending", CLEAN_SNAPSHOT_NAME];

/**
 * Why a snapshot name cannot be used, or undefined. Proxmox's rule (pve-configid): a letter, then at
 * least one letter, digit, `_` or `-`, at most 40 in all. Saving also refuses Proxmox's reserved names
 * (`current`, `pending`) and `clean`, which belongs to `sandbox revert`.
 */
export function snapshotNameProblem(name: string, purpose: "save" | "restore"): string | undefined {
  if (!/^[a-z][a-z0-9_-]+$/i.test(name) || name.length > SNAPSHOT_NAME_MAX) {
    return `invalid snapshot name "${name}": 2 to ${SNAPSHOT_NAME_MAX} letters, digits, _ or -, starting with a letter`;
  }
  if (purpose === "save" && RESERVED_SNAPSHOT_NAMES.includes(name.toLowerCase())) {
    return name.toLowerCase() === CLEAN_SNAPSHOT_NAME
      ? `snapshot name "${name}" is reserved: sandbox revert goes back to the "${CLEAN_SNAPSHOT_NAME}" snapshot`
      : `snapshot name "${name}" is reserved by Proxmox`;
  }
  return undefined;
}
