/**
 * Where the daemon listens and how large a frame may be: plain constants in a module of their own, so
 * the CLI reads them without loading every method's schemas (protocol/index.js does).
 */

/** Frames larger than this close the connection: no legitimate request comes near it. */
export const MAX_FRAME_BYTES = 1024 * 1024;

export const DEFAULT_SOCKET_PATH = "/run/agentlab/agentlabd.sock";
