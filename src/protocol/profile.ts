import { z } from "zod";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

export const ProfileSummary = z.object({
  name: z.string(),
  template_vmid: z.number().int().positive(),
  cores: z.number().int().positive().optional().describe("absent: the template's value is kept"),
  memory_mb: z.number().int().positive().optional().describe("absent: the template's value is kept"),
  root_size_gb: z.number().int().positive().optional(),
  network_mode: z.enum(["off", "nat", "allowlist"]),
  bridge: z.string().optional(),
  keepalive_default: z.boolean(),
  ttl_minutes_default: z.number().int().positive().optional().describe("absent: sandboxes never expire"),
  source: z.string().describe("file the profile was loaded from, with its document number"),
});
export type ProfileSummary = z.infer<typeof ProfileSummary>;

export const profileList = defineMethod(wire.profileList, {
  summary: "Profiles loaded from profiles_dir at daemon start, sorted by name.",
  params: z.object({}).strict(),
  result: z.object({ profiles: z.array(ProfileSummary) }),
});
