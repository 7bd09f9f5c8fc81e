import { z } from "zod";
import { boundedString, LIMITS } from "./limits.js";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";
import { ProfileName, Sandbox, TtlMinutes } from "./sandbox.js";
import * as wire from "./wire.js";
import { Workspace, WorkspaceName } from "./workspace.js";

/**
 * Sessions: a named, resumable piece of work = a workspace + a profile (+ a branch label). A session
 * is running while it has a live sandbox with its workspace attached, stopped otherwise.
 */

export const SessionName = boundedString(LIMITS.NAME).regex(
  /^[a-z0-9][a-z0-9._-]{0,62}$/,
  "session names use lower-case letters, digits, . _ and -, at most 63",
);

/** A session's branch label (git ref names: see LIMITS.GIT_REF). */
const branch = boundedString(LIMITS.GIT_REF).min(1);

const sessionRef = boundedString(LIMITS.REF).min(1).describe("session name or id");

export const Session = z.object({
  id: z.string(),
  name: z.string(),
  state: z.enum(["running", "stopped"]).describe("running while its sandbox exists and is not DESTROYED"),
  workspace_id: z.string(),
  workspace_name: z.string().optional(),
  profile: z.string(),
  branch: z.string().optional(),
  current_vmid: z.number().int().optional(),
  created_at: z.string(),
  updated_at: z.string(),
});
export type Session = z.infer<typeof Session>;

const sizeGb = z.number().int().positive("workspace size must be a positive whole number of GiB").max(65536);

export const sessionCreate = defineMethod(wire.sessionCreate, {
  summary:
    "Create a session and start its sandbox with the workspace attached. Give workspace (an existing, detached one) or workspace_create (the name of a new one).",
  params: z
    .object({
      name: SessionName,
      profile: ProfileName,
      workspace: boundedString(LIMITS.REF).min(1).optional().describe("existing workspace name or id"),
      workspace_create: WorkspaceName.optional().describe("name of a workspace to create for the session"),
      workspace_size_gb: sizeGb.optional(),
      workspace_storage: boundedString(LIMITS.STORAGE).min(1).optional(),
      branch: branch.optional(),
      ttl_minutes: TtlMinutes.optional(),
      progress_token: progressToken,
    })
    .strict()
    .refine((p) => (p.workspace === undefined) !== (p.workspace_create === undefined), {
      message: "give exactly one of workspace (existing) or workspace_create (new)",
    }),
  result: z.object({ session: Session, workspace: Workspace, sandbox: Sandbox }),
});

export const sessionList = defineMethod(wire.sessionList, {
  summary: "Every session with its state, workspace, profile, branch and current sandbox.",
  params: z.object({}).strict(),
  result: z.object({ sessions: z.array(Session) }),
});

export const sessionShow = defineMethod(wire.sessionShow, {
  summary: "One session with its workspace and current sandbox.",
  params: z.object({ session: sessionRef }).strict(),
  result: z.object({ session: Session, workspace: Workspace.optional(), sandbox: Sandbox.optional() }),
});

export const sessionStop = defineMethod(wire.sessionStop, {
  summary: "Destroy the session's sandbox. The workspace and the session stay; resume starts a new sandbox.",
  params: z.object({ session: sessionRef, progress_token: progressToken }).strict(),
  result: z.object({ session: Session, destroyed_vmid: z.number().int().optional() }),
});

export const sessionResume = defineMethod(wire.sessionResume, {
  summary: "Start a new sandbox for a stopped session with its workspace attached before the first boot.",
  params: z
    .object({
      session: sessionRef,
      ttl_minutes: TtlMinutes.optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({ session: Session, workspace: Workspace, sandbox: Sandbox }),
});

export const sessionFork = defineMethod(wire.sessionFork, {
  summary:
    "New session on a fork of a stopped session's workspace (the data is copied, copy-on-write where the storage allows), started with its own sandbox.",
  params: z
    .object({
      session: sessionRef,
      name: SessionName,
      profile: ProfileName.optional().describe("default: the source session's profile"),
      branch: branch.optional(),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({ session: Session, workspace: Workspace, sandbox: Sandbox }),
});

export const sessionBranch = defineMethod(wire.sessionBranch, {
  summary:
    "The session for a branch, named branch-<slug>: resumed if it exists and is stopped, otherwise created with a new 80 GiB workspace of the same name on the default storage.",
  params: z.object({ branch, profile: ProfileName, progress_token: progressToken }).strict(),
  result: z.object({
    session: Session,
    workspace: Workspace,
    sandbox: Sandbox.optional(),
    action: z
      .enum(["created", "resumed", "running"])
      .describe("running: it was already running; nothing changed"),
  }),
});
