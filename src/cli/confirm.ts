import { createInterface } from "node:readline";
import { AgentlabError } from "../protocol/errors.js";
import type { Output } from "./render.js";

export interface ConfirmOptions {
  /** What is asked, e.g. "revert sandbox 1012": `Confirm <question>? Type 'yes' to continue:`. */
  question: string;
  /** What is refused without a terminal, e.g. "revert sandbox": `refusing to <action> without --force ...`. */
  action: string;
  force: boolean;
  json: boolean;
  out: Output;
  /** Where the answer is read; process.stdin by default. */
  input?: NodeJS.ReadableStream & { isTTY?: boolean };
}

/** The first line typed on `input`, or undefined at end of input. */
function readLine(input: NodeJS.ReadableStream): Promise<string | undefined> {
  return new Promise((resolve) => {
    const rl = createInterface({ input, terminal: false });
    let answered = false;
    rl.once("line", (line) => {
      answered = true;
      rl.close();
      resolve(line);
    });
    rl.once("close", () => {
      if (!answered) resolve(undefined);
    });
  });
}

/**
 * Ask before a destructive command (spec 2.1): `--force` skips the question; `--json` and a stdin that
 * is not a terminal refuse, since nobody could answer; otherwise the question goes to stderr and only
 * `yes` goes ahead. Returns when confirmed, throws otherwise; nothing has been sent to the daemon yet.
 */
export async function confirm(options: ConfirmOptions): Promise<void> {
  if (options.force) return;
  const input = options.input ?? process.stdin;
  if (options.json || input.isTTY !== true) {
    const mode = options.json ? "--json" : "non-interactive";
    throw new AgentlabError(
      "CONFIRMATION_REQUIRED",
      `refusing to ${options.action} without --force in ${mode} mode`,
      {
        details: { action: options.action, mode },
      },
    );
  }
  options.out.stderr(`Confirm ${options.question}? Type 'yes' to continue: `);
  const answer = await readLine(input);
  if (answer === undefined) options.out.stderr("\n");
  if (answer?.trim().toLowerCase() !== "yes") {
    throw new AgentlabError("CANCELLED", `not confirmed: did not ${options.question}`, {
      hint: "nothing was changed; answer yes to go ahead, or pass --force to skip the question",
      details: { action: options.action },
    });
  }
}
