/**
 * Generates docs/cli.md and the man page docs/agentlab.1 from the CLI's own --help and docs/rpc.md from
 * the protocol declarations, so
 * the references cannot drift from the code. `--check` compares instead of writing and fails when a
 * file is stale (CI runs it).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { buildCli } from "../src/cli/parser.js";
import { ERROR_CODES, LIMITS, METHODS } from "../src/protocol/index.js";
import { manPage } from "./man-page.js";

const root = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");

/**
 * The text `agentlab PATH --help` prints, rendered in this process: yargs hands the help to a parse
 * callback instead of printing it and exiting. One process for the whole reference instead of one
 * CLI start per command (that was most of the check's time).
 */
async function help(path: string[]): Promise<string> {
  let text: string | undefined;
  await (await buildCli([...path, "--help"])).parseAsync([...path, "--help"], {}, (_error, _argv, output) => {
    text = output;
  });
  if (text === undefined) throw new Error(`agentlab ${path.join(" ")} --help printed nothing`);
  return `${text}\n`;
}

/** Sub-commands listed under "Commands:" in a help text, as argument paths. */
function subcommands(text: string, parent: string[]): string[][] {
  const section = text.split(/\n\n/).find((block) => block.startsWith("Commands:"));
  if (!section) return [];
  const found: string[][] = [];
  for (const line of section.split("\n").slice(1)) {
    const match = /^ {2}agentlab ((?:[a-z][\w-]* ?)+)/.exec(line);
    if (!match) continue;
    const words = match[1]!.trim().split(" ");
    if (words.length === parent.length + 1) found.push(words);
  }
  return found;
}

/** Every command's help text, depth first from the top: the one walk both references render. */
async function helpTexts(): Promise<Array<{ path: string[]; text: string }>> {
  const found: Array<{ path: string[]; text: string }> = [];
  const visit = async (path: string[]): Promise<void> => {
    const text = await help(path);
    found.push({ path, text });
    for (const child of subcommands(text, path)) await visit(child);
  };
  await visit([]);
  return found;
}

function cliDoc(texts: ReadonlyArray<{ path: string[]; text: string }>): string {
  const parts = [
    "# agentlab CLI reference",
    "",
    "Generated from `agentlab --help` by `npm run docs`; do not edit by hand.",
    "",
  ];
  for (const { path, text } of texts) {
    parts.push(
      `## agentlab${path.length > 0 ? ` ${path.join(" ")}` : ""}`,
      "",
      "```text",
      text.trimEnd(),
      "```",
      "",
    );
  }
  return parts.join("\n");
}

function schemaBlock(schema: z.ZodType): string {
  const json = z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
  delete json.$schema;
  return ["```json", JSON.stringify(json, null, 2), "```"].join("\n");
}

/** The table of input limits (src/protocol/limits.ts), so the reference states what is refused. */
function limitsSection(): string[] {
  return [
    "## Input limits",
    "",
    "Every string, array and number in params has a bound; a request over one is refused with",
    "`INVALID_PARAMS` before any work, naming the field and the limit (`task is 1048576 characters; the",
    "limit is 65536`) and quoting at most the first 64 characters of anything it echoes. Limits on the",
    "connection itself (frame size, clients at once, idle time, unread answers) are in docs/reliability.md.",
    "",
    "| limit | at most | used for |",
    "|---|---|---|",
    ...Object.entries(LIMITS).map(
      ([name, limit]) =>
        `| \`${name}\` | ${limit.max.toLocaleString("en-US")}${limit.unit ? ` ${limit.unit}` : ""} | ${limit.why} |`,
    ),
    "",
  ];
}

function rpcDoc(): string {
  const parts = [
    "# agentlabd JSON-RPC reference",
    "",
    "Generated from `src/protocol/` by `npm run docs`; do not edit by hand.",
    "",
    "Transport: JSON-RPC 2.0 with `Content-Length` framing (vscode-jsonrpc) over the Unix socket",
    "`socket_path` (default `/run/agentlab/agentlabd.sock`). A frame larger than 1 MiB, or one that is not",
    "JSON-RPC, closes that connection. Params are objects (by name); unknown params are refused.",
    "",
    "Errors carry `{code, message, data: {code, hint, details}}`: `data.code` is the stable string code",
    "below and `code` its number. Methods that report progress accept `progress_token` and send",
    "`$/progress` notifications `{token, value: {step, message, done?, total?}}`; `$/cancelRequest`",
    "cancels a call, which then answers `CANCELLED`.",
    "",
    ...limitsSection(),
    "## Methods",
    "",
    ...METHODS.map((m) => `- [\`${m.method}\`](#${m.method.replace(/\./g, "")}): ${m.summary}`),
    "",
  ];
  for (const method of METHODS) {
    parts.push(
      `### ${method.method}`,
      "",
      method.summary,
      "",
      `Progress: ${method.progress ? "yes" : "no"}. Errors: ${method.errors.map((code) => `\`${code}\``).join(", ") || "none"}.`,
      "",
      "Params:",
      "",
      schemaBlock(method.params),
      "",
      "Result:",
      "",
      schemaBlock(method.result),
      "",
    );
  }
  parts.push("## Error codes", "", "| code | number | CLI exit | default hint |", "|---|---|---|---|");
  for (const [code, spec] of Object.entries(ERROR_CODES)) {
    parts.push(`| \`${code}\` | ${spec.rpc} | ${spec.exit} | ${spec.hint.replace(/\|/g, "\\|")} |`);
  }
  parts.push("");
  return parts.join("\n");
}

const check = process.argv.includes("--check");
let stale = false;
const texts = await helpTexts();
for (const [file, content] of [
  ["docs/cli.md", cliDoc(texts)],
  ["docs/agentlab.1", manPage(texts)],
  ["docs/rpc.md", rpcDoc()],
] as const) {
  const path = `${root}/${file}`;
  if (check) {
    const current = existsSync(path) ? readFileSync(path, "utf8") : "";
    if (current !== content) {
      process.stderr.write(
        `error: ${file} is stale\nhint: regenerate it with npm run docs and commit the result\n`,
      );
      stale = true;
    }
  } else {
    mkdirSync(`${root}/docs`, { recursive: true });
    writeFileSync(path, content);
    process.stdout.write(`wrote ${file}\n`);
  }
}
if (stale) process.exit(1);
