/**
 * `sandbox cp`: files in and out of a running sandbox. The daemon speaks SFTP to the guest (its own key,
 * the guest's recorded host keys, as exec does); the CLI moves the bytes in bounded chunks, one request
 * each, so a file of any size crosses the socket or the WebSocket without the daemon holding it whole.
 * Uploads go to a temporary beside the target, renamed over it on the last chunk.
 */
import { z } from "zod";
import { FILE_CHUNK_BYTES } from "./chunk-sizes.js";
import { GUEST_USER_RE, guestVmid } from "./exec.js";
import { boundedString, LIMITS, numberLimit } from "./limits.js";
import { defineMethod } from "./method.js";
import * as wire from "./wire.js";

export { FILE_CHUNK_BYTES } from "./chunk-sizes.js";

/** Directory entries per file_list answer; a larger directory is read in pages (offset). */
export const FILE_LIST_PAGE = 1000;

const vmid = guestVmid;
const user = boundedString(LIMITS.WORD)
  .regex(GUEST_USER_RE, "a login name (lowercase letters, digits, _ and -)")
  .optional()
  .describe("guest user the SFTP session logs in as (default: agent)");
const guestPath = boundedString(LIMITS.PATH)
  .min(1, "give a guest path")
  .refine((path) => !path.includes("\0"), "a path cannot contain a NUL byte")
  .describe("absolute, or relative to the user's home");
/** An upload's id: 32 hex characters (bounded before the pattern runs). */
const transferId = boundedString(LIMITS.WORD);
const offset = z.number().int().nonnegative().max(LIMITS.OFFSET.max, numberLimit(LIMITS.OFFSET));
const mode = z.number().int().min(0).max(0o7777).describe("permission bits, e.g. 420 (0644)");

export const FILE_TYPES = ["file", "directory", "symlink", "other"] as const;
const fileType = z.enum(FILE_TYPES);

export const sandboxFileStat = defineMethod(wire.sandboxFileStat, {
  summary:
    "What is at a guest path (following symlinks): its absolute path, type, size and mode, or exists: false.",
  params: z.object({ vmid, user, path: guestPath }).strict(),
  result: z.object({
    path: z.string().describe("the absolute path (the parent resolved when the path does not exist)"),
    exists: z.boolean(),
    type: fileType.optional(),
    size: z.number().int().nonnegative().optional(),
    mode: z.number().int().optional(),
  }),
});

export const sandboxFileList = defineMethod(wire.sandboxFileList, {
  summary: `The entries of a guest directory, sorted by name, ${FILE_LIST_PAGE} at a time (symlinks not followed).`,
  params: z
    .object({
      vmid,
      user,
      path: guestPath,
      offset: offset.optional().describe("skip this many entries (the next page)"),
    })
    .strict(),
  result: z.object({
    path: z.string(),
    entries: z.array(
      z.object({
        name: z.string(),
        type: fileType,
        size: z.number().int().nonnegative(),
        mode: z.number().int(),
      }),
    ),
    more: z.boolean().describe("more entries follow: ask again with offset + entries.length"),
  }),
});

export const sandboxFileRead = defineMethod(wire.sandboxFileRead, {
  summary: `Up to ${FILE_CHUNK_BYTES / 1024} KiB of a guest file from an offset, base64, with the file's size and mode.`,
  params: z
    .object({
      vmid,
      user,
      path: guestPath,
      offset: offset,
      length: z.number().int().positive().max(FILE_CHUNK_BYTES),
    })
    .strict(),
  result: z.object({
    data: z.string().describe("base64: the bytes from offset, at most length"),
    size: z.number().int().nonnegative().describe("the file's size now"),
    eof: z.boolean().describe("nothing follows these bytes"),
    mode: z.number().int().describe("the file's permission bits"),
  }),
});

export const sandboxFileMkdir = defineMethod(wire.sandboxFileMkdir, {
  summary: "Make a guest directory (its parent must exist); an existing directory is fine.",
  params: z.object({ vmid, user, path: guestPath, mode: mode.optional() }).strict(),
  result: z.object({ path: z.string(), created: z.boolean() }),
});

export const sandboxFileWrite = defineMethod(wire.sandboxFileWrite, {
  summary:
    "Write the next chunk of an upload. The first chunk (no transfer) opens a temporary beside path; the last renames it over path with its mode. A failure or cancel removes the temporary.",
  params: z
    .object({
      vmid,
      user,
      path: guestPath,
      transfer: transferId
        .regex(/^[0-9a-f]{32}$/, "the transfer id the first chunk returned")
        .optional()
        .describe("absent on the first chunk; then the id its answer gave"),
      offset: offset.describe("bytes written before this chunk"),
      data: z
        .string()
        .max(Math.ceil(FILE_CHUNK_BYTES / 3) * 4)
        .describe("base64: this chunk"),
      last: z.boolean().describe("the file is complete with this chunk: put it in place"),
      mode: mode
        .optional()
        .describe("the file's permission bits (default 0644); applied with the last chunk"),
    })
    .strict(),
  result: z.object({
    transfer: z.string(),
    written: z.number().int().nonnegative().describe("bytes written so far"),
    done: z.boolean().describe("the file is in place at path"),
    path: z.string().describe("the absolute guest path"),
    sha256: z.string().optional().describe("with done: the SHA-256 of what was written, hex"),
  }),
});

export const sandboxFileCancel = defineMethod(wire.sandboxFileCancel, {
  summary: "Abandon an upload: its temporary is removed and the target stays as it was.",
  params: z
    .object({
      vmid,
      transfer: transferId.regex(/^[0-9a-f]{32}$/, "the transfer id file_write returned"),
    })
    .strict(),
  result: z.object({ cancelled: z.boolean().describe("false: no such upload was open (already over)") }),
});
