/** pve-storage's `check_volume_access`: who may use (reference, inspect) an existing volume. */
import { type AuthId, checkPriv, hasPriv } from "./access.js";
import type { Ctx } from "./context.js";
import { fail } from "./errors.js";
import { findStorage, parseVolname, splitVolid } from "./storage.js";

/**
 * PVE::Storage::check_volume_access (pve-storage src/PVE/Storage.pm:619-656): Datastore.Allocate on
 * the storage allows everything; otherwise ISOs need read access to the storage, the owner VM
 * (`vmid`) may use its own volumes, and another VM's disk needs Datastore.Audit on the storage plus
 * VM.Config.Disk on the owning VM. A volume id that does not parse is left to the caller's own checks.
 */
export function checkVolumeAccess(ctx: Ctx, auth: AuthId, volid: string, vmid?: number): void {
  if (volid.startsWith("/")) {
    if (!(auth.user === "root@pam" && !auth.tokenid))
      throw fail("Only root can pass arbitrary filesystem paths.");
    return;
  }
  let storage: string;
  let content: string;
  let owner: number;
  try {
    const parts = splitVolid(volid);
    const s = findStorage(ctx.state, parts.storage);
    if (!s) return;
    const info = parseVolname(s, parts.volname);
    storage = parts.storage;
    content = info.content;
    owner = info.vmid;
  } catch {
    return;
  }
  const path = `/storage/${storage}`;
  if (hasPriv(ctx.state, auth, path, ["Datastore.Allocate"])) return;
  if (content === "iso" || content === "vztmpl" || content === "import") {
    checkPriv(ctx.state, auth, path, ["Datastore.AllocateSpace", "Datastore.Audit"], true);
  } else if (owner > 0 && vmid !== undefined && owner === vmid) {
    // The VM's own volume.
  } else if (content === "backup" && owner > 0) {
    checkPriv(ctx.state, auth, path, ["Datastore.AllocateSpace"]);
    checkPriv(ctx.state, auth, `/vms/${owner}`, ["VM.Backup"]);
  } else if ((content === "images" || content === "rootdir") && owner > 0) {
    checkPriv(ctx.state, auth, path, ["Datastore.Audit"]);
    checkPriv(ctx.state, auth, `/vms/${owner}`, ["VM.Config.Disk"]);
  } else {
    throw fail(`missing privileges to access ${volid}`);
  }
}
