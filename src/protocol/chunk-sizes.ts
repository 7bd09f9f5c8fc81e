/**
 * How many bytes one request or answer carries where data moves in pieces: the schemas bound params
 * with these and the CLI sizes its requests by them. Plain constants apart from the schemas, so the CLI
 * reads them without loading zod and every method's schemas (docs/performance.md, "CLI start").
 */

/**
 * Bytes per `sandbox cp` chunk, both ways. Base64 makes 4/3 of it, and a request must fit
 * MAX_FRAME_BYTES (1 MiB) with its other fields: 512 KiB is 683 KiB on the wire.
 */
export const FILE_CHUNK_BYTES = 512 * 1024;

/** Largest chunk job.artifact_read returns. */
export const ARTIFACT_READ_MAX = 1024 * 1024;

/** `sandbox exec`'s stdin travels inside the request, so it must fit a frame with room for the rest. */
export const EXEC_MAX_STDIN_BYTES = 512 * 1024;
