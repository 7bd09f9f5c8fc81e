/**
 * The guest runner's source, scripts/guest/agent-runner.sh, which job sandboxes get in their cloud-init
 * snippet. Read from the installation (the repository or /opt/agentlab) when first needed, so the
 * daemon and the script it ships can never be of different versions.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { AgentlabError } from "../../protocol/errors.js";

/** dist/src/daemon/guest/ is four levels below the installation root. */
export const RUNNER_SCRIPT_PATH = fileURLToPath(
  new URL("../../../../scripts/guest/agent-runner.sh", import.meta.url),
);

let cached: string | undefined;

export function runnerScript(path: string = RUNNER_SCRIPT_PATH): string {
  if (path === RUNNER_SCRIPT_PATH && cached !== undefined) return cached;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new AgentlabError(
      "INTERNAL",
      `the guest runner ${path} cannot be read: ${(error as Error).message}`,
      {
        hint: "reinstall agentlab (scripts/install.sh copies scripts/guest next to the code)",
        cause: error,
      },
    );
  }
  if (path === RUNNER_SCRIPT_PATH) cached = text;
  return text;
}
