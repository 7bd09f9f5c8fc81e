import { z } from "zod";
import { boundedString, LIMITS } from "./limits.js";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

/**
 * Doctor bundles (upstream §6): a read-only debug snapshot of one sandbox, job or session with the
 * records related to it, recent events and the live Proxmox view, secrets redacted. The daemon returns
 * the files; the CLI packs them into a deterministic tar.gz, so no bundle is ever stored on the host.
 */

export const DOCTOR_KINDS = ["sandbox", "job", "session"] as const;
export type DoctorKind = (typeof DOCTOR_KINDS)[number];

export const DoctorFile = z.object({
  path: z.string().describe("path inside the bundle, e.g. records/sandbox.json"),
  content: z.string().describe("the file's text: pretty JSON ending in a newline"),
});
export type DoctorFile = z.infer<typeof DoctorFile>;

export const DoctorBundle = z.object({
  kind: z.enum(DOCTOR_KINDS),
  id: z.string().describe("the VMID, job id or session id the bundle is about"),
  files: z.array(DoctorFile).describe("sorted by path"),
});
export type DoctorBundle = z.infer<typeof DoctorBundle>;

const vmid = z.number().int().min(100).max(999_999_999).describe("Proxmox VMID of the sandbox");

export const sandboxDoctor = defineMethod(wire.sandboxDoctor, {
  summary:
    "Debug bundle of a sandbox: its record, workspace, latest job and that job's session, recent events, live Proxmox status and config. Read-only.",
  params: z.object({ vmid }).strict(),
  result: DoctorBundle,
});

export const jobDoctor = defineMethod(wire.jobDoctor, {
  summary:
    "Debug bundle of a job: its record, sandbox, session and workspace, recent events, live Proxmox status and config. Read-only.",
  params: z.object({ id: boundedString(LIMITS.REF).min(1) }).strict(),
  result: DoctorBundle,
});

export const sessionDoctor = defineMethod(wire.sessionDoctor, {
  summary:
    "Debug bundle of a session: its record, workspace, current sandbox and that sandbox's latest job, recent events, live Proxmox status and config. Read-only.",
  params: z.object({ session: boundedString(LIMITS.REF).min(1).describe("session name or id") }).strict(),
  result: DoctorBundle,
});
