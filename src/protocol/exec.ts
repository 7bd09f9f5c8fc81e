/**
 * `sandbox exec`: the daemon runs a command in a guest over SSH (its own key, the guest's recorded host
 * keys) and streams the command's output back as `$/progress` notifications while it runs.
 */
import { z } from "zod";
import { boundedArray, boundedRecord, boundedString, LIMITS, numberLimit } from "./limits.js";
import { defineMethod } from "./method.js";
import { progressToken } from "./progress.js";
import * as wire from "./wire.js";

export { EXEC_STDERR_STEP, EXEC_STDOUT_STEP } from "./exec-steps.js";

/** A sandbox's VMID in the methods that reach into its guest (exec, and the file methods in files.ts). */
export const guestVmid = z.number().int().min(100).max(999_999_999).describe("Proxmox VMID of the sandbox");
const vmid = guestVmid;

/** A login name as useradd accepts it. */
export const GUEST_USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

export const sandboxExec = defineMethod(wire.sandboxExec, {
  summary:
    "Run a command in a running sandbox (over SSH from the daemon, the guest's host key checked); stdout and stderr stream as progress notifications with base64 `data`, and the result is the exit code.",
  params: z
    .object({
      vmid,
      command: boundedArray(boundedString(LIMITS.ARG), LIMITS.ARGS)
        .min(1, "give the command to run")
        .describe("argv: each element is quoted for the guest's shell"),
      user: boundedString(LIMITS.WORD)
        .regex(GUEST_USER_RE, "a login name (lowercase letters, digits, _ and -)")
        .optional(),
      cwd: boundedString(LIMITS.PATH)
        .min(1)
        .optional()
        .describe("directory to run in (default: the user's home)"),
      env: boundedRecord(
        boundedString(LIMITS.ENV_NAME).regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable name"),
        boundedString(LIMITS.ENV_VALUE),
        LIMITS.ENV,
      ).optional(),
      timeout_ms: z
        .number()
        .int()
        .positive()
        .max(LIMITS.TIMEOUT_MS.max, numberLimit(LIMITS.TIMEOUT_MS))
        .optional()
        .describe("kill the command after this long (the result then says timed_out)"),
      stdin: boundedString(LIMITS.STDIN)
        .optional()
        .describe("base64: the command's stdin, then end of file; absent: no input (EOF at once)"),
      progress_token: progressToken,
    })
    .strict(),
  result: z.object({
    exit_code: z.number().int().describe("the command's exit status; 128+N when signal N ended it"),
    signal: z.string().optional().describe("the signal that ended the command (e.g. KILL)"),
    timed_out: z.boolean().optional().describe("timeout_ms passed and the command was killed"),
    duration_ms: z.number().int().nonnegative(),
  }),
});
