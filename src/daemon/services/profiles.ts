import type { Profile } from "../../config/profiles.js";
import type { ProfileSummary } from "../../protocol/index.js";
import type { DaemonContext } from "../context.js";

export function summarizeProfile(profile: Profile): ProfileSummary {
  const summary: ProfileSummary = {
    name: profile.name,
    template_vmid: profile.template_vmid,
    network_mode: profile.network.mode,
    keepalive_default: profile.behavior.keepalive_default,
    source: `${profile.source.file} (document ${profile.source.document})`,
  };
  if (profile.resources.cores !== undefined) summary.cores = profile.resources.cores;
  if (profile.resources.memory_mb !== undefined) summary.memory_mb = profile.resources.memory_mb;
  if (profile.storage.root_size_gb !== undefined) summary.root_size_gb = profile.storage.root_size_gb;
  if (profile.network.bridge !== undefined) summary.bridge = profile.network.bridge;
  if (profile.behavior.ttl_minutes_default !== undefined && profile.behavior.ttl_minutes_default > 0) {
    summary.ttl_minutes_default = profile.behavior.ttl_minutes_default;
  }
  return summary;
}

export function listProfiles(ctx: DaemonContext): { profiles: ProfileSummary[] } {
  return {
    profiles: [...ctx.profiles].sort((a, b) => a.name.localeCompare(b.name)).map(summarizeProfile),
  };
}
