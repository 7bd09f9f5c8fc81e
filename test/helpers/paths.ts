import { fileURLToPath } from "node:url";

/** The repository root: tests run from dist/test/helpers/, three levels below it. */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url)).replace(/\/$/, "");
export const AGENTLAB_BIN = `${REPO_ROOT}/bin/agentlab`;
export const AGENTLABD_BIN = `${REPO_ROOT}/bin/agentlabd`;
export const PROFILES_DIR = `${REPO_ROOT}/profiles`;
