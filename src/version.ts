import { readFileSync } from "node:fs";

/**
 * The package version, read once from package.json so the CLI, the daemon and `npm version` never
 * disagree. Both binaries run from dist/src/, two levels below the package root.
 */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }
).version;

/** The oldest Node.js both binaries run on; bin/ launchers check it before loading anything. */
export const MIN_NODE_VERSION = "20.19.0";
